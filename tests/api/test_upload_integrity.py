"""Upload integrity on the real SeaweedFS and PostgreSQL: a declared size is bound into the
pre-signed PUT and into every part URL (S3 itself refuses any other size), upload-complete
records the object's size and ETag for the validation run, the per-user storage quota, and a
dataset that ends in error keeps no extracted files. (Airflow is the fake that records triggers;
tests/dags runs the real DAG on a changed archive.)"""

from __future__ import annotations

import os

import httpx
import pytest

from api.core.config import Settings
from devstack.seaweedfs import S3Settings
from tests.api.conftest import FakeAirflow, make_settings
from tests.api.test_datasets import ZIP_BYTES, complete, keys_under, put
from training import s3 as s3_layout  # the S3 key layout

MIB = 1024**2
PART = 5 * MIB
QUOTA = 16 * MIB


@pytest.fixture
def settings(postgres_url: str, s3: S3Settings) -> Settings:
    return make_settings(postgres_url, s3, max_upload_bytes=64 * MIB, user_storage_quota_bytes=QUOTA)


def test_a_declared_size_is_bound_into_the_presigned_put(client, auth, initiate, airflow: FakeAirflow, s3) -> None:
    started = initiate(file_size_bytes=len(ZIP_BYTES))
    assert "content-length" in started["upload_url"].lower()  # X-Amz-SignedHeaders=content-length;host
    bigger = put(started["upload_url"], ZIP_BYTES + b"more")
    smaller = put(started["upload_url"], ZIP_BYTES[:-1])
    assert (bigger.status_code, smaller.status_code) == (403, 403)
    assert "SignatureDoesNotMatch" in bigger.text
    assert keys_under(s3, s3_layout.dataset_prefix(started["dataset_id"])) == []  # S3 stored nothing

    def chunks():  # no Content-Length at all (chunked): refused too
        yield ZIP_BYTES[:500]
        yield ZIP_BYTES[500:]
    assert httpx.put(started["upload_url"], content=chunks(), timeout=30).status_code == 403

    assert put(started["upload_url"]).status_code == 200
    assert complete(client, auth, started).status_code == 200
    assert airflow.triggers[0][2]["size_bytes"] == len(ZIP_BYTES)


def test_an_undeclared_size_still_uploads(client, auth, initiate, airflow) -> None:
    started = initiate()
    assert "content-length" not in started["upload_url"].lower()
    assert put(started["upload_url"], ZIP_BYTES + b"any size").status_code == 200
    assert complete(client, auth, started).status_code == 200


def test_declared_size_beyond_the_upload_limit_is_400(client, auth) -> None:
    body = {"file_name": "a.zip", "file_type": "application/zip", "dataset_name": "a", "file_size_bytes": 64 * MIB + 1}
    resp = client.post("/v1/datasets/upload-initiate", json=body, headers=auth)
    assert resp.status_code == 400
    assert resp.json()["detail"] == f"file_size_bytes is {64 * MIB + 1}; the limit is {64 * MIB} bytes"
    bad = client.post("/v1/datasets/upload-initiate", json={**body, "file_size_bytes": 0}, headers=auth)
    assert bad.status_code == 400 and "file_size_bytes" in bad.json()["detail"]


def test_every_part_url_binds_its_part_size(client, auth, airflow, s3) -> None:
    size = 2 * PART + 1000
    archive = b"PK\x03\x04" + os.urandom(size - 4)
    body = {"file_name": "big.zip", "file_type": "application/zip", "dataset_name": "Big", "size_bytes": size,
            "part_size_bytes": PART}
    started = client.post("/v1/datasets/multipart/initiate", json=body, headers=auth).json()
    urls = {p["part_number"]: p["url"] for p in started["parts"]}
    # a part of another size is refused by S3, the last part's size included
    assert httpx.put(urls[1], content=archive[:PART + 1], timeout=30).status_code == 403
    assert httpx.put(urls[3], content=archive[2 * PART:] + b"x", timeout=30).status_code == 403
    etags = []
    for number in (1, 2, 3):
        resp = httpx.put(urls[number], content=archive[(number - 1) * PART:number * PART], timeout=30)
        assert resp.status_code == 200, resp.text
        etags.append({"part_number": number, "etag": resp.headers["etag"]})
    # fresh URLs bind the sizes too, and there is no part 4
    ask = {"dataset_id": started["dataset_id"], "upload_id": started["upload_id"], "part_numbers": [3]}
    again = client.post("/v1/datasets/multipart/parts", json=ask, headers=auth).json()
    assert httpx.put(again["parts"][0]["url"], content=b"x" * 10, timeout=30).status_code == 403
    beyond = client.post("/v1/datasets/multipart/parts", json={**ask, "part_numbers": [4]}, headers=auth)
    assert beyond.status_code == 400 and beyond.json()["detail"] == "part 4 does not exist: this upload has 3 parts"
    resp = client.post("/v1/datasets/multipart/complete", headers=auth, json={
        "dataset_id": started["dataset_id"], "upload_id": started["upload_id"], "parts": etags})
    assert resp.status_code == 200, resp.text
    assert airflow.triggers[0][2]["size_bytes"] == size


def test_a_multipart_upload_completed_short_of_its_declared_size_is_refused(client, auth, airflow, s3) -> None:
    size = PART + 1000
    archive = b"PK\x03\x04" + os.urandom(size - 4)
    body = {"file_name": "big.zip", "file_type": "application/zip", "dataset_name": "Big", "size_bytes": size,
            "part_size_bytes": PART}
    started = client.post("/v1/datasets/multipart/initiate", json=body, headers=auth).json()
    first = httpx.put(started["parts"][0]["url"], content=archive[:PART], timeout=30)
    resp = client.post("/v1/datasets/multipart/complete", headers=auth, json={
        "dataset_id": started["dataset_id"], "upload_id": started["upload_id"],
        "parts": [{"part_number": 1, "etag": first.headers["etag"]}]})  # part 2 left out
    assert resp.status_code == 400
    assert resp.json()["detail"].startswith(f"The uploaded archive is {PART} bytes, not the {size} declared")
    assert keys_under(s3, s3_layout.dataset_prefix(started["dataset_id"])) == []
    assert airflow.triggers == []


def test_storage_quota_refuses_uploads_past_it_with_413(client, auth, other_auth, initiate, airflow, s3) -> None:
    half = QUOTA // 2
    first = initiate(file_size_bytes=half)  # reserved while the upload is awaited
    refused = client.post("/v1/datasets/upload-initiate", headers=auth, json={
        "file_name": "b.zip", "file_type": "application/zip", "dataset_name": "b", "file_size_bytes": half + 1})
    assert refused.status_code == 413
    assert refused.json()["detail"] == (
        f"Storage quota exceeded: your datasets use {half} of your {QUOTA} bytes "
        f"(QLORA_USER_STORAGE_QUOTA_BYTES) and this upload needs {half + 1}; delete datasets you no longer need")
    # the quota is per user: another user is not affected
    other = client.post("/v1/datasets/upload-initiate", headers=other_auth, json={
        "file_name": "b.zip", "file_type": "application/zip", "dataset_name": "b", "file_size_bytes": half + 1})
    assert other.status_code == 200
    # multipart initiation counts too
    multipart = client.post("/v1/datasets/multipart/initiate", headers=auth, json={
        "file_name": "c.zip", "file_type": "application/zip", "dataset_name": "c", "size_bytes": half + 1})
    assert multipart.status_code == 413 and "Storage quota exceeded" in multipart.json()["detail"]

    # an upload of undeclared size is checked on completion: past the quota, 413 and its object deleted
    undeclared = initiate()
    assert put(undeclared["upload_url"], b"PK\x03\x04" + b"\x00" * (half + 10)).status_code == 200
    late = complete(client, auth, undeclared)
    assert late.status_code == 413
    assert "needs" in late.json()["detail"] and "(the uploaded object was deleted)" in late.json()["detail"]
    assert keys_under(s3, s3_layout.dataset_prefix(undeclared["dataset_id"])) == []
    assert client.get(f"/v1/datasets/{undeclared['dataset_id']}", headers=auth).json()["stage"] == "awaiting_upload"

    # deleting a dataset frees its share
    assert client.delete(f"/v1/datasets/{first['dataset_id']}", headers=auth).status_code == 204
    assert initiate(file_size_bytes=half + 1)["dataset_id"]
    # nothing left: even an upload of unknown size is refused at initiation
    initiate(file_size_bytes=QUOTA - half - 1)  # fills the rest exactly
    full = client.post("/v1/datasets/upload-initiate", headers=auth, json={
        "file_name": "d.zip", "file_type": "application/zip", "dataset_name": "d"})
    assert full.status_code == 413 and "an upload of unknown size needs space left" in full.json()["detail"]


def test_a_dataset_that_ends_in_error_keeps_no_extracted_files(client, auth, initiate, airflow, s3) -> None:
    """However the run ended (here: killed before it wrote a report), the API deletes the
    extracted files when it settles the dataset `error`; the archive itself stays."""
    started = initiate()
    dataset_id = started["dataset_id"]
    put(started["upload_url"])
    assert complete(client, auth, started).status_code == 200
    files = s3_layout.dataset_files_prefix(dataset_id)
    for name in ("metadata.csv", "clips/a.mp4"):  # what an extract task had uploaded before it died
        s3.client().put_object(Bucket=s3.bucket, Key=files + name, Body=b"x")
    airflow.states[f"validate-{dataset_id}"] = "failed"
    detail = client.get(f"/v1/datasets/{dataset_id}", headers=auth).json()
    assert detail["status"] == "error"
    assert keys_under(s3, files) == []
    assert keys_under(s3, s3_layout.dataset_prefix(dataset_id)) == [started["s3_key"]]
