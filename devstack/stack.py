"""The whole local stack of `make up`: SeaweedFS (S3), MLflow, Airflow and the API on fixed
loopback ports, with state, secrets, pid files and logs under `.stack/`.

`QLORA_STACK_EXECUTOR=celery` runs Airflow as it runs past one machine: the CeleryExecutor with
Redis as broker, one worker for the `default` queue and one for the `gpu` queue (each with a
cache folder of its own), and PostgreSQL for Airflow's metadata and the service database."""

from __future__ import annotations

import os
import random
import shlex
import threading
from concurrent.futures import ThreadPoolExecutor
import time
from dataclasses import dataclass
from pathlib import Path

from devstack.airflow import Airflow
from devstack.api_server import APIServer
from devstack.mlflow_server import API_ACCOUNT, WORKER_ACCOUNT, MlflowAuth, MLflowServer
from devstack.ports import HOST, port_open
from devstack.postgres import Postgres
from devstack.processes import ServiceError
from devstack.redis_server import RedisServer
from devstack.secrets_file import load_or_create
from devstack.seaweedfs import SeaweedFS
from devstack.seed import seed_tiny_models

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Ports:
    api: int = 8000
    airflow: int = 8080
    mlflow: int = 5000
    s3: int = 9000
    s3_master: int = 9333
    s3_volume: int = 9340
    s3_filer: int = 8888
    s3_admin: int = 23646
    postgres: int = 5432  # QLORA_STACK_EXECUTOR=celery only
    redis: int = 6379  # QLORA_STACK_EXECUTOR=celery only

    @classmethod
    def shifted(cls, offset: int) -> Ports:
        """Every port + `offset` (QLORA_STACK_PORT_OFFSET: a second stack beside the first)."""
        return cls(**{k: v + offset for k, v in cls().__dict__.items()})

    @classmethod
    def free_offset(cls, low: int = 20000, high: int = 30000) -> int:
        """A random offset in [low, high) whose every port (and SeaweedFS's gRPC port, +10000)
        is free now: a private stack beside any other (tests, benchmarks)."""
        for _ in range(50):
            offset = random.randrange(low, high)
            if not any(port_open(p) or port_open(p + 10000) for p in cls.shifted(offset).__dict__.values()):
                return offset
        raise ServiceError(f"no free port range between +{low} and +{high}")


EXECUTORS = ("local", "celery")
EXECUTOR_FILE = "executor"  # in the stack folder: the executor of the last `up`


class Stack:
    def __init__(self, folder: Path | None = None, ports: Ports | None = None, executor: str | None = None):
        self.folder = Path(folder or os.environ.get("QLORA_STACK_DIR") or REPO / ".stack").resolve()
        self.ports = ports or Ports.shifted(int(os.environ.get("QLORA_STACK_PORT_OFFSET", "0")))
        #: as asked, else as the stack in this folder was last started (so a plain `make down`
        #: or `make status` sees a celery stack whole), else local
        self.executor = executor or os.environ.get("QLORA_STACK_EXECUTOR") or self.recorded_executor() or "local"
        if self.executor not in EXECUTORS:
            raise ServiceError(f"QLORA_STACK_EXECUTOR={self.executor!r}: use one of {', '.join(EXECUTORS)}")
        self.secrets = load_or_create(self.folder / "secrets.env")
        self.bucket = os.environ.get("QLORA_S3_BUCKET", "qlora")
        p, s = self.ports, self.secrets
        self.s3 = SeaweedFS(self.folder / "seaweedfs", s3_port=p.s3, master_port=p.s3_master, volume_port=p.s3_volume,
                            filer_port=p.s3_filer, admin_port=p.s3_admin, access_key=s["S3_ACCESS_KEY"],
                            secret_key=s["S3_SECRET_KEY"], bucket=self.bucket)
        self.mlflow_auth = MlflowAuth.from_secrets(s)
        self.mlflow = MLflowServer(self.folder / "mlflow", p.mlflow, self.s3.settings, auth=self.mlflow_auth)
        #: the celery mode's own servers (started first, stopped last)
        self.postgres = self.redis = None
        if self.executor == "celery":
            self.postgres = Postgres(self.folder / "postgres", p.postgres)
            self.redis = RedisServer(self.folder / "redis", p.redis)
        self.env = self._client_env()
        task_env = {k: v for k, v in self.env.items() if k not in ("QLORA_JWT_SECRET", "QLORA_WEBHOOK_SECRET_KEY",
                                                                "QLORA_AIRFLOW_PASSWORD")}
        task_env |= self.mlflow_auth.client_env(WORKER_ACCOUNT)  # the workers' own MLflow account
        airflow_db = os.environ.get("QLORA_AIRFLOW_DATABASE_URL") or (self.postgres and self.postgres.url("airflow"))
        self.airflow = Airflow(self.folder / "airflow", p.airflow, password=s["AIRFLOW_ADMIN_PASSWORD"],
                               jwt_secret=s["AIRFLOW_JWT_SECRET"], secret_key=s["AIRFLOW_API_SECRET_KEY"],
                               extra_env=task_env, database_url=airflow_db,
                               celery_broker_url=self.redis and self.redis.url)
        # webhooks to receivers on this machine are allowed on the local stack (off by default)
        self.api = APIServer(self.folder / "api", p.api, {
            **self.env, **self.mlflow_auth.client_env(API_ACCOUNT),
            "QLORA_WEBHOOK_ALLOW_PRIVATE": os.environ.get("QLORA_WEBHOOK_ALLOW_PRIVATE", "true")})
        self.celery_servers = [s for s in (self.postgres, self.redis) if s is not None]
        self.services = [*self.celery_servers, self.s3, self.mlflow, self.airflow, self.api]

    def _client_env(self) -> dict[str, str]:
        """Every variable a shell (or the API, or a task) needs to talk to this stack."""
        return {
            **self.s3.settings.env(),
            "MLFLOW_TRACKING_URI": self.mlflow.url,
            **self.mlflow_auth.client_env(),  # a shell's (an operator's): the MLflow admin
            "QLORA_ENV": os.environ.get("QLORA_ENV", "development"),
            "QLORA_DATABASE_URL": os.environ.get("QLORA_DATABASE_URL") or (
                self.postgres.url("qlora") if self.postgres else f"sqlite:///{self.folder / 'api.db'}"),
            "QLORA_JWT_SECRET": self.secrets["QLORA_JWT_SECRET"],
            "QLORA_WEBHOOK_SECRET_KEY": self.secrets["QLORA_WEBHOOK_SECRET_KEY"],
            "QLORA_AIRFLOW_URL": f"http://{HOST}:{self.ports.airflow}",
            "QLORA_AIRFLOW_USERNAME": "admin",
            "QLORA_AIRFLOW_PASSWORD": self.secrets["AIRFLOW_ADMIN_PASSWORD"],
            "QLORA_API_URL": f"http://{HOST}:{self.ports.api}",
            "QLORA_CACHE_DIR": os.environ.get("QLORA_CACHE_DIR", str(REPO / ".cache")),
            "QLORA_GPU_POOL_SLOTS": os.environ.get("QLORA_GPU_POOL_SLOTS", "1"),
        }

    def write_env_file(self) -> Path:
        path = self.folder / "stack.env"
        path.write_text("# `source .stack/stack.env` to talk to the local stack (written by `make up`)\n"
                        + "".join(f"export {k}={shlex.quote(v)}\n" for k, v in self.env.items()))
        path.chmod(0o600)
        return path

    # -- lifecycle -------------------------------------------------------------------------
    @staticmethod
    def _healthy(service) -> bool:
        try:
            return bool(service.pids()) and service.healthy()
        except Exception:
            return False

    def _check_ports_free(self) -> None:
        for service in self.services:
            if not service.pids() and port_open(service.port):
                raise ServiceError(f"port {service.port} (for {service.name}) is taken by another program; "
                                   "stop it or set QLORA_STACK_PORT_OFFSET")

    def recorded_executor(self) -> str | None:
        try:
            return (self.folder / EXECUTOR_FILE).read_text().strip() or None
        except OSError:
            return None

    def _record_executor(self) -> None:
        """Refuses to start one executor's stack while the other's runs in this folder."""
        recorded = self.recorded_executor()
        if recorded and recorded != self.executor:
            running = [s.name for s in Stack(self.folder, self.ports, executor=recorded).services if s.pids()]
            if running:
                raise ServiceError(f"the stack in {self.folder} runs with the {recorded} executor "
                                   f"({', '.join(running)}): `make down` first")
        (self.folder / EXECUTOR_FILE).write_text(self.executor + "\n")

    def up(self, log=print, seed: bool = True) -> bool:
        """Starts what is not running and waits until every service answers. Returns False if
        everything was already running."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self._record_executor()
        self.write_env_file()
        if all(self._healthy(s) for s in self.services):
            if seed:
                self._seed(log)
            self._start_warm_engines()
            return False
        self._stop_unhealthy(log)
        self._stop_leftovers(log)
        self._check_ports_free()
        started = time.monotonic()
        for server in self.celery_servers:
            server.start()
        if self.postgres:
            self.redis.wait_ready()
            for database in ("airflow", "qlora"):
                self.postgres.create_database(database, exist_ok=True)
            log(f"  postgres, redis ready in {time.monotonic() - started:5.1f} s")
        self.s3.start()
        self.mlflow.start()
        failure: list[BaseException] = []

        def start_airflow() -> None:  # db migrate + pool: runs while S3 and MLflow boot
            try:
                self.airflow.start()
            except BaseException as exc:
                failure.append(exc)

        airflow_thread = threading.Thread(target=start_airflow)
        airflow_thread.start()
        try:
            log(f"  s3       ready in {self.s3.wait_ready():5.1f} s")
            self.api.start()
            log(f"  mlflow   ready in {self.mlflow.wait_ready():5.1f} s")
            airflow_thread.join()
            if failure:
                raise failure[0]
            log(f"  api      ready in {self.api.wait_ready():5.1f} s")
            log(f"  airflow  ready in {self.airflow.wait_ready():5.1f} s")
        finally:
            airflow_thread.join()
        log(f"all services answer ({time.monotonic() - started:.1f} s)")
        if seed:
            self._seed(log)
        self._start_warm_engines()
        return True

    def _stop_unhealthy(self, log, grace_s: float = 15.0) -> None:
        """Stops what runs but is unhealthy, so that the start below restarts it: the dead or
        hung processes of Airflow (the rest of it keeps running), and any other service that
        stays unhealthy for `grace_s` (it may still be starting)."""
        for service in self.services:
            if not service.pids() or self._healthy(service):
                continue
            if service is self.airflow:
                for process, why in self.airflow.unhealthy_processes():
                    log(f"  restarting {process.name}: {why}")
                    process.stop()
                continue
            deadline = time.monotonic() + grace_s
            while time.monotonic() < deadline and not self._healthy(service):
                time.sleep(0.5)
            if not self._healthy(service):
                log(f"  restarting {service.name}: it runs but does not answer as healthy")
                service.stop()

    def _warm_engine_workers(self) -> list[tuple[Path, dict[str, str]]]:
        """(cache folder, environment) of each worker that runs training engines: the scheduler's
        task processes (LocalExecutor), or the `gpu` queue's Celery worker."""
        if self.airflow.workers:
            return [(self.airflow.worker_cache_dir(q), w.env) for q, w in self.airflow.workers.items() if q == "gpu"]
        return [(Path(self.airflow.env["QLORA_CACHE_DIR"]), self.airflow.env)]

    def _start_warm_engines(self) -> None:
        """Starts each worker's warm engine server in the background (it imports torch & co for
        ~7 s), so that even the first job's engine is forked, not started cold
        (`training.pipeline.warm_engine`; the train tasks start it themselves otherwise)."""
        from training.pipeline import warm_engine

        for cache_dir, env in self._warm_engine_workers():
            warm_engine.ensure_started(cache_dir, env=env)

    def _stop_leftovers(self, log) -> None:
        """Stops what the dead main process of a service left running (e.g. MLflow's worker
        after its `mlflow server` was killed alone): it would hold the port, answer as if all
        were well, and keep the restart from binding."""
        for service in self.services:
            processes = getattr(service, "processes", None) or [getattr(service, "process", None)]
            for process in processes:
                if process is None or not process.stop_leftovers_on_start:
                    continue
                if leftovers := process.stop_leftovers():
                    log(f"  restarting {process.name}: its main process died; stopped the "
                        f"{len(leftovers)} process(es) it left running ({', '.join(map(str, leftovers))})")

    def _seed(self, log) -> None:
        for line in seed_tiny_models(self.s3.settings, self.folder / "seed.log"):
            log(f"  {line}")

    def down(self, log=print) -> None:
        stopped = {"api": self.api.stop()}  # first the API, so nothing triggers new runs; then the rest together
        for group in ((self.airflow, self.mlflow, self.s3), self.celery_servers):  # Airflow needs its DB to stop
            if group:
                with ThreadPoolExecutor(len(group)) as pool:
                    stopped.update(zip((r.name for r in group), pool.map(lambda r: r.stop(), group)))
        names = [name for name, was_running in stopped.items() if was_running]
        # the warm engine servers the train tasks started: each leaves once its engines ended
        from training.pipeline import warm_engine

        caches = {Path(self.env["QLORA_CACHE_DIR"]), *(cache for cache, _ in self._warm_engine_workers())}
        if sum(warm_engine.release(cache) for cache in caches):
            names.append("warm engine")
        log(f"stopped: {', '.join(names)}" if names else "nothing was running")

    def status(self) -> list[tuple[str, list[int], int, bool]]:
        return [(s.name, s.pids(), s.port, self._healthy(s)) for s in self.services]

    def summary(self) -> str:
        e = self.env
        return "\n".join([
            f"API          {e['QLORA_API_URL']}/v1   (docs: {e['QLORA_API_URL']}/v1/docs)",
            f"Airflow UI   {e['QLORA_AIRFLOW_URL']}   user admin / {self.secrets['AIRFLOW_ADMIN_PASSWORD']}",
            f"MLflow UI    {e['MLFLOW_TRACKING_URI']}   users: their own username and password; "
            f"admin {self.mlflow_auth.admin_username} / {self.mlflow_auth.admin_password}",
            f"S3           {e['AWS_ENDPOINT_URL_S3']}   bucket {self.bucket}   "
            f"key {e['AWS_ACCESS_KEY_ID']} / secret {e['AWS_SECRET_ACCESS_KEY']}",
            f"state, logs  {self.folder}   (secrets: secrets.env; shell: source {self.folder / 'stack.env'})",
            *([(f"executor     CeleryExecutor, broker {self.redis.url}, PostgreSQL {self.postgres.url()}; "
                f"workers for queues {', '.join(self.airflow.workers)} (caches in "
                f"{self.airflow.worker_cache_dir('*')})")] if self.redis else []),
        ])
