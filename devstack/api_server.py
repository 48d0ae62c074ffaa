"""The service's REST API (`api.main:app`) under uvicorn, configured by QLORA_* variables."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

import httpx

from devstack.ports import HOST
from devstack.processes import Process, ProcessService

REPO = Path(__file__).resolve().parents[1]


class APIServer(ProcessService):
    name = "api"
    what = "API"
    ready_timeout = 90

    def __init__(self, folder: Path, port: int, env: Mapping[str, str], app: str = "api.main:app"):
        self.folder = Path(folder)
        self.port = port
        self.url = f"http://{HOST}:{port}"
        argv = [sys.executable, "-m", "uvicorn", app, "--host", HOST, "--port", str(port), "--workers", "1",
                "--no-access-log"]
        full_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1",
                    "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        self.process = Process("api", argv, run_dir=self.folder, env=full_env, cwd=REPO)

    def healthy(self) -> bool:
        return httpx.get(f"{self.url}/v1/openapi.json", timeout=5).status_code == 200
