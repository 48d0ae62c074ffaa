"""A job's folders on the worker that runs its tasks, all under the cache folder
(`QLORA_CACHE_DIR`):

    models/{model_id}/                    the base model (a cache entry, `training.cache`)
    datasets/{dataset_id}/files/          the dataset (a cache entry)
    trainings/{job_id}/output/            the engine's output folder (adapter, checkpoints,
                                          result.json, train.log)
    trainings/{job_id}/evaluation/        the held-out evaluation's metrics.json
    s3/{bucket}/trainings/{job_id}/...    the adapter as `evaluate` reads it from S3
                                          (`training.s3.local_folder`)

The job's folders are discarded once of no more use here: `train` discards its output once the
adapter is in S3 (so `evaluate`, on whichever gpu worker, reads it from there and a worker that
only trained keeps nothing), `evaluate` its copy once measured, and both when the job ended
stopped/failed (the API has no resume). Without that every job would leave
hundreds of MB on the GPU host's disk. Models and datasets stay (the cache evicts them).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from training import s3
from training.settings import get_settings

log = logging.getLogger(__name__)


def cache_root() -> Path:
    return get_settings().cache_dir


def job_folder(job_id: str) -> Path:
    return cache_root() / s3.TRAININGS / job_id


def output_dir(job_id: str) -> Path:
    """The engine's output folder of the job's training."""
    return job_folder(job_id) / "output"


def evaluation_dir(job_id: str) -> Path:
    return job_folder(job_id) / "evaluation"


def cache_entries(model_id: str, dataset_id: str) -> tuple[Path, Path]:
    """The job's model and dataset entries in this worker's cache (see `training.cache`)."""
    return cache_root() / s3.MODELS / model_id, cache_root() / s3.DATASETS / dataset_id


def fresh_folder(folder: Path) -> Path:
    """`folder`, emptied (or created)."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def engine_input(local: str | Path | None, uri: str, marker: str | None = None) -> str:
    """What to give the engine: the local folder when this worker has it (it prepared or
    trained the job; with `marker`, only when that file is in it), else the `s3://` URI (the
    engine reads S3 itself, through its cache)."""
    if local and Path(local).is_dir() and (marker is None or (Path(local) / marker).is_file()):
        return str(local)
    return uri


def discard_job(job_id: str) -> None:
    """Deletes the job's folders on this worker (output, evaluation, its S3 copies)."""
    bucket = get_settings().s3_bucket
    for folder in (job_folder(job_id), s3.cached_copy(s3.s3_uri(bucket, s3.training_prefix(job_id)))):
        if folder.exists():
            shutil.rmtree(folder, ignore_errors=True)
            log.info("removed the job's local folder %s", folder)
