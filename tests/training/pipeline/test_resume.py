"""Restoring a job's last uploaded checkpoint before the engine starts (`training.pipeline.resume`),
against the real S3 server: the newest intact one is downloaded and marked for `--resume`, a torn
one is passed over for the one before, a first run finds nothing."""

from __future__ import annotations

import hashlib
import json
import uuid

import pytest

from training import s3 as s3_io
from training.pipeline import resume
from training.result import EngineResult, RunStatus, read_result

FILES = {"state.pt": b"optimizer-state" * 40, "trainable.safetensors": b"lora-weights" * 100}


def _upload(client, bucket, job_id: str, step: int, files: dict[str, bytes], recorded: dict[str, bytes]) -> dict:
    name = f"step-{step:07d}"
    prefix = f"{s3_io.checkpoints_prefix(job_id)}{name}/"
    for file_name, body in files.items():
        client.put_object(Bucket=bucket, Key=prefix + file_name, Body=body)
    return {"step": step, "epoch": step / 4, "name": name, "uri": s3_io.s3_uri(bucket, prefix),
            "files": [{"name": n, "size_bytes": len(b), "sha256": hashlib.sha256(b).hexdigest()}
                      for n, b in sorted(recorded.items())]}


def _publish(client, bucket, job_id: str, checkpoints: list[dict]) -> None:
    body = {"status": "failed", "mlflow_run_id": "r" * 32, "mlflow_experiment_id": "3", "step": 9,
            "total_steps": 12, "checkpoints": checkpoints, "exited": True}
    client.put_object(Bucket=bucket, Key=s3_io.training_result_key(job_id), Body=json.dumps(body).encode())


@pytest.mark.stack
def test_the_newest_intact_checkpoint_is_restored_for_resume(s3_env, tmp_path):
    client, bucket = s3_io.client(), s3_env.bucket
    job_id = f"job-{uuid.uuid4().hex[:8]}"
    assert resume.restore_checkpoint(job_id, tmp_path / "first") is None  # a first run: nothing published

    good = _upload(client, bucket, job_id, 4, FILES, FILES)
    torn = _upload(client, bucket, job_id, 8, {**FILES, "state.pt": b"cut short"}, FILES)  # differs from its record
    _publish(client, bucket, job_id, [good, torn])
    output = tmp_path / "output"
    output.mkdir()
    restored = resume.restore_checkpoint(job_id, output)
    assert restored is not None and restored.step == 4
    folder = output / "checkpoints" / "step-0000004"
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == FILES
    assert (output / "checkpoints" / "latest").read_text().strip() == "step-0000004"
    assert not (output / "checkpoints" / "step-0000008").exists()  # the torn one is not left behind
    manifest = read_result(output)  # what the engine's --resume keeps listing, the same MLflow run
    assert (manifest.status, manifest.mlflow_run_id, manifest.step, [c.name for c in manifest.checkpoints]) == (
        RunStatus.RUNNING, "r" * 32, 4, ["step-0000004"])

    # the engine's own resume finds it where it looks
    from training.trainer import latest_checkpoint

    assert latest_checkpoint(output) == folder

    # none intact: start from step 0
    client.delete_object(Bucket=bucket, Key=f"{s3_io.checkpoints_prefix(job_id)}step-0000004/state.pt")
    assert resume.restore_checkpoint(job_id, tmp_path / "again") is None
