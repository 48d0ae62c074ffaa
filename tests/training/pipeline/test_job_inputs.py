"""A training job's inputs (`training.pipeline.job_inputs`) against the real S3 server: the
dataset's report decides, the worker cache is filled once and kept under its limit, and S3
errors are transient (retried) or for good (`JobFailed`)."""

from __future__ import annotations

import json
import os
import time
import uuid

import pytest
from botocore.exceptions import ClientError

from training import cache, s3 as s3_io
from training.pipeline import job_inputs, worker_paths
from training.pipeline.errors import JobFailed


def _report(client, bucket, dataset_id, body) -> None:
    client.put_object(Bucket=bucket, Key=s3_io.dataset_report_key(dataset_id),
                      Body=body if isinstance(body, bytes) else json.dumps(body).encode())


@pytest.mark.stack
def test_the_dataset_report_decides(s3_env):
    client, bucket = s3_env.client(), s3_env.bucket
    good, bad, broken = (f"ds-{uuid.uuid4().hex[:8]}" for _ in range(3))
    _report(client, bucket, good, {"valid": True, "tasks": ["video_classification"], "clip_count": 8})
    _report(client, bucket, bad, {"valid": False, "errors": ["a.mp4: unreadable", "b.mp4: empty"]})
    _report(client, bucket, broken, b"{not json")
    assert job_inputs.read_dataset_report(good)["tasks"] == ["video_classification"]
    with pytest.raises(JobFailed, match=f"dataset {bad} is not valid: a.mp4: unreadable; b.mp4: empty"):
        job_inputs.read_dataset_report(bad)
    with pytest.raises(JobFailed, match="is not JSON"):
        job_inputs.read_dataset_report(broken)
    with pytest.raises(JobFailed, match="dataset ds-never has no validation report .*: it does not exist"):
        job_inputs.read_dataset_report("ds-never")


@pytest.mark.stack
def test_the_worker_cache_is_filled_once_and_kept_under_its_limit(s3_env, tmp_path, monkeypatch):
    client, bucket = s3_env.client(), s3_env.bucket
    monkeypatch.setenv("QLORA_CACHE_DIR", str(tmp_path))
    model_id, dataset_id = f"m-{uuid.uuid4().hex[:8]}", f"ds-{uuid.uuid4().hex[:8]}"
    client.put_object(Bucket=bucket, Key=s3_io.model_prefix(model_id) + "config.json", Body=b"{}")
    client.put_object(Bucket=bucket, Key=s3_io.dataset_files_prefix(dataset_id) + "metadata.csv", Body=b"file_name\n")
    for i in range(20):  # fetched several at once
        client.put_object(Bucket=bucket, Key=s3_io.dataset_files_prefix(dataset_id) + f"clips/{i}.mp4", Body=b"%d" % i)
    _report(client, bucket, dataset_id, {"valid": True, "clips": []})
    stale, _ = worker_paths.cache_entries("old-model", "unused")  # 2 MB, used two days ago
    cache.touch(stale)
    (stale / "blob").write_bytes(b"\0" * 2 * 1024 * 1024)
    os.utime(stale / cache.LAST_USED, (time.time() - 48 * 3600,) * 2)
    monkeypatch.setenv("QLORA_CACHE_MAX_GB", str(1 / 1024))  # 1 MB

    first = job_inputs.fill_worker_cache(model_id, dataset_id)
    assert (first.model_downloads, first.data_downloads) == (1, 21)
    assert (first.model_dir / "config.json").read_bytes() == b"{}"
    assert (first.data_dir / "metadata.csv").is_file()
    assert [(first.data_dir / f"clips/{i}.mp4").read_bytes() for i in range(20)] == [b"%d" % i for i in range(20)]
    assert not list(first.data_dir.rglob("*.part"))
    # the report beside files/, where the engine looks for it (it trusts the clips it lists)
    assert json.loads(s3_io.dataset_report_beside(first.data_dir).read_text()) == {"valid": True, "clips": []}
    assert [entry for entry, _ in first.evicted] == [stale] and not stale.exists()
    again = job_inputs.fill_worker_cache(model_id, dataset_id)
    assert (again.model_downloads, again.data_downloads, again.evicted) == (0, 0, [])

    with pytest.raises(JobFailed, match=f"model no-such-model not found: nothing under s3://{bucket}/models/no-such"):
        job_inputs.fill_worker_cache("no-such-model", dataset_id)


def _client_raising(code: str, status: int):
    class Failing:
        def get_object(self, **_kw):
            raise ClientError({"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")

    return Failing()


def test_s3_errors_are_retried_or_final(monkeypatch):
    monkeypatch.setattr(s3_io, "client", lambda: _client_raising("ServiceUnavailable", 503))
    with pytest.raises(ClientError):  # transient: the task retries
        job_inputs.read_dataset_report("ds-1")
    monkeypatch.setattr(s3_io, "client", lambda: _client_raising("AccessDenied", 403))
    with pytest.raises(JobFailed, match="S3 error while reading the dataset's validation report"):
        job_inputs.read_dataset_report("ds-1")
