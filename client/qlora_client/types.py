"""The API's JSON bodies as typed dicts (what `Client` returns: the JSON as the API sent it, so
`--json` prints exactly that). Fields the API may add later are simply more keys."""

from __future__ import annotations

from typing import Any, TypedDict


class User(TypedDict):
    id: str
    username: str
    email: str
    created_at: str


class Dataset(TypedDict, total=False):
    id: str
    name: str
    description: str
    s3_path: str
    status: str  # ready | processing | error
    stage: str  # awaiting_upload | validating | ready | failed | expired
    error: str | None
    created_at: str
    file_count: int
    total_size_bytes: int
    # the detail only
    file_name: str
    files_path: str | None
    upload_size_bytes: int | None
    stats: dict[str, Any] | None
    updated_at: str


class LoraLimits(TypedDict):
    min_rank: int
    max_rank: int
    default_alpha: int


class Model(TypedDict, total=False):
    id: str
    name: str
    description: str
    model_type: str
    base_architecture: str
    version: str
    tiny: bool
    supported_lora_params: LoraLimits
    default_target_modules: list[str]
    allowed_target_modules: list[str]
    architecture_class: str
    checkpoint: str | None
    weights_uri: str


class Training(TypedDict, total=False):
    job_id: str
    model_id: str
    dataset_id: str
    output_name: str | None
    status: str  # queued | running | completed | failed | stopped
    stage: str | None
    progress: float
    created_at: str
    started_at: str | None
    completed_at: str | None
    output_path: str | None
    # the detail only
    training_params: dict[str, Any]
    logs: str
    metrics: dict[str, float]
    eta_seconds: float | None
    error: str | None
    stop_requested: bool
    mlflow_run_id: str | None
    mlflow_run_url: str | None
    airflow_run_url: str | None
    updated_at: str | None


class TrainingStarted(TypedDict):
    job_id: str
    status: str
    message: str


class PartUrl(TypedDict):
    part_number: int
    url: str


class UploadedPart(TypedDict):
    part_number: int
    etag: str
    size_bytes: int


class MultipartStarted(TypedDict):
    dataset_id: str
    s3_key: str
    upload_id: str
    part_size_bytes: int
    part_count: int
    parts: list[PartUrl]
    expires_at: str


class MultipartParts(TypedDict):
    dataset_id: str
    upload_id: str
    uploaded: list[UploadedPart]
    parts: list[PartUrl]
    expires_at: str


TERMINAL_TRAINING = frozenset({"completed", "failed", "stopped"})
