"""Continuing a job's training from its last uploaded checkpoint (the `train` task).

The engine uploads each checkpoint to `trainings/{job_id}/checkpoints/step-N/` and the task
publishes its manifest to `trainings/{job_id}/result.json` (`training.s3`). Before the engine
starts, `restore_checkpoint` looks at that manifest: when it lists an uploaded checkpoint, its
files are downloaded into the fresh output folder (each checked against the size and SHA-256 the
engine recorded), the engine's `checkpoints/latest` marker and a `result.json` naming it are
written, and the engine is started with `--resume`. It then reloads the trainable weights,
optimizer, scheduler, random states and step, continues the same MLflow run (its id is in the
checkpoint) and replays the same seeded batch order, so the steps before the checkpoint are not
redone and the loss curve continues.

Two callers, one path: Airflow retrying `train` after the engine died (SIGKILL, a lost worker),
and the new run of `POST /v1/trainings/{id}/resume`. A job's first run finds no manifest and
starts from step 0.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from training import s3
from training.result import RESULT_FILE, Checkpoint, EngineResult, RunStatus, write_result
from training.settings import get_settings

log = logging.getLogger(__name__)

#: the engine's checkpoint folder and marker inside its output folder (training.trainer)
CHECKPOINTS = "checkpoints"
LATEST = "latest"


def published_result(job_id: str) -> EngineResult | None:
    """The manifest the train task last published for the job; None when there is none (a first
    run) or it cannot be read as one. S3 errors other than "missing" propagate (the task retries)."""
    try:
        body = s3.client().get_object(Bucket=get_settings().s3_bucket, Key=s3.training_result_key(job_id))["Body"].read()
    except Exception as exc:
        if s3.is_missing(exc):
            return None
        raise
    try:
        return EngineResult.from_dict(json.loads(body))
    except (ValueError, TypeError) as exc:
        log.warning("the published %s of job %s is not a manifest (%s): starting from step 0", RESULT_FILE, job_id, exc)
        return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _download(checkpoint: Checkpoint, folder: Path) -> bool:
    """The checkpoint's recorded files into `folder`; False when one is missing or differs."""
    bucket, prefix = s3.split_s3_uri(checkpoint.uri or "")
    prefix = prefix.rstrip("/") + "/"
    client = s3.client()
    folder.mkdir(parents=True, exist_ok=True)
    for entry in checkpoint.files:
        target = folder / entry.name
        try:
            client.download_file(bucket, prefix + entry.name, str(target))
        except Exception as exc:
            if s3.is_missing(exc):
                log.warning("checkpoint %s: %s is missing in S3", checkpoint.name, entry.name)
                return False
            raise
        if target.stat().st_size != entry.size_bytes or _sha256(target) != entry.sha256:
            log.warning("checkpoint %s: %s differs from what the engine recorded", checkpoint.name, entry.name)
            return False
    return bool(checkpoint.files)


def restore_checkpoint(job_id: str, output: Path) -> Checkpoint | None:
    """Puts the job's newest intact uploaded checkpoint into the engine's (empty) `output`
    folder, ready for `--resume`; returns it, or None when there is none (start from step 0)."""
    published = published_result(job_id)
    if published is None:
        return None
    output = Path(output)
    for checkpoint in sorted((c for c in published.checkpoints if c.uri), key=lambda c: c.step, reverse=True):
        folder = output / CHECKPOINTS / checkpoint.name
        if _download(checkpoint, folder):
            (output / CHECKPOINTS / LATEST).write_text(checkpoint.name + "\n")
            # the engine keeps listing it (and the MLflow run) in its manifest
            write_result(output, EngineResult(status=RunStatus.RUNNING, mlflow_run_id=published.mlflow_run_id,
                                              mlflow_experiment_id=published.mlflow_experiment_id,
                                              step=checkpoint.step, total_steps=published.total_steps,
                                              params=published.params, checkpoints=[checkpoint]))
            log.info("resuming job %s from checkpoint %s (step %d, epoch %s) of %s", job_id, checkpoint.name,
                     checkpoint.step, checkpoint.epoch, checkpoint.uri)
            return checkpoint
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
    log.info("job %s: no intact uploaded checkpoint, starting from step 0", job_id)
    return None
