"""Seeds the tiny dev models of the catalog into S3 (`models/{id}/`), once."""

from __future__ import annotations

import importlib.util
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


def _seeded(s3: S3Settings, prefix: str) -> bool:
    response = s3.client().list_objects_v2(Bucket=s3.bucket, Prefix=prefix + MARKER, MaxKeys=1)
    return response.get("KeyCount", 0) > 0


def _build_and_upload(s3: S3Settings, model, prefix: str, log: Path) -> str:
    with tempfile.TemporaryDirectory(prefix=f"tiny-{model.id}-") as out:
        argv = [sys.executable, "-m", "training", "build-tiny", "--architecture", model.base_architecture,
                "--task", model.model_type, "--out", out, "--catalog-id", model.id]
        with open(log, "a") as f:
            f.write(f"\n--- {' '.join(argv)}\n")
            f.flush()
            result = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            return f"{model.id}: build-tiny failed ({result.returncode}), see {log}"
        count = _upload_folder(s3, Path(out), prefix)
        return f"{model.id}: seeded {count} files to s3://{s3.bucket}/{prefix}"


def seed_tiny_models(s3: S3Settings, log: Path) -> list[str]:
    """Builds (`python -m training build-tiny`) and uploads every `tiny = true` catalog entry
    not yet in S3. Returns one line per model saying what happened."""
    from training import storage
    from training.catalog import load_catalog

    if importlib.util.find_spec("training.__main__") is None:  # the CLI another part provides
        return ["WARNING: tiny models not seeded: `python -m training` is not available yet"]
    todo, lines = [], []
    for model in load_catalog().models:
        if not model.tiny:
            continue
        prefix = storage.model_prefix(model.id)
        if _seeded(s3, prefix):
            lines.append(f"{model.id}: already in s3://{s3.bucket}/{prefix}")
        else:
            todo.append((model, prefix))
    with ThreadPoolExecutor(max_workers=2) as pool:  # each build imports torch: 2 at a time
        lines += pool.map(lambda item: _build_and_upload(s3, item[0], item[1], log), todo)
    return lines
