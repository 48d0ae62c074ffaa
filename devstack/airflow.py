"""Apache Airflow 3.3 as separate processes (api-server, scheduler, dag-processor) with the
simple auth manager and the repo's `dags/` and `plugins/`.

Executors: the LocalExecutor (the default: tasks run as children of the scheduler), or the
CeleryExecutor (`celery_broker_url` set; PostgreSQL metadata DB) with one Celery worker per
queue, `default` (validation, registration, bookkeeping) and `gpu` (prepare/train/evaluate), each
with a cache folder of its own as if it were another machine.

Every process gets the S3, MLflow and QLORA_* environment so that tasks see it."""

from __future__ import annotations

import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Mapping
from pathlib import Path

import httpx

from devstack.ports import HOST
from devstack.processes import Process, ServiceError, run_checked, wait_until

REPO = Path(__file__).resolve().parents[1]
USERNAME = "admin"
GPU_POOL = "gpu"
#: the Celery queues and a worker for each: Airflow's default queue, and the training queue
#: (`queue="gpu"` in dags/qlora_training.py)
CELERY_QUEUES = ("default", "gpu")
#: [scheduler] scheduler_idle_sleep_time: how long the scheduler sleeps after a loop that queued and
#: finished nothing, i.e. the wait between one task's end and the next one's `queued` (Airflow's
#: default 1 s). `python -m bench.airflow_handoff` (a chain of 6 tasks, LocalExecutor, 2 shared cores,
#: 2026-12-01): task end -> next task start 0.53-0.85 s at 1 s, 0.34-0.44 s at 0.5 s, 0.26-0.40 s at
#: 0.2-0.25 s; the scheduler's CPU while idle 1.1-1.3 s per minute at 1 s, 2.1-2.5 at 0.5, 3.7-6.2 at
#: 0.25-0.2 (PostgreSQL's 0.6 -> 1.0 -> 2.2). 0.5 s: 0.7-3.1 s less per job for ~1 CPU s a minute;
#: below it the idle cost grows faster than the gain (a faster loop also slows each task's start).
#: A value in the caller's environment wins (`AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME=1 make up`).
SCHEDULER_IDLE_SLEEP_S = "0.5"


class Airflow:
    name = "airflow"

    def __init__(self, folder: Path, port: int, *, password: str, jwt_secret: str, secret_key: str,
                 extra_env: Mapping[str, str] = (), database_url: str | None = None,
                 celery_broker_url: str | None = None,
                 dags_folder: Path = REPO / "dags", plugins_folder: Path = REPO / "plugins"):
        self.folder = Path(folder)
        self.port = port
        self.url = f"http://{HOST}:{port}"
        self.username = USERNAME
        self.password = password
        self.passwords_file = self.folder / "passwords.json"
        extra = dict(extra_env)
        self.gpu_slots = int(extra.get("QLORA_GPU_POOL_SLOTS") or os.environ.get("QLORA_GPU_POOL_SLOTS") or 1)
        self.executor = "CeleryExecutor" if celery_broker_url else "LocalExecutor"
        database_url = database_url or f"sqlite:///{self.folder / 'airflow.db'}"
        if celery_broker_url and database_url.startswith("sqlite"):
            raise ServiceError("the CeleryExecutor needs a PostgreSQL metadata database, not SQLite")
        airflow_env = {
            "AIRFLOW_HOME": str(self.folder),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(plugins_folder),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": self.executor,
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "10",
            "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME":  # the caller's wins (e.g. 1 to compare)
                os.environ.get("AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME") or SCHEDULER_IDLE_SLEEP_S,
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": database_url,
            "AIRFLOW__CORE__AUTH_MANAGER":
                "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USERNAME}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.passwords_file),
            "AIRFLOW__API__HOST": HOST,
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API__BASE_URL": self.url,
            "AIRFLOW__API__SECRET_KEY": secret_key,
            "AIRFLOW__API_AUTH__JWT_SECRET": jwt_secret,  # the same in every process (task tokens)
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.folder / "logs"),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
            "PYTHONUNBUFFERED": "1",
            "GIT_PYTHON_REFRESH": "quiet",
        }
        if celery_broker_url:
            airflow_env |= {"AIRFLOW__CELERY__BROKER_URL": celery_broker_url,
                            "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + database_url}
        self.env = {**os.environ, **extra, **airflow_env}
        airflow = [sys.executable, "-m", "airflow"]
        run = self.folder / "run"
        self.processes = [
            Process("airflow-api-server", [*airflow, "api-server", "--host", HOST, "--port", str(port), "--workers", "1"],
                    run_dir=run, env=self.env, cwd=self.folder),
            Process("airflow-scheduler", [*airflow, "scheduler", "--skip-serve-logs"],
                    run_dir=run, env=self.env, cwd=self.folder, stop_leftovers_on_start=False),
            Process("airflow-dag-processor", [*airflow, "dag-processor"], run_dir=run, env=self.env, cwd=self.folder),
        ]
        #: Celery workers by queue: each its own process tree and cache folder (QLORA_CACHE_DIR)
        self.workers: dict[str, Process] = {}
        for queue in CELERY_QUEUES if celery_broker_url else ():
            concurrency = self.gpu_slots if queue == GPU_POOL else 2
            env = {**self.env, "QLORA_CACHE_DIR": str(self.worker_cache_dir(queue))}
            self.workers[queue] = Process(
                f"airflow-worker-{queue}",
                [*airflow, "celery", "worker", "--queues", queue, "--concurrency", str(concurrency),
                 "--celery-hostname", f"{queue}@%h", "--skip-serve-logs", "--without-gossip", "--without-mingle"],
                run_dir=run, env=env, cwd=self.folder, stop_timeout=30, stop_leftovers_on_start=False)
        self.processes += self.workers.values()
        self._airflow = airflow

    def worker_cache_dir(self, queue: str) -> Path:
        return self.folder / "workers" / queue / "cache"

    @property
    def base_url(self) -> str:
        return self.url

    def cli(self, *args: str, timeout: float = 300) -> None:
        """Runs `airflow ARGS` to completion with this instance's configuration."""
        run_checked([*self._airflow, *args], env=self.env, log=self.folder / "run" / "airflow-cli.log",
                    timeout=timeout, cwd=self.folder)

    def start(self) -> None:
        """Migrates the metadata DB, creates the `gpu` pool and starts the processes."""
        if all(p.running() for p in self.processes):
            return
        if self.processes[0].running():  # the api-server runs: the DB is migrated; restart what died
            for process in self.processes:
                process.start()
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        self.passwords_file.write_text(json.dumps({USERNAME: self.password}))
        self.passwords_file.chmod(0o600)
        self.cli("db", "migrate")
        self.cli("pools", "set", GPU_POOL, str(self.gpu_slots), "Training tasks: one slot per GPU")
        for process in self.processes:
            process.start()

    def token(self) -> str:
        response = httpx.post(f"{self.url}/auth/token", json={"username": self.username, "password": self.password},
                              timeout=10)
        response.raise_for_status()
        return response.json()["access_token"]

    def health(self) -> dict:
        return httpx.get(f"{self.url}/api/v2/monitor/health", timeout=5).json()

    def healthy(self) -> bool:
        """Every process runs, the metadata DB, the scheduler and the dag-processor report healthy,
        and a token is issued."""
        if not all(process.running() for process in self.processes):
            return False  # a dead scheduler shows at once (Airflow's own report lags by its 30 s threshold)
        health = self.health()
        if not all((health.get(part) or {}).get("status") == "healthy"
                   for part in ("metadatabase", "scheduler", "dag_processor")):
            return False
        if not all(worker.running() for worker in self.workers.values()):
            return False
        return bool(self.token())

    def unhealthy_processes(self) -> list[tuple[Process, str]]:
        """The processes to restart, with why: those that died, and those alive but reported
        unhealthy by Airflow (a hung scheduler or dag-processor, an api-server that does not
        answer)."""
        found = [(p, "not running") for p in self.processes if not p.running()]
        dead = {p.name for p, _ in found}
        try:
            health = self.health()
        except Exception as exc:  # the api-server does not answer
            api = self.processes[0]
            if api.name not in dead:
                found.append((api, f"its API does not answer ({type(exc).__name__})"))
            return found
        for part, name in (("scheduler", "airflow-scheduler"), ("dag_processor", "airflow-dag-processor")):
            status = (health.get(part) or {}).get("status")
            if status != "healthy" and name not in dead:
                process = next(p for p in self.processes if p.name == name)
                found.append((process, f"Airflow reports it {status or 'not running'}"))
        return found

    def wait_ready(self, timeout: float = 180) -> float:
        return wait_until(self.healthy, timeout=timeout, what="Airflow", processes=self.processes, interval=0.5)

    def stop(self) -> bool:
        with ThreadPoolExecutor(len(self.processes)) as pool:  # each takes up to ~5 s to exit
            return any(list(pool.map(Process.stop, self.processes)))

    def pids(self) -> list[int]:
        return [p for proc in self.processes if (p := proc.pid())]
