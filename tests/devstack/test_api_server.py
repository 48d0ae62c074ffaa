"""The API runs as a real uvicorn server against PostgreSQL, S3, Airflow and MLflow."""

from __future__ import annotations

import importlib.util

import httpx
import pytest

pytestmark = [
    pytest.mark.stack,
    pytest.mark.skipif(importlib.util.find_spec("api.main") is None, reason="api.main not written yet"),
]


def test_api_server_serves_its_openapi_under_v1(api_server):
    response = httpx.get(f"{api_server.base_url}/v1/openapi.json")
    assert response.status_code == 200
    assert any(path.startswith("/v1/") for path in response.json()["paths"])
