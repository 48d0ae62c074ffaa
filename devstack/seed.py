"""Seeds the tiny dev models of the catalog into S3 (`models/{id}/`): once, and again only when
the code that builds them has changed since (their `qlora_model.json` records its build id)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from devstack.seaweedfs import S3Settings

MARKER = "config.json"  # uploaded last: its presence means the model is complete


def _upload_folder(s3: S3Settings, folder: Path, prefix: str) -> int:
    from training.s3 import upload_files

    files = [p for p in folder.rglob("*") if p.is_file()]
    return len(upload_files(s3.client(), s3.bucket, folder, files, prefix, last=MARKER))


def _seeded_build(s3: S3Settings, prefix: str) -> str | None:
    """The build id of the complete model under `prefix` ("" when it records none); None when
    there is no complete model there."""
    from training import s3 as s3_io
    from training.model_info import MODEL_INFO_FILE

    client = s3.client()
    response = client.list_objects_v2(Bucket=s3.bucket, Prefix=prefix + MARKER, MaxKeys=1)
    if response.get("KeyCount", 0) == 0:
        return None
    try:
        body = client.get_object(Bucket=s3.bucket, Key=prefix + MODEL_INFO_FILE)["Body"].read()
    except Exception as exc:
        if not s3_io.is_missing(exc):
            raise
        return ""
    try:
        info = json.loads(body)
    except ValueError:
        return ""
    return str(info.get("build_id") or "") if isinstance(info, dict) else ""


def _build_and_upload(s3: S3Settings, model, prefix: str, stale: bool, log: Path) -> str:
    with tempfile.TemporaryDirectory(prefix=f"tiny-{model.id}-") as out:
        argv = [sys.executable, "-m", "training", "build-tiny", "--architecture", model.base_architecture,
                "--task", model.model_type, "--out", out, "--catalog-id", model.id]
        with open(log, "a") as f:
            f.write(f"\n--- {' '.join(argv)}\n")
            f.flush()
            result = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            return f"{model.id}: build-tiny failed ({result.returncode}), see {log}"
        if stale:  # files of the old build that the new one lacks must not linger
            from training.s3 import delete_prefix

            delete_prefix(s3.client(), s3.bucket, prefix)
        count = _upload_folder(s3, Path(out), prefix)
        verb = "rebuilt (the code that builds it changed) and seeded" if stale else "seeded"
        return f"{model.id}: {verb} {count} files to s3://{s3.bucket}/{prefix}"


def seed_tiny_models(s3: S3Settings, log: Path) -> list[str]:
    """Builds (`python -m training build-tiny`) and uploads every `tiny = true` catalog entry
    not yet in S3, or built there by other code than today's. Returns one line per model
    saying what happened."""
    from training import s3 as s3_io
    from training.catalog import load_catalog
    from training.model_info import tiny_build_id

    if importlib.util.find_spec("training.__main__") is None:  # the CLI another part provides
        return ["WARNING: tiny models not seeded: `python -m training` is not available yet"]
    todo, lines, current = [], [], tiny_build_id()
    for model in load_catalog().models:
        if not model.tiny:
            continue
        prefix = s3_io.model_prefix(model.id)
        seeded = _seeded_build(s3, prefix)
        if seeded == current:
            lines.append(f"{model.id}: already in s3://{s3.bucket}/{prefix}")
        else:
            todo.append((model, prefix, seeded is not None))  # (model, prefix, stale)
    with ThreadPoolExecutor(max_workers=2) as pool:  # each build imports torch: 2 at a time
        lines += pool.map(lambda job: _build_and_upload(s3, *job, log=log), todo)
    return lines
