"""Multipart dataset uploads (archives beyond one PUT) on the real SeaweedFS and PostgreSQL:
pre-signed part URLs, resuming from the parts S3 holds, completing, aborting, and the expiry
sweep aborting uploads never completed (Airflow is the fake that records triggers)."""

from __future__ import annotations

import hashlib
import os
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import update

from api.core.config import Settings
from api.models import Dataset
from api.models.base import utcnow
from devstack.seaweedfs import S3Settings
from tests.api.conftest import FakeAirflow, make_settings
from tests.api.test_datasets import keys_under
from training import s3 as s3_layout  # the S3 key layout

MIB = 1024**2
PART = 5 * MIB  # S3's smallest part (every part but the last)


@pytest.fixture
def settings(postgres_url: str, s3: S3Settings) -> Settings:
    return make_settings(postgres_url, s3, max_upload_bytes=64 * MIB)


@pytest.fixture(scope="module")
def archive() -> bytes:
    """Two full parts and a short last one."""
    return b"PK\x03\x04" + os.urandom(2 * PART + 1000 - 4)


def pending(s3: S3Settings, dataset_id: str) -> list[str]:
    resp = s3.client().list_multipart_uploads(Bucket=s3.bucket, Prefix=s3_layout.dataset_prefix(dataset_id))
    return [u["UploadId"] for u in resp.get("Uploads", [])]


def initiate(client, auth, size: int, **fields) -> httpx.Response:
    body = {"file_name": "big.zip", "file_type": "application/zip", "dataset_name": "Big", "size_bytes": size,
            "part_size_bytes": PART, **fields}
    return client.post("/v1/datasets/multipart/initiate", json=body, headers=auth)


def put_part(url: str, archive: bytes, number: int) -> str:
    resp = httpx.put(url, content=archive[(number - 1) * PART:number * PART], timeout=30)
    assert resp.status_code == 200, resp.text
    return resp.headers["etag"]


def complete(client, auth, started: dict, parts: list[tuple[int, str]]) -> httpx.Response:
    return client.post("/v1/datasets/multipart/complete", headers=auth, json={
        "dataset_id": started["dataset_id"], "upload_id": started["upload_id"],
        "parts": [{"part_number": n, "etag": e} for n, e in parts]})


def test_parts_up_then_complete_assembles_the_archive_and_validates(client, auth, airflow: FakeAirflow, s3,
                                                                    archive) -> None:
    resp = initiate(client, auth, len(archive))
    assert resp.status_code == 200, resp.text
    started = resp.json()
    dataset_id = started["dataset_id"]
    assert started["s3_key"] == s3_layout.dataset_upload_key(dataset_id, "big.zip")
    assert (started["part_size_bytes"], started["part_count"]) == (PART, 3)
    assert [p["part_number"] for p in started["parts"]] == [1, 2, 3]
    assert pending(s3, dataset_id) == [started["upload_id"]]
    assert client.get(f"/v1/datasets/{dataset_id}", headers=auth).json()["stage"] == "awaiting_upload"

    etags = [(p["part_number"], put_part(p["url"], archive, p["part_number"])) for p in started["parts"]]
    resp = complete(client, auth, started, etags)
    assert resp.status_code == 200, resp.text
    assert resp.json()["dataset_id"] == dataset_id

    body = s3.client().get_object(Bucket=s3.bucket, Key=started["s3_key"])["Body"].read()
    assert hashlib.sha256(body).digest() == hashlib.sha256(archive).digest()
    assert pending(s3, dataset_id) == []
    etag = s3.client().head_object(Bucket=s3.bucket, Key=started["s3_key"])["ETag"]
    assert airflow.triggers == [("dataset_validation", f"validate-{dataset_id}",
                                 {"dataset_id": dataset_id, "s3_key": started["s3_key"],
                                  "size_bytes": len(archive), "etag": etag})]
    detail = client.get(f"/v1/datasets/{dataset_id}", headers=auth).json()
    assert (detail["stage"], detail["upload_size_bytes"]) == ("validating", len(archive))
    # completing again is idempotent: no second run
    assert complete(client, auth, started, etags).status_code == 200
    assert len(airflow.triggers) == 1


def test_resume_lists_uploaded_parts_and_reissues_urls(client, auth, other_auth, s3, archive) -> None:
    started = initiate(client, auth, len(archive)).json()
    first = put_part(started["parts"][0]["url"], archive, 1)  # then the client was interrupted

    ask = {"dataset_id": started["dataset_id"], "upload_id": started["upload_id"], "part_numbers": [3, 2]}
    resp = client.post("/v1/datasets/multipart/parts", json=ask, headers=auth)
    assert resp.status_code == 200, resp.text
    got = resp.json()
    assert got["uploaded"] == [{"part_number": 1, "etag": first, "size_bytes": PART}]
    assert [p["part_number"] for p in got["parts"]] == [2, 3]
    etags = [(1, first)] + [(p["part_number"], put_part(p["url"], archive, p["part_number"])) for p in got["parts"]]
    listed = client.post("/v1/datasets/multipart/parts", headers=auth,
                         json={**ask, "part_numbers": []}).json()
    assert [(p["part_number"], p["size_bytes"]) for p in listed["uploaded"]] == [(1, PART), (2, PART), (3, 1000)]
    assert listed["parts"] == []

    # someone else's dataset, an upload id that is not this dataset's, bad part numbers
    assert client.post("/v1/datasets/multipart/parts", json=ask, headers=other_auth).status_code == 404
    wrong = client.post("/v1/datasets/multipart/parts", json={**ask, "upload_id": "not-an-upload"}, headers=auth)
    assert wrong.status_code == 400 and "No such multipart upload" in wrong.json()["detail"]
    bad = client.post("/v1/datasets/multipart/parts", json={**ask, "part_numbers": [0]}, headers=auth)
    assert bad.status_code == 400 and "part numbers run from 1 to 10000" in bad.json()["detail"]

    assert complete(client, auth, started, etags).status_code == 200
    done = client.post("/v1/datasets/multipart/parts", json=ask, headers=auth)
    assert done.status_code == 400 and "complete" in done.json()["detail"]


def test_part_urls_are_signed(client, auth, archive) -> None:
    started = initiate(client, auth, len(archive)).json()
    url = started["parts"][0]["url"]
    assert "X-Amz-Signature=" in url and "uploadId=" in url and "partNumber=1" in url
    tampered = url.replace("partNumber=1", "partNumber=2")
    assert httpx.put(tampered, content=b"x" * 10, timeout=30).status_code == 403


def test_complete_refusals_name_the_fix_and_leave_the_upload_resumable(client, auth, airflow, s3, archive) -> None:
    started = initiate(client, auth, len(archive)).json()
    etags = [(p["part_number"], put_part(p["url"], archive, p["part_number"])) for p in started["parts"]]

    wrong_etag = complete(client, auth, started, [(1, '"0123456789abcdef0123456789abcdef"'), *etags[1:]])
    assert wrong_etag.status_code == 400
    assert "InvalidPart" in wrong_etag.json()["detail"] and "ETag" in wrong_etag.json()["detail"]
    twice = complete(client, auth, started, [etags[0], etags[0]])
    assert twice.status_code == 400 and "each part number must be listed once" in twice.json()["detail"]
    wrong_id = client.post("/v1/datasets/multipart/complete", headers=auth, json={
        "dataset_id": started["dataset_id"], "upload_id": "nope", "parts": [{"part_number": 1, "etag": "x"}]})
    assert wrong_id.status_code == 400 and "No such multipart upload" in wrong_id.json()["detail"]
    assert airflow.triggers == [] and pending(s3, started["dataset_id"]) == [started["upload_id"]]
    assert complete(client, auth, started, etags).status_code == 200  # still completable

    # a part below S3's 5 MiB minimum that is not the last never gets in: each part URL binds
    # its part's size, so S3 refuses the PUT itself (completing cannot meet EntityTooSmall)
    small = initiate(client, auth, len(archive)).json()
    refused = httpx.put(small["parts"][0]["url"], content=b"PK\x03\x04tiny", timeout=30)
    assert refused.status_code == 403 and "SignatureDoesNotMatch" in refused.text
    listed = client.post("/v1/datasets/multipart/parts", headers=auth, json={
        "dataset_id": small["dataset_id"], "upload_id": small["upload_id"]}).json()
    assert listed["uploaded"] == []


def test_initiate_checks_size_and_part_size(client, auth, s3) -> None:
    too_big = initiate(client, auth, 64 * MIB + 1)
    assert too_big.status_code == 400 and "the limit is 67108864 bytes" in too_big.json()["detail"]
    small_parts = initiate(client, auth, 20 * MIB, part_size_bytes=MIB)
    assert small_parts.status_code == 400 and "part_size_bytes" in small_parts.json()["detail"]
    default = initiate(client, auth, 60 * MIB, part_size_bytes=None).json()
    assert (default["part_size_bytes"], default["part_count"]) == (64 * MIB, 1)
    bad_name = initiate(client, auth, 10 * MIB, file_name="data.tar")
    assert bad_name.status_code == 400
    # the refused ones left no dataset behind
    assert [d["id"] for d in client.get("/v1/datasets", headers=auth).json()] == [default["dataset_id"]]


def test_abort_deletes_parts_objects_and_dataset(client, auth, s3, archive) -> None:
    started = initiate(client, auth, len(archive)).json()
    put_part(started["parts"][0]["url"], archive, 1)
    resp = client.post("/v1/datasets/multipart/abort", json={"dataset_id": started["dataset_id"]}, headers=auth)
    assert resp.status_code == 200, resp.text
    assert pending(s3, started["dataset_id"]) == []
    assert keys_under(s3, s3_layout.dataset_prefix(started["dataset_id"])) == []
    assert client.get(f"/v1/datasets/{started['dataset_id']}", headers=auth).status_code == 404
    late = httpx.put(started["parts"][1]["url"], content=archive[PART:2 * PART], timeout=30)
    assert late.status_code == 404  # NoSuchUpload: a late part has nowhere to land
    assert client.post("/v1/datasets/multipart/abort", json={"dataset_id": started["dataset_id"]},
                       headers=auth).status_code == 404

    done = initiate(client, auth, len(archive)).json()
    etags = [(p["part_number"], put_part(p["url"], archive, p["part_number"])) for p in done["parts"]]
    assert complete(client, auth, done, etags).status_code == 200
    refused = client.post("/v1/datasets/multipart/abort", json={"dataset_id": done["dataset_id"]}, headers=auth)
    assert refused.status_code == 409 and "delete the dataset instead" in refused.json()["detail"]


def test_delete_of_an_upload_under_way_aborts_it(client, auth, s3, archive) -> None:
    started = initiate(client, auth, len(archive)).json()
    put_part(started["parts"][0]["url"], archive, 1)
    assert client.delete(f"/v1/datasets/{started['dataset_id']}", headers=auth).status_code == 204
    assert pending(s3, started["dataset_id"]) == []


def test_expiry_sweep_aborts_stale_multipart_uploads(client, auth, s3, archive) -> None:
    from api.main import reconcile_once

    stale, fresh = (initiate(client, auth, len(archive)).json() for _ in range(2))
    put_part(stale["parts"][0]["url"], archive, 1)
    put_part(fresh["parts"][0]["url"], archive, 1)
    with client.app.state.sessionmaker() as session:
        session.execute(update(Dataset).where(Dataset.id == stale["dataset_id"])
                        .values(created_at=utcnow() - timedelta(seconds=601)))
        session.commit()
    assert reconcile_once(client.app) >= 1
    assert pending(s3, stale["dataset_id"]) == []
    assert pending(s3, fresh["dataset_id"]) == [fresh["upload_id"]]
    detail = client.get(f"/v1/datasets/{stale['dataset_id']}", headers=auth).json()
    assert (detail["status"], detail["stage"]) == ("error", "expired")
    ask = {"dataset_id": stale["dataset_id"], "upload_id": stale["upload_id"], "part_numbers": [2]}
    late = client.post("/v1/datasets/multipart/parts", json=ask, headers=auth)
    assert late.status_code == 400 and "expired" in late.json()["detail"]


def test_part_urls_never_outlive_the_upload_window(client, auth, archive) -> None:
    started = initiate(client, auth, len(archive)).json()
    with client.app.state.sessionmaker() as session:  # 590 of the 600 s window gone
        session.execute(update(Dataset).where(Dataset.id == started["dataset_id"])
                        .values(created_at=utcnow() - timedelta(seconds=590)))
        session.commit()
    got = client.post("/v1/datasets/multipart/parts", headers=auth, json={
        "dataset_id": started["dataset_id"], "upload_id": started["upload_id"], "part_numbers": [1]}).json()
    assert "X-Amz-Expires=" in got["parts"][0]["url"]
    expires = int(got["parts"][0]["url"].split("X-Amz-Expires=")[1].split("&")[0])
    assert 1 <= expires <= 10


def test_initiate_honours_the_idempotency_key(client, auth, other_auth, s3, archive) -> None:
    """As on `upload-initiate`: a retry with the same key and body answers the same dataset and S3
    upload (part URLs signed anew, that S3 takes); parallel retries make one; another body, or a
    dataset whose upload is done, is 409. Before, each retry made another dataset and upload."""
    from concurrent.futures import ThreadPoolExecutor
    import uuid

    body = {"file_name": "big.zip", "file_type": "application/zip", "dataset_name": "Big",
            "size_bytes": len(archive), "part_size_bytes": PART}

    def post(key: str, headers=auth, **fields) -> httpx.Response:
        return client.post("/v1/datasets/multipart/initiate", json={**body, **fields},
                           headers={**headers, "Idempotency-Key": key})

    key = f"multipart-{uuid.uuid4()}"
    first, again = post(key), post(key)
    assert first.status_code == 200 and "Idempotent-Replayed" not in first.headers, first.text
    assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true", again.text
    same = ("dataset_id", "s3_key", "upload_id", "part_size_bytes", "part_count")
    assert {k: again.json()[k] for k in same} == {k: first.json()[k] for k in same}
    assert [p["part_number"] for p in again.json()["parts"]] == [1, 2, 3]
    dataset_id = first.json()["dataset_id"]
    assert pending(s3, dataset_id) == [first.json()["upload_id"]]
    assert [d["id"] for d in client.get("/v1/datasets", headers=auth).json()] == [dataset_id]

    other = post(key, dataset_name="Other")
    assert other.status_code == 409 and "for another request body (POST /v1/datasets/multipart/initiate)" in \
        other.json()["detail"]
    theirs = post(key, headers=other_auth)  # keys are per user
    assert theirs.status_code == 200 and theirs.json()["dataset_id"] != dataset_id

    # the replayed part URLs are fresh signatures S3 takes (each still bound to its part's size)
    etags = [(p["part_number"], put_part(p["url"], archive, p["part_number"])) for p in again.json()["parts"]]
    assert complete(client, auth, again.json(), etags).status_code == 200
    done = post(key)
    assert done.status_code == 409 and done.json()["detail"] == (
        f"Idempotency-Key '{key}' created dataset {dataset_id}, which no longer awaits its upload (stage "
        "validating); no new upload URLs are issued for it: use a new key for a new upload")

    parallel = f"multipart-{uuid.uuid4()}"
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: post(parallel), range(4)))
    assert [a.status_code for a in answers] == [200] * 4
    assert len({a.json()["dataset_id"] for a in answers}) == 1 and len({a.json()["upload_id"] for a in answers}) == 1
    assert pending(s3, answers[0].json()["dataset_id"]) == [answers[0].json()["upload_id"]]
    assert len(client.get("/v1/datasets", headers=auth).json()) == 2
