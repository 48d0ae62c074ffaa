"""Session fixtures that start REAL services (PostgreSQL 15, SeaweedFS S3, MLflow, Airflow,
the API under uvicorn) on free loopback ports in temp folders.

Each is lazy: a service starts only when a test asks for it, once per session, and is
stopped by pid at the end of the session. The classes are those of `devstack` (`make up`).

A test that uses one of them (directly or through another fixture) gets the `stack` marker
here, so `pytest -m "not stack"` is the fast unit run; one without the marker that starts a
devstack server itself fails at once (see `_servers_only_in_stack_tests`)."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from devstack.airflow import Airflow
from devstack.api_server import APIServer
from devstack.mlflow_server import API_ACCOUNT, WORKER_ACCOUNT, MlflowAuth, MLflowServer
from devstack import processes
from training.pipeline import warm_engine
from devstack.ports import free_ports
from devstack.postgres import Postgres
from devstack.seaweedfs import S3Settings, SeaweedFS
from devstack.stack import Ports

REPO = Path(__file__).resolve().parents[1]
processes.DIE_WITH_PARENT = True  # a killed test session leaves no services behind
# Tests press Ctrl-C in the commands they start (SIGINT). A session started in the background of a
# non-interactive shell (`make test &`, a CI runner's `sh -c`) inherits SIGINT ignored, and so would
# every command it starts; a handler here is reset to the default in each child instead.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
# warm engine servers (training.pipeline.warm_engine) started by tests' train tasks leave soon after
os.environ.setdefault("QLORA_WARM_ENGINE_IDLE_S", "120")

#: Fixtures that start real services (or migrate a temp Airflow home: tests/dags/conftest.py).
#: A test whose fixture closure holds one is marked `stack`; fixtures built on them (postgres_url,
#: s3_env, mlflow_uri, the real `airflow`, api_server...) are in that closure. `airflow` is not
#: named: tests/api/conftest.py reuses the name for its fake (the real one needs `s3` anyway).
REAL_SERVICE_FIXTURES = ("postgres_server", "s3", "mlflow_server", "mlflow_uri", "api_server", "stack_cli",
                         "airflow_env")


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        uses = set(REAL_SERVICE_FIXTURES) & set(getattr(item, "fixturenames", ()))
        if uses and item.get_closest_marker("stack") is None:
            item.add_marker(pytest.mark.stack)


@pytest.fixture(autouse=True)
def _servers_only_in_stack_tests(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Outside `stack` tests, starting a devstack server (every one goes through
    `Process.start` or `Postgres.start`) fails with the fix, instead of slowing the unit run."""
    if request.node.get_closest_marker("stack") is not None:
        return

    def refuse(self, *args, **kwargs):
        raise RuntimeError(f"{request.node.nodeid} starts a server ({type(self).__name__}): mark it "
                           f"`pytest.mark.stack` or use a fixture of REAL_SERVICE_FIXTURES (tests/conftest.py)")

    monkeypatch.setattr(processes.Process, "start", refuse)
    monkeypatch.setattr(Postgres, "start", refuse)


# -- PostgreSQL ----------------------------------------------------------------------------
@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Postgres]:
    # Not under pytest's tmp folder: /tmp/pytest-of-root is 0700 and PostgreSQL runs as `postgres`.
    folder = Path(tempfile.mkdtemp(prefix="qlora-pg-"))
    folder.chmod(0o755)
    server = Postgres(folder / "pg", free_ports(1)[0])
    server.start()
    yield server
    server.stop()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url(postgres_server: Postgres) -> str:
    """A database made for this test session (SQLAlchemy URL, `postgresql+psycopg2://...`)."""
    return postgres_server.create_database("qlora_test")


@pytest.fixture
def fresh_postgres_url(postgres_server: Postgres) -> str:
    """A new, empty database for one test."""
    return postgres_server.create_database(f"t_{uuid.uuid4().hex[:12]}")


# -- S3 (SeaweedFS) ------------------------------------------------------------------------
@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Settings]:
    """A real S3 server that verifies signatures: `.endpoint_url`, `.access_key`,
    `.secret_key`, `.region`, `.bucket` (created) and `.client()` (boto3)."""
    ports = free_ports(10)
    server = SeaweedFS(tmp_path_factory.mktemp("seaweedfs"), s3_port=ports[0], master_port=ports[1],
                       volume_port=ports[2], filer_port=ports[3], admin_port=ports[4],
                       grpc_ports=tuple(ports[5:]), access_key="test-" + secrets.token_hex(6),
                       secret_key=secrets.token_urlsafe(24), bucket="qlora-test")
    server.start()
    try:
        server.wait_ready()
        yield server.settings
    finally:
        server.stop()


@pytest.fixture
def s3_env(s3: S3Settings, monkeypatch: pytest.MonkeyPatch) -> S3Settings:
    """Points in-process code (boto3's standard chain, QLORA_S3_BUCKET) at the test S3 server."""
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    return s3


# -- MLflow ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class MlflowHandle:
    """The test MLflow server (`basic-auth` app, as `make up` runs it): `.url`, `.auth` (admin,
    service accounts), `.env(account)` (MLflow's client variables, default: the admin's)."""

    url: str
    auth: MlflowAuth

    def env(self, account: str | None = None) -> dict[str, str]:
        return {"MLFLOW_TRACKING_URI": self.url, **self.auth.client_env(account)}


@pytest.fixture(scope="session")
def mlflow_server(s3: S3Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowHandle]:
    """A real MLflow server with authentication whose artifacts go to the test S3 bucket. MLflow
    clients of the test process sign in as its admin (MLFLOW_TRACKING_USERNAME/PASSWORD are set
    for the session); the API and Airflow started here use their own service accounts."""
    auth = MlflowAuth(admin_password=secrets.token_urlsafe(16), secret_key=secrets.token_urlsafe(24),
                      accounts={API_ACCOUNT: secrets.token_urlsafe(16), WORKER_ACCOUNT: secrets.token_urlsafe(16)})
    server = MLflowServer(tmp_path_factory.mktemp("mlflow"), free_ports(1)[0], s3, auth=auth)
    server.start()
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
    try:
        server.wait_ready()
        os.environ.update(auth.client_env())
        yield MlflowHandle(server.url, auth)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        server.stop()


@pytest.fixture(scope="session")
def mlflow_uri(mlflow_server: MlflowHandle) -> str:
    """Tracking URI of the test MLflow server (the test process signs in as its admin)."""
    return mlflow_server.url


# -- Airflow ---------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def airflow(s3: S3Settings, mlflow_server: MlflowHandle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Airflow]:
    """Airflow (api-server, scheduler, dag-processor) running the repo's dags/ with the S3 and
    MLflow environment: `.url` (= `.base_url`), `.username`, `.password`, `.token()`."""
    folder = tmp_path_factory.mktemp("airflow")
    env = {**s3.env(), **mlflow_server.env(WORKER_ACCOUNT), "QLORA_CACHE_DIR": str(folder / "cache"),
           "QLORA_GPU_POOL_SLOTS": "1", "QLORA_WARM_ENGINE_IDLE_S": os.environ["QLORA_WARM_ENGINE_IDLE_S"]}
    server = Airflow(folder, free_ports(1)[0], password=secrets.token_urlsafe(12),
                     jwt_secret=secrets.token_urlsafe(32), secret_key=secrets.token_urlsafe(32), extra_env=env)
    server.start()
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()
        warm_engine.release(folder / "cache")  # its server leaves once the engines it forked ended


# -- the API as a real server ----------------------------------------------------------------
@dataclass(frozen=True)
class ApiHandle:
    base_url: str
    database_url: str
    jwt_secret: str
    airflow: Airflow
    mlflow_uri: str
    s3: S3Settings
    mlflow: MlflowHandle | None = None


@pytest.fixture(scope="session")
def api_server(postgres_server: Postgres, s3: S3Settings, airflow: Airflow, mlflow_server: MlflowHandle,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiHandle]:
    """`uvicorn api.main:app` on PostgreSQL, the test S3, Airflow and MLflow: `.base_url`."""
    database_url = postgres_server.create_database("qlora_api")
    jwt_secret = secrets.token_urlsafe(48)
    env = {**s3.env(), **mlflow_server.env(API_ACCOUNT), "QLORA_ENV": "development",
           "QLORA_DATABASE_URL": database_url, "QLORA_JWT_SECRET": jwt_secret,
           "QLORA_AIRFLOW_URL": airflow.url, "QLORA_AIRFLOW_USERNAME": airflow.username,
           "QLORA_AIRFLOW_PASSWORD": airflow.password, "QLORA_RECONCILE_INTERVAL_S": "2"}
    server = APIServer(tmp_path_factory.mktemp("api"), free_ports(1)[0], env)
    server.start()
    try:
        server.wait_ready()
        yield ApiHandle(server.url, database_url, jwt_secret, airflow, mlflow_server.url, s3, mlflow_server)
    finally:
        server.stop()


# -- a whole stack through its CLI (what `make up` runs) ------------------------------------
@pytest.fixture
def stack_cli() -> Iterator:
    """`stack_cli("up")` runs `python -m devstack up` for a private stack (own folder, free port
    offset, none of the caller's QLORA_/AWS_/MLFLOW_/AIRFLOW variables) and returns its output;
    `.folder`, `.env` (set e.g. QLORA_STACK_EXECUTOR in it before the first call). The stack
    is stopped at the end."""
    # Not under pytest's tmp folder: PostgreSQL (celery mode) runs as `postgres`, see postgres_server.
    top = Path(tempfile.mkdtemp(prefix="qlora-stack-"))
    top.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "QLORA_", "MLFLOW_", "AIRFLOW"))}
    env.update(QLORA_STACK_DIR=str(top / "stack"), QLORA_STACK_PORT_OFFSET=str(Ports.free_offset()))

    def run(*args: str) -> str:
        result = subprocess.run([sys.executable, "-m", "devstack", *args], env=env, cwd=REPO,
                                capture_output=True, text=True, timeout=400)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    run.folder = top / "stack"
    run.env = env
    try:
        yield run
    finally:
        run("down")
        shutil.rmtree(top, ignore_errors=True)
