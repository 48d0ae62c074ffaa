"""`python -m training run` with `s3://` model, data and output against the real S3 server
(SeaweedFS, signed requests): inputs land in the `QLORA_CACHE_DIR` cache once and are not
downloaded again; the adapter is uploaded under the output URI."""

from __future__ import annotations

from pathlib import Path

import pytest

from training import storage
from training.cli import EXIT_BAD_INPUT, main
from training.data.synthetic import make_dataset

pytestmark = pytest.mark.stack

TASK, MODEL_ID, DATASET_ID = "video_classification", "videollama-tiny-classification", "ds-remote-test"


def _upload(client, bucket: str, folder: Path, prefix: str) -> int:
    files = [p for p in sorted(folder.rglob("*")) if p.is_file()]
    for path in files:
        client.upload_file(str(path), bucket, prefix + path.relative_to(folder).as_posix())
    return len(files)


def _keys(client, bucket: str, prefix: str) -> set[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {o["Key"][len(prefix):] for page in pages for o in page.get("Contents", [])}


def _cache_state(cache: Path) -> dict[str, tuple[int, int]]:
    """Every cached file with its inode and mtime: a re-download replaces or rewrites it."""
    return {str(p.relative_to(cache)): (p.stat().st_ino, p.stat().st_mtime_ns) for p in cache.rglob("*")
            if p.is_file()}


def _run(model: str, data: str, out: Path, output_uri: str) -> int:
    return main(["run", "--model", model, "--data", data, "--task", TASK, "--output", str(out),
                 "--output-uri", output_uri, "--epochs", "1", "--batch-size", "4", "--frames", "2",
                 "--mlflow-uri", ""])


def test_run_reads_s3_inputs_through_the_cache_and_uploads_the_adapter(tmp_path, s3_env, monkeypatch):
    client, bucket = s3_env.client(), s3_env.bucket
    cache = tmp_path / "cache"
    monkeypatch.setenv("QLORA_CACHE_DIR", str(cache))
    assert main(["build-tiny", "--architecture", "video_llama", "--task", TASK, "--out", str(tmp_path / "tiny")]) == 0
    model_files = _upload(client, bucket, tmp_path / "tiny", storage.model_prefix(MODEL_ID))
    data_files = _upload(client, bucket, make_dataset(tmp_path / "data", 8, size=32, frames=4),
                         storage.dataset_files_prefix(DATASET_ID))
    model_uri = storage.s3_uri(bucket, storage.model_prefix(MODEL_ID))
    data_uri = storage.s3_uri(bucket, storage.dataset_files_prefix(DATASET_ID))

    first_uri = storage.s3_uri(bucket, storage.adapter_prefix("job-remote-1"))
    assert _run(model_uri, data_uri, tmp_path / "out1", first_uri) == 0
    cached = _cache_state(cache)
    assert len(cached) == model_files + data_files
    assert any(name.endswith(f"models/{MODEL_ID}/config.json") for name in cached)
    assert any(name.endswith("metadata.csv") for name in cached)
    uploaded = _keys(client, bucket, storage.adapter_prefix("job-remote-1"))
    assert {"adapter_model.safetensors", "adapter_config.json", "label_map.json", "metrics.json"} <= uploaded
    assert not any(k.startswith("checkpoints/") or k == "train.log" for k in uploaded)
    local = (tmp_path / "out1" / "adapter_model.safetensors").read_bytes()
    remote = client.get_object(Bucket=bucket, Key=storage.adapter_prefix("job-remote-1") + "adapter_model.safetensors")
    assert remote["Body"].read() == local

    second_uri = storage.s3_uri(bucket, storage.adapter_prefix("job-remote-2"))
    assert _run(model_uri, data_uri, tmp_path / "out2", second_uri) == 0
    assert _cache_state(cache) == cached  # nothing downloaded again
    assert "adapter_model.safetensors" in _keys(client, bucket, storage.adapter_prefix("job-remote-2"))


def test_an_empty_s3_prefix_is_one_clear_error(tmp_path, s3_env, monkeypatch, capsys):
    monkeypatch.setenv("QLORA_CACHE_DIR", str(tmp_path / "cache"))
    missing = storage.s3_uri(s3_env.bucket, storage.model_prefix("no-such-model"))
    assert _run(missing, str(tmp_path), tmp_path / "out", storage.s3_uri(s3_env.bucket, "x/")) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: --model {missing}: no objects under that prefix"]
