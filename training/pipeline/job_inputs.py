"""A training job's inputs: the dataset's validation report (read by `validate_inputs`), and
the model and dataset in the worker's cache (filled by `prepare`, kept under its size limit).

S3 errors: transient ones propagate unchanged (the task retries), others are `JobFailed`.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training import cache, s3
from training.pipeline import worker_paths
from training.pipeline.errors import JobFailed, s3_errors
from training.settings import get_settings

log = logging.getLogger(__name__)


def read_dataset_report(dataset_id: str) -> dict[str, Any]:
    """The validation report of a dataset that passed validation; `JobFailed` when it has none
    (never uploaded or validated), it is unreadable, or it says the dataset is invalid."""
    bucket, key = get_settings().s3_bucket, s3.dataset_report_key(dataset_id)
    client = s3.client()
    with s3_errors("reading the dataset's validation report"):
        try:
            body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        except Exception as exc:
            if s3.is_missing(exc):
                raise JobFailed(f"dataset {dataset_id} has no validation report ({s3.s3_uri(bucket, key)}): "
                                "it does not exist or was never validated") from exc
            raise
    try:
        report = json.loads(body)
    except ValueError as exc:
        raise JobFailed(f"the validation report of dataset {dataset_id} is not JSON") from exc
    if not isinstance(report, dict):
        raise JobFailed(f"the validation report of dataset {dataset_id} is not a JSON object")
    if not report.get("valid"):
        errors = "; ".join((report.get("errors") or [])[:3]) or "no details"
        raise JobFailed(f"dataset {dataset_id} is not valid: {errors}")
    return report


@dataclass(frozen=True)
class CachedInputs:
    model_dir: Path
    data_dir: Path
    #: files downloaded now (0: all were in the cache already)
    model_downloads: int
    data_downloads: int
    #: cache entries deleted to make room, with their sizes in bytes
    evicted: list[tuple[Path, int]]


def _mirror(client, prefix: str, dest: Path, what: str) -> int:
    bucket = get_settings().s3_bucket
    with s3_errors(f"downloading {what}"):
        found, downloaded = s3.download_prefix(client, bucket, prefix, dest)
    if not found:
        raise JobFailed(f"{what} not found: nothing under {s3.s3_uri(bucket, prefix)}")
    return downloaded


def fill_worker_cache(model_id: str, dataset_id: str) -> CachedInputs:
    """Puts the job's model and dataset into this worker's cache (only files missing or
    changed are downloaded), first evicting the least recently used entries beyond
    `QLORA_CACHE_MAX_GB` (never this job's)."""
    settings = get_settings()
    model_entry, data_entry = worker_paths.cache_entries(model_id, dataset_id)
    for entry in (model_entry, data_entry):
        cache.touch(entry)
    evicted = cache.evict(settings.cache_dir, settings.cache_max_bytes, keep=(model_entry, data_entry))
    for entry, size in evicted:
        log.info("evicted %s from the worker cache (%.1f MB) to stay under QLORA_CACHE_MAX_GB", entry, size / 1e6)
    client = s3.client()
    files = data_entry / "files"
    # the model, the dataset and its validation report (beside `files/`, as in the bucket: the
    # engine trusts the clips it vouches for) at once; files already here and unchanged are kept
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(3, thread_name_prefix="prepare") as pool:
        model = pool.submit(_mirror, client, s3.model_prefix(model_id), model_entry, f"model {model_id}")
        data = pool.submit(_mirror, client, s3.dataset_files_prefix(dataset_id), files, f"dataset {dataset_id}")
        report = pool.submit(_fetch_report, client, dataset_id, s3.dataset_report_beside(files))
        model_downloads, data_downloads = model.result(), data.result()
        report.result()
    return CachedInputs(model_entry, files, model_downloads, data_downloads, evicted)


def _fetch_report(client, dataset_id: str, target: Path) -> None:
    """The dataset's validation report into the cache (a missing one is left missing: the
    engine then checks clips as it reads them; `validate_inputs` already required one)."""
    bucket, key = get_settings().s3_bucket, s3.dataset_report_key(dataset_id)
    with s3_errors("downloading the dataset's validation report"):
        try:
            body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        except Exception as exc:
            if s3.is_missing(exc):
                log.warning("dataset %s has no validation report at %s", dataset_id, s3.s3_uri(bucket, key))
                return
            raise
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.part")
    partial.write_bytes(body)
    os.replace(partial, target)
