"""The MLflow tracking server: one worker, no job runner, SQLite backend store, artifacts
proxied to S3 (`s3://BUCKET/mlflow`) so that clients need no S3 credentials of their own, or
kept in a local folder when no S3 is given (benchmarks).

With `auth` it runs MLflow's `basic-auth` app: every request needs an account (401 without),
nobody reads what they were not granted (default permission NO_PERMISSIONS), the bootstrap
admin (the operators' account) comes from `auth`, and once the server answers the service
accounts of `auth.accounts` (the API's, the workers') are created or updated as MLflow admins.
Users' own accounts are the API's business (`api/clients/mlflow_accounts.py`)."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from devstack.ports import HOST
from devstack.processes import Process, ProcessService
from devstack.seaweedfs import S3Settings

#: the folder of `qlora_mlflow_auth` (the sign-in function: MLflow's basic auth, and only
#: admins create experiments/registered models), put on the server's PYTHONPATH
AUTH_MODULE_DIR = Path(__file__).resolve().parents[1] / "mlflow"
AUTHORIZATION_FUNCTION = "qlora_mlflow_auth:authenticate_request"

#: the MLflow accounts of the stack's services (passwords in `.stack/secrets.env`)
API_ACCOUNT = "qlora-api"
WORKER_ACCOUNT = "qlora-worker"


@dataclass(frozen=True)
class MlflowAuth:
    """The `basic-auth` app's configuration: bootstrap admin, the Flask secret (CSRF), the
    users' database (default: SQLite beside the server's own), the service accounts."""

    admin_password: str
    secret_key: str
    accounts: dict[str, str] = field(default_factory=dict)
    admin_username: str = "admin"
    database_uri: str | None = None
    #: a successful sign-in is remembered this long per worker (MLflow's `auth_cache_ttl_seconds`):
    #: without it every request pays a scrypt check (~0.1 s of CPU, 0.5 s on a busy 2-core
    #: machine), the engine's metric logging included. Password changes and deletions through
    #: MLflow's API take effect at once on the worker that handled them, on the others within this
    cache_ttl_s: int = 60

    @classmethod
    def from_secrets(cls, secrets: dict[str, str]) -> MlflowAuth:
        """The local stack's: passwords from `.stack/secrets.env`; the admin's name, the users'
        database and the sign-in cache from `MLFLOW_AUTH_ADMIN_USERNAME` /
        `MLFLOW_AUTH_DATABASE_URI` / `MLFLOW_AUTH_CACHE_TTL_SECONDS` when set."""
        return cls(admin_password=secrets["MLFLOW_ADMIN_PASSWORD"], secret_key=secrets["MLFLOW_FLASK_SECRET_KEY"],
                   accounts={API_ACCOUNT: secrets["MLFLOW_API_PASSWORD"],
                             WORKER_ACCOUNT: secrets["MLFLOW_WORKER_PASSWORD"]},
                   admin_username=os.environ.get("MLFLOW_AUTH_ADMIN_USERNAME") or "admin",
                   database_uri=os.environ.get("MLFLOW_AUTH_DATABASE_URI") or None,
                   cache_ttl_s=int(os.environ.get("MLFLOW_AUTH_CACHE_TTL_SECONDS") or 60))

    def client_env(self, account: str | None = None) -> dict[str, str]:
        """MLflow's client variables for `account` (default: the admin, i.e. an operator's shell)."""
        if account is None or account == self.admin_username:
            return {"MLFLOW_TRACKING_USERNAME": self.admin_username, "MLFLOW_TRACKING_PASSWORD": self.admin_password}
        return {"MLFLOW_TRACKING_USERNAME": account, "MLFLOW_TRACKING_PASSWORD": self.accounts[account]}


class MLflowServer(ProcessService):
    name = "mlflow"
    what = "MLflow"
    ready_timeout = 90

    def __init__(self, folder: Path, port: int, s3: S3Settings | None, backend_store_uri: str | None = None,
                 auth: MlflowAuth | None = None):
        self.folder = Path(folder)
        self.port = port
        self.url = f"http://{HOST}:{port}"
        self.auth = auth
        backend = backend_store_uri or f"sqlite:///{self.folder / 'mlflow.db'}"
        artifacts = f"s3://{s3.bucket}/mlflow" if s3 else (self.folder / "artifacts").resolve().as_uri()
        argv = [sys.executable, "-m", "mlflow", "server", "--host", HOST, "--port", str(port), "--workers", "1",
                "--backend-store-uri", backend, "--artifacts-destination", artifacts]
        env = {**os.environ, **(s3.env() if s3 else {}), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
               "GIT_PYTHON_REFRESH": "quiet", "PYTHONUNBUFFERED": "1"}
        for name in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            env.pop(name, None)
        if auth is not None:
            argv += ["--app-name", "basic-auth"]
            env |= {"MLFLOW_AUTH_CONFIG_PATH": str(self.auth_config_path),
                    "MLFLOW_AUTH_ADMIN_USERNAME": auth.admin_username,
                    "MLFLOW_AUTH_ADMIN_PASSWORD": auth.admin_password,
                    "MLFLOW_FLASK_SERVER_SECRET_KEY": auth.secret_key,
                    "PYTHONPATH": os.pathsep.join(filter(None, (str(AUTH_MODULE_DIR), env.get("PYTHONPATH"))))}
        self.process = Process("mlflow", argv, run_dir=self.folder, env=env, cwd=self.folder)

    @property
    def auth_config_path(self) -> Path:
        return self.folder / "basic_auth.ini"

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.auth is not None:
            database = self.auth.database_uri or f"sqlite:///{self.folder / 'basic_auth.db'}"
            # the admin's name and password come from the environment (MLFLOW_AUTH_ADMIN_*), not this file
            self.auth_config_path.write_text(
                "[mlflow]\n"
                "# nobody reads anything unless granted: users READ their own experiment, services are admins\n"
                "default_permission = NO_PERMISSIONS\n"
                f"database_uri = {database}\n"
                "# basic auth, and only admins (the services) create experiments and registered models\n"
                f"authorization_function = {AUTHORIZATION_FUNCTION}\n"
                f"auth_cache_ttl_seconds = {self.auth.cache_ttl_s}\n")
            self.auth_config_path.chmod(0o600)
        self.process.start()

    def wait_ready(self, timeout: float | None = None) -> float:
        waited = super().wait_ready(timeout)
        if self.auth is not None and self.auth.accounts:
            from api.clients.mlflow_accounts import bootstrap_service_accounts

            bootstrap_service_accounts(self.url, (self.auth.admin_username, self.auth.admin_password),
                                       self.auth.accounts)
        return waited

    def healthy(self) -> bool:
        return httpx.get(f"{self.url}/health", timeout=3).status_code == 200
