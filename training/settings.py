"""The pipeline side's settings (DAG tasks, the Airflow plugin, the engine's S3 access), read
from the environment in one place.

`get_settings()` builds a fresh `PipelineSettings` on each call (cheap: a few environment
lookups), so a test's `monkeypatch.setenv` or a worker's changed environment is seen at once.
Empty variables count as unset. The child process of the engine gets the task's environment
as it is (`env=`), not this object.

S3 credentials and the region stay with boto3's own chain (`AWS_ACCESS_KEY_ID`, an IAM role,
...); only the endpoint is read here, to choose path-style addressing for S3-compatible servers.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import AliasChoices, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_CACHE_MAX_GB = 200.0
DEFAULT_FRAME_STORE_MAX_GB = 20.0
DEFAULT_MAX_BAD_CLIP_FRACTION = 0.01
DEFAULT_ADAPTER_UPLOAD_RETRY_S = 300.0
DEFAULT_WARM_ENGINE_IDLE_S = 1800.0


def _default_cache_dir() -> Path:
    return Path.home() / ".cache" / "qlora"


class SettingsError(ValueError):
    """An environment variable the pipeline reads holds a value it cannot use."""


class PipelineSettings(BaseSettings):
    model_config = SettingsConfigDict(env_ignore_empty=True, extra="ignore", frozen=True)

    #: the platform's bucket (layout: `training.s3`)
    s3_bucket: str = Field("qlora", validation_alias="QLORA_S3_BUCKET")
    #: a custom S3 endpoint (SeaweedFS, MinIO); unset on AWS. boto3 reads it itself; we only
    #: switch to path-style addressing when it is set
    s3_endpoint_url: str | None = Field(
        None, validation_alias=AliasChoices("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"))
    #: the worker's local cache of models, datasets and job folders (`make up`: `.cache/`)
    cache_dir: Path = Field(default_factory=_default_cache_dir, validation_alias="QLORA_CACHE_DIR")
    #: size limit of the cache's models and datasets in GB; 0 or less: no limit
    cache_max_gb: float = Field(DEFAULT_CACHE_MAX_GB, validation_alias="QLORA_CACHE_MAX_GB")
    #: size limit of the stores of decoded frames (`training.data.frame_store`) in GB, all of
    #: them together, within the cache; 0: no store (every epoch decodes the videos again)
    frame_store_max_gb: float = Field(DEFAULT_FRAME_STORE_MAX_GB, ge=0, validation_alias="QLORA_FRAME_STORE_MAX_GB")
    #: clips that fail to decode during a training are skipped, reported and counted; past this
    #: share of the dataset's clips the job fails saying which (0: the first such clip fails it)
    max_bad_clip_fraction: float = Field(DEFAULT_MAX_BAD_CLIP_FRACTION, ge=0, le=1,
                                         validation_alias="QLORA_MAX_BAD_CLIP_FRACTION")
    #: processes that decode the training's clips ahead of the loop (a torch DataLoader's
    #: workers), so decoding overlaps compute; 0: decoded in the training process. Unset: half
    #: the CPU cores, at least 1 and at most 4 (`data_worker_count`)
    data_workers: int | None = Field(None, ge=0, le=64, validation_alias="QLORA_DATA_WORKERS")
    #: the MLflow tracking server; unset: no tracking
    mlflow_tracking_uri: str | None = Field(None, validation_alias="MLFLOW_TRACKING_URI")
    #: the MLflow UI address browsers use (links), when it differs from the tracking URI
    mlflow_ui_url: str | None = Field(None, validation_alias="QLORA_MLFLOW_UI_URL")
    #: the job a training process belongs to (set by the train task for its engine)
    job_id: str | None = Field(None, validation_alias="QLORA_JOB_ID")
    #: how long the engine keeps retrying the upload of a finished adapter while S3 does not
    #: answer (a restart, a network cut) before the training fails naming it
    adapter_upload_retry_s: float = Field(DEFAULT_ADAPTER_UPLOAD_RETRY_S, ge=0,
                                          validation_alias="QLORA_ADAPTER_UPLOAD_RETRY_S")
    #: start training engines by forking a per-worker process that imported torch, transformers,
    #: peft and mlflow already (`training.pipeline.warm_engine`) instead of a new interpreter
    warm_engine: bool = Field(True, validation_alias="QLORA_WARM_ENGINE")
    #: a warm engine server with no engine running and no request leaves after this long
    warm_engine_idle_s: float = Field(DEFAULT_WARM_ENGINE_IDLE_S, gt=0, validation_alias="QLORA_WARM_ENGINE_IDLE_S")

    @property
    def cache_max_bytes(self) -> int | None:
        """The cache's size limit in bytes (None: no limit)."""
        return int(self.cache_max_gb * 1024**3) if self.cache_max_gb > 0 else None

    @property
    def data_worker_count(self) -> int:
        """Decoding workers of a training: `QLORA_DATA_WORKERS`, else half the cores in [1, 4]
        (1 on a 2-core machine: one core decodes while the other computes)."""
        if self.data_workers is not None:
            return self.data_workers
        return min(4, max(1, (os.cpu_count() or 2) // 2))

    @property
    def frame_store_max_bytes(self) -> int:
        """The frame stores' size limit in bytes (0: disabled)."""
        return int(self.frame_store_max_gb * 1024**3)

    @property
    def mlflow_ui_base_url(self) -> str | None:
        """The MLflow UI to link to: `QLORA_MLFLOW_UI_URL`, else the tracking URI when it is an
        http(s) URL (the tracking server serves the UI); None when there is none."""
        url = self.mlflow_ui_url or self.mlflow_tracking_uri or ""
        return url.rstrip("/") if url.startswith(("http://", "https://")) else None


def get_settings() -> PipelineSettings:
    """The settings as the environment says now. Raises `SettingsError` naming the variable
    whose value is unusable."""
    try:
        return PipelineSettings()
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            name = ".".join(str(p) for p in error.get("loc", ()))
            problems.append(f"{name}={error.get('input')!r}: {error.get('msg', 'invalid')}")
        raise SettingsError("; ".join(problems)) from None
