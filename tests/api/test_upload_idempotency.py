"""`Idempotency-Key` on `POST /v1/datasets/upload-initiate`, on the real PostgreSQL and SeaweedFS:
the same key and body answer the same dataset again with a freshly signed URL that S3 accepts
(and that still binds the declared size), another body is 409, a dataset no longer awaiting its
upload is 409, parallel retries make one dataset, a failed initiation leaves the key unused."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from sqlalchemy import update

from api.models import Dataset, IdempotencyKey
from api.models.base import utcnow
from tests.api.test_datasets import ZIP_BYTES, complete, keys_under, put
from training import s3 as s3_layout  # the S3 key layout

BODY = {"file_name": "clips.zip", "file_type": "application/zip", "dataset_name": "Squares",
        "dataset_description": "moving squares", "file_size_bytes": len(ZIP_BYTES)}


def initiate(client, auth, key: str | None, body: dict | None = None):
    headers = {**auth, **({"Idempotency-Key": key} if key else {})}
    return client.post("/v1/datasets/upload-initiate", json=body or BODY, headers=headers)


def datasets_of(client, auth) -> list[dict]:
    return client.get("/v1/datasets", headers=auth).json()


def new_key() -> str:
    return f"upload-{uuid.uuid4()}"


def test_the_same_key_and_body_answers_the_same_dataset_with_a_working_url(client, auth, other_auth, s3) -> None:
    key = new_key()
    first = initiate(client, auth, key)
    again = initiate(client, auth, key)
    assert first.status_code == 200 and "Idempotent-Replayed" not in first.headers
    assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert (again.json()["dataset_id"], again.json()["s3_key"]) == (first.json()["dataset_id"], first.json()["s3_key"])
    assert len(datasets_of(client, auth)) == 1
    # the replayed URL is a fresh signature of the same object, still bound to the declared size
    url = again.json()["upload_url"]
    assert "content-length" in url.lower()
    assert put(url, ZIP_BYTES + b"x").status_code == 403
    assert put(url).status_code == 200
    assert keys_under(s3, s3_layout.dataset_prefix(first.json()["dataset_id"])) == [first.json()["s3_key"]]
    assert complete(client, auth, again.json()).status_code == 200
    # keys are per user: another user's identical key makes that user's own dataset
    theirs = initiate(client, other_auth, key)
    assert theirs.status_code == 200 and "Idempotent-Replayed" not in theirs.headers
    assert theirs.json()["dataset_id"] != first.json()["dataset_id"]


def test_the_same_key_with_another_body_is_409_and_makes_nothing(client, auth) -> None:
    key = new_key()
    assert initiate(client, auth, key).status_code == 200
    resp = initiate(client, auth, key, {**BODY, "dataset_name": "Other"})
    assert resp.status_code == 409
    detail = resp.json()["detail"]
    assert detail.startswith(f"Idempotency-Key '{key}' was already used at ")
    assert "for another request body (POST /v1/datasets/upload-initiate)" in detail
    assert len(datasets_of(client, auth)) == 1


def test_a_dataset_that_no_longer_awaits_its_upload_is_409(client, auth, airflow) -> None:
    completed_key, expired_key, deleted_key = new_key(), new_key(), new_key()
    done = initiate(client, auth, completed_key).json()
    assert put(done["upload_url"]).status_code == 200
    assert complete(client, auth, done).status_code == 200
    resp = initiate(client, auth, completed_key)
    assert resp.status_code == 409
    assert resp.json()["detail"] == (
        f"Idempotency-Key '{completed_key}' created dataset {done['dataset_id']}, which no longer awaits its upload "
        "(stage validating); no new upload URL is issued for it: use a new key for a new upload")

    late = initiate(client, auth, expired_key).json()  # the upload window (600 s here) has passed
    with client.app.state.sessionmaker() as session:
        session.execute(update(Dataset).where(Dataset.id == late["dataset_id"])
                        .values(created_at=utcnow() - timedelta(seconds=601)))
        session.commit()
    resp = initiate(client, auth, expired_key)
    assert resp.status_code == 409 and late["dataset_id"] in resp.json()["detail"]

    gone = initiate(client, auth, deleted_key).json()
    assert client.delete(f"/v1/datasets/{gone['dataset_id']}", headers=auth).status_code in (200, 204)
    resp = initiate(client, auth, deleted_key)
    assert resp.status_code == 409
    assert resp.json()["detail"] == (f"Idempotency-Key '{deleted_key}' created dataset {gone['dataset_id']}, which "
                                     "was deleted since; use a new key for a new upload")
    assert len(datasets_of(client, auth)) == 2


def test_parallel_requests_with_one_key_make_one_dataset(client, auth) -> None:
    key = new_key()
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: initiate(client, auth, key), range(8)))
    assert [r.status_code for r in answers] == [200] * 8
    assert len({r.json()["dataset_id"] for r in answers}) == 1
    assert sum(r.headers.get("Idempotent-Replayed") == "true" for r in answers) == 7
    assert len(datasets_of(client, auth)) == 1


def test_a_key_is_forgotten_after_24_hours(client, auth) -> None:
    key = new_key()
    first = initiate(client, auth, key).json()["dataset_id"]
    with client.app.state.sessionmaker() as session:
        session.execute(update(IdempotencyKey).where(IdempotencyKey.key == key)
                        .values(created_at=utcnow() - timedelta(hours=24, minutes=1)))
        session.commit()
    second = initiate(client, auth, key)
    assert second.status_code == 200 and "Idempotent-Replayed" not in second.headers
    assert second.json()["dataset_id"] != first


def test_a_failed_initiation_leaves_the_key_unused(client, auth, monkeypatch) -> None:
    from api.clients.s3 import S3Unavailable

    key = new_key()
    real = client.app.state.s3.presign_put

    def broken(*_args, **_kwargs):
        raise S3Unavailable("presign failed")

    monkeypatch.setattr(client.app.state.s3, "presign_put", broken)
    assert initiate(client, auth, key).status_code == 503
    monkeypatch.setattr(client.app.state.s3, "presign_put", real)
    retried = initiate(client, auth, key)
    assert retried.status_code == 200 and "Idempotent-Replayed" not in retried.headers
    assert [d["id"] for d in datasets_of(client, auth)] == [retried.json()["dataset_id"]]


def test_a_bad_key_is_400(client, auth) -> None:
    resp = initiate(client, auth, "has space")
    assert resp.status_code == 400
    assert resp.json()["detail"].startswith("Idempotency-Key must be 1 to 255 printable ASCII characters")
    assert datasets_of(client, auth) == []
