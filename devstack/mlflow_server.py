"""The MLflow tracking server: one worker, no job runner, SQLite backend store, artifacts
proxied to S3 (`s3://BUCKET/mlflow`), so clients need no S3 credentials of their own."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import httpx

from devstack.ports import HOST
from devstack.processes import Process, wait_until
from devstack.seaweedfs import S3Settings


class MLflowServer:
    name = "mlflow"

    def __init__(self, folder: Path, port: int, s3: S3Settings, backend_store_uri: str | None = None):
        self.folder = Path(folder)
        self.port = port
        self.url = f"http://{HOST}:{port}"
        backend = backend_store_uri or f"sqlite:///{self.folder / 'mlflow.db'}"
        argv = [sys.executable, "-m", "mlflow", "server", "--host", HOST, "--port", str(port), "--workers", "1",
                "--backend-store-uri", backend, "--artifacts-destination", f"s3://{s3.bucket}/mlflow"]
        env = {**os.environ, **s3.env(), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
               "GIT_PYTHON_REFRESH": "quiet", "PYTHONUNBUFFERED": "1"}
        env.pop("MLFLOW_TRACKING_URI", None)
        self.process = Process("mlflow", argv, run_dir=self.folder, env=env, cwd=self.folder)

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.process.start()

    def healthy(self) -> bool:
        return httpx.get(f"{self.url}/health", timeout=3).status_code == 200

    def wait_ready(self, timeout: float = 90) -> float:
        return wait_until(self.healthy, timeout=timeout, what="MLflow", processes=[self.process])

    def stop(self) -> bool:
        return self.process.stop()

    def pids(self) -> list[int]:
        return [p] if (p := self.process.pid()) else []
