"""The MLflow tracking server: one worker, no job runner, SQLite backend store, artifacts
proxied to S3 (`s3://BUCKET/mlflow`) so that clients need no S3 credentials of their own, or
kept in a local folder when no S3 is given (benchmarks)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import httpx

from devstack.ports import HOST
from devstack.processes import Process, ProcessService
from devstack.seaweedfs import S3Settings


class MLflowServer(ProcessService):
    name = "mlflow"
    what = "MLflow"
    ready_timeout = 90

    def __init__(self, folder: Path, port: int, s3: S3Settings | None, backend_store_uri: str | None = None):
        self.folder = Path(folder)
        self.port = port
        self.url = f"http://{HOST}:{port}"
        backend = backend_store_uri or f"sqlite:///{self.folder / 'mlflow.db'}"
        artifacts = f"s3://{s3.bucket}/mlflow" if s3 else (self.folder / "artifacts").resolve().as_uri()
        argv = [sys.executable, "-m", "mlflow", "server", "--host", HOST, "--port", str(port), "--workers", "1",
                "--backend-store-uri", backend, "--artifacts-destination", artifacts]
        env = {**os.environ, **(s3.env() if s3 else {}), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
               "GIT_PYTHON_REFRESH": "quiet", "PYTHONUNBUFFERED": "1"}
        env.pop("MLFLOW_TRACKING_URI", None)
        self.process = Process("mlflow", argv, run_dir=self.folder, env=env, cwd=self.folder)

    def healthy(self) -> bool:
        return httpx.get(f"{self.url}/health", timeout=3).status_code == 200
