"""App-wide behaviour: JSON errors everywhere, OpenAPI and Swagger under /v1, migrations."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import inspect

from api.main import create_app


def test_unknown_route_and_method_are_json(client: TestClient) -> None:
    resp = client.get("/v1/nothing-here")
    assert resp.status_code == 404
    assert resp.json() == {"detail": "Not Found: no such route"}
    resp = client.get("/")
    assert resp.status_code == 404 and "detail" in resp.json()
    resp = client.put("/v1/auth/login", json={})
    assert resp.status_code == 405
    assert resp.json() == {"detail": "Method Not Allowed"}


def test_unhandled_exception_is_json_500(settings, airflow) -> None:
    app = create_app(settings)

    @app.get("/v1/boom")
    def boom() -> None:
        raise RuntimeError("secret internals")

    with TestClient(app, raise_server_exceptions=False) as client:
        resp = client.get("/v1/boom")
    assert resp.status_code == 500
    assert resp.json() == {"detail": "Internal server error"}


def test_openapi_and_docs_under_v1(client: TestClient) -> None:
    spec = client.get("/v1/openapi.json").json()
    paths = spec["paths"]
    for path in ("/v1/auth/signup", "/v1/auth/login", "/v1/datasets/upload-initiate", "/v1/datasets/upload-complete",
                 "/v1/datasets", "/v1/datasets/{dataset_id}", "/v1/models/allowed", "/v1/models/{model_id}"):
        assert path in paths, path
    assert "400" in paths["/v1/auth/signup"]["post"]["responses"]
    assert "409" in paths["/v1/datasets/{dataset_id}"]["delete"]["responses"]
    assert spec["components"]["schemas"]["SignupRequest"]["examples"]
    docs = client.get("/v1/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


def test_sqlite_default_migrates_at_start_up(tmp_path, settings, airflow) -> None:
    db = tmp_path / "sub" / "api.db"
    app = create_app(settings.model_copy(update={"database_url": f"sqlite:///{db}"}))
    with TestClient(app) as client:
        assert client.get("/v1/health").json() == {"status": "ok"}
        tables = set(inspect(app.state.engine).get_table_names())
    assert {"users", "datasets", "base_models", "training_jobs", "alembic_version"} <= tables
    # a second start on the same database is a no-op
    with TestClient(create_app(settings.model_copy(update={"database_url": f"sqlite:///{db}"}))) as client:
        assert client.post("/v1/auth/signup", json={"username": "bob", "email": "b@example.com",
                                                     "password": "long-enough"}).status_code == 201
