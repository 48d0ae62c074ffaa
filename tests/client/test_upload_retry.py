"""Completing an upload is retried while the API answers a transient error (the validation run
may exist already: the API's completion is idempotent), never after a refusal."""

from __future__ import annotations

import pytest

from qlora_client.client import ApiError
from qlora_client.upload import completing


def test_a_503_is_retried_until_the_completion_goes_through() -> None:
    answers = [ApiError("The pipeline service (Airflow) is unavailable; retry later", 503), None,
               {"message": "Dataset processing initiated"}]
    calls = []

    def complete():
        calls.append(1)
        answer = answers.pop(0)
        if isinstance(answer, ApiError):
            raise answer
        if answer is None:
            raise ApiError("cannot reach the API", None)
        return answer

    assert completing(complete, delays=(0, 0, 0)) == {"message": "Dataset processing initiated"}
    assert len(calls) == 3


def test_a_refusal_is_not_retried_and_the_last_transient_error_is_raised() -> None:
    calls = []

    def refused():
        calls.append(1)
        raise ApiError("No object at s3_key: PUT the archive to upload_url before completing the upload", 400)

    with pytest.raises(ApiError, match="No object at s3_key"):
        completing(refused, delays=(0, 0))
    assert len(calls) == 1

    def down():
        calls.append(1)
        raise ApiError("Storage (S3) is unavailable; retry later", 503)

    with pytest.raises(ApiError, match="Storage"):
        completing(down, delays=(0, 0))
    assert len(calls) == 1 + 3


def test_initiating_is_retried_with_the_same_idempotency_key(monkeypatch) -> None:
    """An initiation that met a 503 (or no answer) is sent again with the key of the first
    attempt, so the API answers with the dataset that attempt may have created, not a second."""
    import json

    import httpx

    from qlora_client.client import Client

    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if len(seen) == 1:
            return httpx.Response(503, json={"detail": "Storage (S3) is unavailable; retry later"})
        if len(seen) == 2:
            raise httpx.ConnectError("connection refused")
        return httpx.Response(200, json={"dataset_id": "d1", "s3_key": "datasets/d1/a.zip", "upload_url": "u"})

    monkeypatch.setattr("qlora_client.client.time.sleep", lambda s: None)
    client = Client("http://api.test/v1", token="t", transport=httpx.MockTransport(answer))
    assert client.upload_initiate("a.zip", "a", file_size_bytes=1004)["dataset_id"] == "d1"
    keys = [r.headers["idempotency-key"] for r in seen]
    assert len(keys) == 3 and len(set(keys)) == 1 and len(keys[0]) == 32
    assert json.loads(seen[2].content)["file_size_bytes"] == 1004

    seen.clear()
    client = Client("http://api.test/v1", token="t", transport=httpx.MockTransport(
        lambda r: seen.append(r) or httpx.Response(413, json={"detail": "Storage quota exceeded"})))
    with pytest.raises(ApiError, match="Storage quota exceeded"):
        client.upload_initiate("a.zip", "a")
    assert len(seen) == 1  # a refusal is final: not retried


def test_a_multipart_initiation_is_retried_with_the_same_idempotency_key(monkeypatch) -> None:
    import httpx

    from qlora_client.client import Client

    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if len(seen) == 1:
            raise httpx.ConnectError("connection refused")
        return httpx.Response(200, json={"dataset_id": "d1", "upload_id": "u1", "parts": []})

    monkeypatch.setattr("qlora_client.client.time.sleep", lambda s: None)
    client = Client("http://api.test/v1", token="t", transport=httpx.MockTransport(answer))
    assert client.multipart_initiate("a.zip", "a", 200 * 1024**2)["upload_id"] == "u1"
    keys = [r.headers["idempotency-key"] for r in seen]
    assert [r.url.path for r in seen] == ["/v1/datasets/multipart/initiate"] * 2
    assert len(keys) == 2 and len(set(keys)) == 1 and len(keys[0]) == 32
