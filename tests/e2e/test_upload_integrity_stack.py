"""Upload integrity through the whole real stack (API under uvicorn, SeaweedFS, Airflow running
`dataset_validation`): an archive replaced after `upload-complete` is not processed; the dataset
ends `error` saying it changed, with no extracted files left in S3."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.e2e.journey import login
from training import s3 as s3_layout  # the S3 key layout
from training.data.synthetic import make_dataset, zip_folder

pytestmark = [pytest.mark.e2e, pytest.mark.stack, pytest.mark.timeout(600)]


def test_an_archive_overwritten_after_upload_complete_ends_the_dataset_in_error(api_server, tmp_path) -> None:
    first = zip_folder(make_dataset(tmp_path / "a" / "squares", 4).parent, tmp_path / "a.zip")
    other = zip_folder(make_dataset(tmp_path / "b" / "squares", 6).parent, tmp_path / "b.zip")
    with httpx.Client(base_url=f"{api_server.base_url}/v1", timeout=30) as api:
        login(api)
        init = api.post("/datasets/upload-initiate", json={"file_name": "squares.zip", "file_type": "application/zip",
                                                           "dataset_name": "squares"}).json()
        assert httpx.put(init["upload_url"], content=first.read_bytes(), timeout=30).status_code == 200
        done = api.post("/datasets/upload-complete", json={"dataset_id": init["dataset_id"], "s3_key": init["s3_key"]})
        assert done.status_code == 200, done.text
        # the same (unbound) URL still takes a PUT: the user swaps the archive before the run reads it
        assert httpx.put(init["upload_url"], content=other.read_bytes(), timeout=30).status_code == 200
        deadline = time.monotonic() + 180
        while (got := api.get(f"/datasets/{init['dataset_id']}").json())["status"] == "processing":
            assert time.monotonic() < deadline, got
            time.sleep(1)
    assert got["status"] == "error", got
    assert "squares.zip: the archive changed after upload-complete" in got["error"]
    assert got["upload_size_bytes"] == first.stat().st_size and got["upload_etag"]
    s3 = api_server.s3.client()
    listed = s3.list_objects_v2(Bucket=api_server.s3.bucket, Prefix=s3_layout.dataset_files_prefix(init["dataset_id"]))
    assert listed.get("KeyCount", 0) == 0
