"""Checkpoints as the run goes: each is uploaded under `--checkpoint-uri` (real S3) and listed
in result.json with its time, the metrics so far and every file's size and SHA-256; the last
two are kept, locally and in S3 alike; by default one per epoch, after its evaluation."""

from __future__ import annotations

import hashlib
from datetime import datetime

import pytest

from training import s3
from training.cli import main
from training.result import RunStatus, read_result

TASK = "video_classification"


def _run(model, data, out, *extra):
    return main(["run", "--model", str(model), "--data", str(data), "--task", TASK, "--output", str(out),
                 "--batch-size", "4", "--frames", "4", "--mlflow-uri", "", *extra])


def _sha256(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


@pytest.mark.stack
def test_checkpoints_are_uploaded_and_the_last_two_kept(tmp_path, tiny_models, colour_dataset, s3_env):
    model = tiny_models("video_llama", TASK)
    uri = s3.s3_uri(s3_env.bucket, s3.checkpoints_prefix("job-ckpt"))
    out = tmp_path / "every2"
    # 24 training clips / batch 4 = 6 steps per epoch, 2 epochs: checkpoints at 2, 4, 6, 8, 10
    assert _run(model, colour_dataset, out, "--epochs", "2", "--checkpoint-every-steps", "2",
                "--checkpoint-uri", uri, "--output-uri", s3.s3_uri(s3_env.bucket, s3.adapter_prefix("job-ckpt"))) == 0
    result = read_result(out)
    assert result.status == RunStatus.COMPLETED
    assert [(c.step, c.name) for c in result.checkpoints] == [(8, "step-0000008"), (10, "step-0000010")]
    client = s3_env.client()
    keys = sorted(o["Key"] for o in s3.list_objects(client, s3_env.bucket, s3.checkpoints_prefix("job-ckpt")))
    assert keys == [f"trainings/job-ckpt/checkpoints/step-00000{n}/{f}" for n in ("08", "10")
                    for f in ("state.pt", "trainable.safetensors")]
    for checkpoint in result.checkpoints:
        assert checkpoint.uri == f"{uri}{checkpoint.name}/"
        assert datetime.fromisoformat(checkpoint.created_at).tzinfo is not None
        assert checkpoint.metrics["train_loss"] > 0
        assert [f.name for f in checkpoint.files] == ["state.pt", "trainable.safetensors"]
        for entry in checkpoint.files:  # what was uploaded is what the manifest describes
            body = client.get_object(Bucket=s3_env.bucket, Key=s3.split_s3_uri(checkpoint.uri)[1] + entry.name)[
                "Body"].read()
            assert (len(body), _sha256(body)) == (entry.size_bytes, entry.sha256)
    assert "eval_accuracy" in result.checkpoints[0].metrics  # after the first epoch's evaluation
    # the adapter's manifest matches the files in S3 too
    assert sorted(f.name for f in result.adapter_manifest) == result.adapter_files
    for entry in result.adapter_manifest:
        body = client.get_object(Bucket=s3_env.bucket, Key=s3.adapter_prefix("job-ckpt") + entry.name)["Body"].read()
        assert _sha256(body) == entry.sha256

    # default: once per epoch, not after the last one (the adapter is the result); nothing uploaded without a URI
    out = tmp_path / "per-epoch"
    assert _run(model, colour_dataset, out, "--epochs", "3") == 0
    result = read_result(out)
    assert [(c.step, c.epoch, c.uri) for c in result.checkpoints] == [(6, 1.0, None), (12, 2.0, None)]
    assert set(result.checkpoints[1].metrics) >= {"train_loss", "eval_loss", "eval_accuracy"}
    assert sorted(p.name for p in (out / "checkpoints").glob("step-*")) == ["step-0000006", "step-0000012"]
