"""Settings of the API, read from the environment (see the configuration contract in README)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from training import job_spec

REPO_ROOT = Path(__file__).resolve().parents[2]
DEV_JWT_SECRET = "dev-secret-change-me-in-production"
DEFAULT_DATABASE_URL = f"sqlite:///{REPO_ROOT / '.stack' / 'api.db'}"


class Settings(BaseSettings):
    """Every setting of the service; `QLORA_*` variables plus boto3's standard AWS ones."""

    model_config = SettingsConfigDict(
        env_prefix="QLORA_", extra="ignore", validate_by_name=True, hide_input_in_errors=True
    )

    env: Literal["development", "production"] = "development"
    database_url: str = DEFAULT_DATABASE_URL
    #: PostgreSQL connections per API process: kept open, opened beyond those under load, and how
    #: long a request waits for one before it answers 503 ("busy")
    database_pool_size: int = Field(default=10, ge=1)
    database_max_overflow: int = Field(default=20, ge=0)
    database_pool_timeout_s: float = Field(default=30.0, gt=0)
    #: requests served at once per API process (worker threads: the routes are sync and mostly wait
    #: on Airflow, MLflow, S3 or the database)
    api_threads: int = Field(default=100, ge=1, le=1000)

    jwt_secret: str = DEV_JWT_SECRET
    access_token_expire_minutes: int = Field(default=60 * 24, ge=1)

    # S3: boto3's standard variables, so boto3, MLflow and Airflow agree.
    s3_bucket: str = "qlora"
    s3_endpoint_url: str | None = Field(
        default=None, validation_alias=AliasChoices("AWS_ENDPOINT_URL_S3")
    )
    public_s3_endpoint_url: str | None = None
    aws_access_key_id: str | None = Field(
        default=None, validation_alias=AliasChoices("AWS_ACCESS_KEY_ID")
    )
    aws_secret_access_key: str | None = Field(
        default=None, validation_alias=AliasChoices("AWS_SECRET_ACCESS_KEY")
    )
    aws_region: str = Field(default="us-east-1", validation_alias=AliasChoices("AWS_DEFAULT_REGION"))

    # Uploads
    presigned_url_expiry_s: int = Field(default=3600, ge=60, le=7 * 24 * 3600)
    max_upload_bytes: int = Field(default=5 * 1024**3, ge=1)
    #: a dataset whose upload is not completed within this time is expired and its objects deleted
    upload_expiry_s: int = Field(default=24 * 3600, ge=1)
    #: request bodies larger than this are answered 413 (archives go to S3 directly); 0: no limit
    max_request_body_bytes: int = Field(default=1024**2, ge=0)
    #: login and signup attempts per client address, and failed logins or signup attempts per
    #: username, within `auth_rate_limit_window_s`; past either, 429 with Retry-After (0: no limit).
    #: Counted in this process: per replica when several API processes run
    auth_rate_limit_per_address: int = Field(default=60, ge=0)
    auth_rate_limit_per_username: int = Field(default=10, ge=0)
    auth_rate_limit_window_s: float = Field(default=60.0, gt=0)
    #: password hashes (Argon2, 64 MiB each) computed at once; a request waits at most
    #: `password_hash_wait_s` for a slot, then gets 503 with Retry-After
    password_hash_concurrency: int = Field(default=2, ge=1)
    password_hash_wait_s: float = Field(default=10.0, gt=0)
    #: bytes one user's datasets may hold in S3 (archives, declared sizes of uploads under way, extracted
    #: files of ready datasets); an upload past it is refused with 413. 0: no quota
    user_storage_quota_bytes: int = Field(default=50 * 1024**3, ge=0)

    # Airflow
    airflow_url: str = "http://127.0.0.1:8080"
    airflow_username: str = "admin"
    airflow_password: str = "admin"
    airflow_timeout_s: float = 10.0
    #: the job detail's own reads of one job in Airflow (task instances, log tail, XCom) give up
    #: after this long; the detail then shows the last stored stage and log tail and names them
    #: in `stale` (its status comes from the live state the list shares)
    detail_airflow_timeout_s: float = Field(default=2.0, gt=0)
    dataset_validation_dag_id: str = "dataset_validation"
    training_dag_id: str = "qlora_training"
    #: the Airflow UI address users are linked to (default: `airflow_url`)
    airflow_ui_url: str | None = None

    # MLflow (the tracking server also serves the UI)
    mlflow_tracking_uri: str | None = Field(
        default=None, validation_alias=AliasChoices("MLFLOW_TRACKING_URI", "QLORA_MLFLOW_TRACKING_URI")
    )
    #: the MLflow UI address users are linked to (default: `mlflow_tracking_uri` when http)
    mlflow_ui_url: str | None = None
    #: MLflow reads by the trainings API give up after this long (and retry at most twice)
    mlflow_timeout_s: float = 5.0
    #: the API's own MLflow account (MLflow's client variables) on a server that runs the
    #: `basic-auth` app; an MLflow admin, since it creates each user's account at signup
    #: (`api/clients/mlflow_accounts.py`). Unset: the server has no auth, users get no accounts
    mlflow_tracking_username: str | None = Field(
        default=None, validation_alias=AliasChoices("MLFLOW_TRACKING_USERNAME"))
    mlflow_tracking_password: str | None = Field(
        default=None, validation_alias=AliasChoices("MLFLOW_TRACKING_PASSWORD"))

    #: live job state (the bulk Airflow and MLflow reads of the list) is shared by all requests of
    #: the process for this long; 0 reads it on every list request
    live_state_ttl_s: float = Field(default=2.0, ge=0)
    #: a list or detail that finds that state expired reloads it, but waits at most this long for
    #: the reload: past it, it serves the previous state while the reload finishes in the background
    live_state_wait_s: float = Field(default=1.0, gt=0)

    #: after a stop request, a job whose train task uploaded no partial adapter is taken as
    #: gone after this long (Airflow's heartbeat sends SIGTERM within ~5 s, SIGKILL 5 s later,
    #: plus slack): raise it where the scheduler's heartbeat or kill timeouts are longer
    stop_kill_deadline_s: float = Field(default=30.0, gt=0)

    # Training jobs: quotas, deadlines, crash-safe starts
    #: queued or running jobs one user may have; beyond it POST /v1/trainings answers 429
    max_active_jobs_per_user: int = Field(default=4, ge=1)
    #: the `Retry-After` of that 429, in seconds
    active_jobs_retry_after_s: int = Field(default=60, ge=1)
    #: a job's `max_runtime_minutes` when its request gives none, and the most a request may ask
    #: (the train task's deadline: past it the training is stopped, its partial adapter kept, and
    #: the job ends failed)
    max_runtime_minutes_default: int = Field(default=24 * 60, ge=1, le=job_spec.MAX_RUNTIME_MINUTES_LIMIT)
    max_runtime_minutes_max: int = Field(default=3 * 24 * 60, ge=1, le=job_spec.MAX_RUNTIME_MINUTES_LIMIT)
    #: a job committed this long ago whose run was never triggered (the API died in between, or
    #: its trigger failed) gets its run from the reconcile loop
    trigger_grace_s: float = Field(default=30.0, ge=0)

    #: period of the background reconcile loop; 0 disables it (tests)
    reconcile_interval_s: float = Field(default=15.0, ge=0)
    #: run Alembic migrations and seed the model catalog at start-up
    migrate_on_startup: bool = True

    # Webhooks (`/v1/webhooks`; the outbox sender runs in the API's background)
    #: accept endpoints on private, loopback and link-local addresses (`make up` sets it; never in production)
    webhook_allow_private: bool = False
    #: one delivery attempt gives up after this long (connect, send, answer)
    webhook_timeout_s: float = Field(default=10.0, gt=0, le=60)
    #: how often the sender looks for due deliveries; 0 disables the sender (tests)
    webhook_poll_interval_s: float = Field(default=1.0, ge=0)
    #: at most this many deliveries are sent at once (the rest wait for the next round)
    webhook_concurrency: int = Field(default=8, ge=1, le=64)
    #: the first retry waits this long, each next one twice as long, at most `webhook_retry_max_delay_s`
    webhook_retry_base_s: float = Field(default=10.0, gt=0)
    webhook_retry_max_delay_s: float = Field(default=4 * 3600.0, gt=0)
    #: a delivery is retried until this long after the event (then one last attempt), then given up
    webhook_retry_window_s: float = Field(default=24 * 3600.0, gt=0)
    #: endpoints one user may register
    webhook_max_per_user: int = Field(default=20, ge=1)
    #: the key the endpoints' signing secrets are encrypted with in the database (Fernet; any
    #: string of at least 32 characters, the key is derived from it). Comma-separated keys rotate
    #: it: the first encrypts, each decrypts. Unset: derived from the JWT secret in development;
    #: required outside development (`api.services.webhooks.sealing`)
    webhook_secret_key: str | None = Field(default=None, repr=False)

    @model_validator(mode="after")
    def _refuse_dev_secret_in_production(self) -> Settings:
        if self.env != "development":
            if "jwt_secret" not in self.model_fields_set:
                raise ValueError(
                    f"QLORA_JWT_SECRET is not set: outside development (QLORA_ENV={self.env}) the API does not "
                    "start without an explicit secret; set one of at least 32 characters "
                    "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(48))'`)"
                )
            if self.jwt_secret == DEV_JWT_SECRET:
                raise ValueError(
                    "QLORA_JWT_SECRET is the development secret; production needs its own secret "
                    "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(48))'`)"
                )
            if len(self.jwt_secret) < 32:
                raise ValueError("QLORA_JWT_SECRET must be at least 32 characters in production")
            keys = [k.strip() for k in (self.webhook_secret_key or "").split(",") if k.strip()]
            if not keys:
                raise ValueError(
                    f"QLORA_WEBHOOK_SECRET_KEY is not set: outside development (QLORA_ENV={self.env}) the API does "
                    "not start without the key that encrypts webhook signing secrets in the database; set one of at "
                    "least 32 characters (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(48))'`), "
                    "kept apart from QLORA_JWT_SECRET"
                )
            if any(len(k) < 32 for k in keys):
                raise ValueError("QLORA_WEBHOOK_SECRET_KEY: each comma-separated key must be at least 32 characters")
            if self.jwt_secret in keys:
                raise ValueError("QLORA_WEBHOOK_SECRET_KEY must differ from QLORA_JWT_SECRET")
        return self

    @model_validator(mode="after")
    def _runtime_default_within_ceiling(self) -> Settings:
        if self.max_runtime_minutes_default > self.max_runtime_minutes_max:
            raise ValueError(f"QLORA_MAX_RUNTIME_MINUTES_DEFAULT ({self.max_runtime_minutes_default}) is above "
                             f"QLORA_MAX_RUNTIME_MINUTES_MAX ({self.max_runtime_minutes_max})")
        return self

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


@lru_cache
def get_settings() -> Settings:
    """Settings from the environment, read once."""
    return Settings()
