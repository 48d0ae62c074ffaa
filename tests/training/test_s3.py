"""`training.s3` against the real S3 server (SeaweedFS, signed requests): the key layout, folder
transfers (the local cache keeps what is unchanged and fetches again what was re-uploaded, even
at the same size), `s3://` inputs of the engine read through the `QLORA_CACHE_DIR` cache once,
and its adapter uploaded under the output URI."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from training import s3
from training.cli import main
from training.data.synthetic import make_dataset
from training.errors import InputError
from training.result import EXIT_BAD_INPUT

TASK, MODEL_ID, DATASET_ID = "video_classification", "videollama-tiny-classification", "ds-remote-test"


def test_the_key_layout():
    assert s3.dataset_upload_key("d1", "clips.zip") == "datasets/d1/clips.zip"
    assert s3.dataset_files_prefix("d1") == "datasets/d1/files/"
    assert s3.dataset_report_key("d1") == "datasets/d1/validation/report.json"
    assert s3.model_prefix("m1") == "models/m1/"
    assert s3.adapter_prefix("j1") == "trainings/j1/adapter/"
    assert s3.checkpoints_prefix("j1") == "trainings/j1/checkpoints/"
    assert s3.s3_uri("b", s3.adapter_prefix("j1")) == "s3://b/trainings/j1/adapter/"
    assert s3.split_s3_uri("s3://b/trainings/j1/adapter/") == ("b", "trainings/j1/adapter/")
    for bad in ("http://b/k", "s3:///k"):
        with pytest.raises(ValueError):
            s3.split_s3_uri(bad)


def test_a_local_folder_is_used_as_it_is(tmp_path):
    assert s3.local_folder(str(tmp_path), "model") == tmp_path
    with pytest.raises(InputError) as raised:
        s3.local_folder("/no/such", "data")
    assert (raised.value.field, raised.value.message) == ("data", "/no/such is not a folder")


@pytest.mark.stack
def test_the_cache_refetches_an_object_reuploaded_with_the_same_size(tmp_path, s3_env):
    client, bucket, prefix = s3_env.client(), s3_env.bucket, f"cache-test-{uuid.uuid4().hex[:8]}/"
    client.put_object(Bucket=bucket, Key=prefix + "weights.bin", Body=b"old weights")
    client.put_object(Bucket=bucket, Key=prefix + "sub/config.json", Body=b"{}")
    dest = tmp_path / "cache"

    assert s3.download_prefix(client, bucket, prefix, dest) == (2, 2)
    assert s3.download_prefix(client, bucket, prefix, dest) == (2, 0)  # unchanged: kept

    time.sleep(1.1)  # S3 times have one-second resolution
    client.put_object(Bucket=bucket, Key=prefix + "weights.bin", Body=b"new weights")
    assert s3.download_prefix(client, bucket, prefix, dest) == (2, 1)
    assert (dest / "weights.bin").read_bytes() == b"new weights"
    assert (dest / "sub" / "config.json").read_bytes() == b"{}"
    assert not list(dest.rglob("*.part"))


@pytest.mark.stack
def test_s3_uris_as_local_folders_and_uploads(tmp_path, s3_env, monkeypatch):
    client, bucket, prefix = s3_env.client(), s3_env.bucket, f"uri-test-{uuid.uuid4().hex[:8]}/"
    monkeypatch.setenv("QLORA_CACHE_DIR", str(tmp_path / "cache"))
    folder = tmp_path / "adapter"
    (folder / "sub").mkdir(parents=True)
    for name in ("adapter_config.json", "adapter_model.safetensors", "sub/z.json"):
        (folder / name).write_text(name)
    uploaded = []
    real_client = s3.client
    monkeypatch.setattr(s3, "client", lambda: _Recording(real_client(), uploaded))
    assert s3.upload_folder(folder, s3.s3_uri(bucket, prefix.rstrip("/"))) == 3  # no trailing slash needed
    assert uploaded[-1] == prefix + "adapter_config.json"  # last: it marks a complete adapter

    uri = s3.s3_uri(bucket, prefix)
    local = s3.local_folder(uri, "adapter")
    assert local == s3.cached_copy(uri) == tmp_path / "cache" / "s3" / bucket / prefix
    assert (local / "sub" / "z.json").read_text() == "sub/z.json"
    missing = s3.s3_uri(bucket, f"nothing-{uuid.uuid4().hex[:8]}/")
    with pytest.raises(InputError) as raised:
        s3.local_folder(missing, "model")
    assert (raised.value.field, raised.value.message) == ("model", f"{missing}: no objects under that prefix")


class _Recording:
    def __init__(self, client, keys: list[str]) -> None:
        self.client, self.keys = client, keys

    def upload_file(self, path, bucket, key):
        self.keys.append(key)
        return self.client.upload_file(path, bucket, key)

    def __getattr__(self, name):
        return getattr(self.client, name)


# --- the engine with s3:// model, data and output -------------------------------------------

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
            if p.is_file() and p.name != ".last-used"}  # (touched by each use)


def _run(model: str, data: str, out: Path, output_uri: str) -> int:
    return main(["run", "--model", model, "--data", data, "--task", TASK, "--output", str(out),
                 "--output-uri", output_uri, "--epochs", "1", "--batch-size", "4", "--frames", "2",
                 "--mlflow-uri", ""])


@pytest.mark.stack
def test_run_reads_s3_inputs_through_the_cache_and_uploads_the_adapter(tmp_path, s3_env, monkeypatch):
    client, bucket = s3_env.client(), s3_env.bucket
    cache = tmp_path / "cache"
    monkeypatch.setenv("QLORA_CACHE_DIR", str(cache))
    assert main(["build-tiny", "--architecture", "video_llama", "--task", TASK, "--out", str(tmp_path / "tiny")]) == 0
    model_files = _upload(client, bucket, tmp_path / "tiny", s3.model_prefix(MODEL_ID))
    data_files = _upload(client, bucket, make_dataset(tmp_path / "data", 8, size=32, frames=4),
                         s3.dataset_files_prefix(DATASET_ID))
    model_uri = s3.s3_uri(bucket, s3.model_prefix(MODEL_ID))
    data_uri = s3.s3_uri(bucket, s3.dataset_files_prefix(DATASET_ID))

    first_uri = s3.s3_uri(bucket, s3.adapter_prefix("job-remote-1"))
    assert _run(model_uri, data_uri, tmp_path / "out1", first_uri) == 0
    cached = _cache_state(cache)
    frames = [name for name in cached if name.startswith("frames/") and name.endswith(".npy")]
    assert len(frames) == 8  # each clip's decoded frames (training.data.frame_store), reused by the second run
    assert len([name for name in cached if not name.startswith("frames/")]) == model_files + data_files
    assert any(name.endswith(f"models/{MODEL_ID}/config.json") for name in cached)
    assert any(name.endswith("metadata.csv") for name in cached)
    uploaded = _keys(client, bucket, s3.adapter_prefix("job-remote-1"))
    assert {"adapter_model.safetensors", "adapter_config.json", "label_map.json"} <= uploaded
    assert not any(k.startswith("checkpoints/") or k == "train.log" for k in uploaded)
    local = (tmp_path / "out1" / "adapter_model.safetensors").read_bytes()
    remote = client.get_object(Bucket=bucket, Key=s3.adapter_prefix("job-remote-1") + "adapter_model.safetensors")
    assert remote["Body"].read() == local

    second_uri = s3.s3_uri(bucket, s3.adapter_prefix("job-remote-2"))
    assert _run(model_uri, data_uri, tmp_path / "out2", second_uri) == 0
    assert _cache_state(cache) == cached  # nothing downloaded again
    assert "adapter_model.safetensors" in _keys(client, bucket, s3.adapter_prefix("job-remote-2"))


@pytest.mark.stack
def test_an_empty_s3_prefix_is_one_clear_error(tmp_path, s3_env, monkeypatch, capsys):
    monkeypatch.setenv("QLORA_CACHE_DIR", str(tmp_path / "cache"))
    missing = s3.s3_uri(s3_env.bucket, s3.model_prefix("no-such-model"))
    assert _run(missing, str(tmp_path), tmp_path / "out", s3.s3_uri(s3_env.bucket, "x/")) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: --model {missing}: no objects under that prefix"]
