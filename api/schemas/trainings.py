"""Bodies of `/v1/trainings` (field names of the spec, plus what fine-tuning APIs add)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator

from training import job_spec
from training.params import TrainingParams

if TYPE_CHECKING:
    from api.core.config import Settings
    from api.models import TrainingJob

TrainingStatusField = Literal["queued", "running", "completed", "failed", "stopped"]
TrainingStageField = Literal["validating", "downloading", "training", "evaluating", "registering", "stopping", "finished"]

#: `metadata` of a job: at most this many pairs, keys like this
MAX_METADATA_PAIRS = 16
METADATA_KEY = re.compile(r"[A-Za-z0-9_.-]{1,64}")

STATUS_DESCRIPTION = (
    "`queued` (waiting for a worker), `running`, `completed`, `failed` (see `error`), or `stopped` "
    "(terminal: stopped by `POST /v1/trainings/{job_id}/stop` and its training process is gone; "
    "`output_path` holds the partial adapter when one was saved). Read back from the Airflow run."
)


class TrainingRequest(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "model_id": "flamingo-tiny-classification",
                    "dataset_id": "a1b2c3d4-e5f6-7890-1234-567890abcdef",
                    "training_params": {"epochs": 2, "learning_rate": 0.0002, "batch_size": 2, "lora_rank": 4,
                                        "lora_alpha": 16, "lora_dropout": 0.05, "target_modules": ["q_proj", "v_proj"]},
                    "output_name": "squares-direction",
                }
            ]
        }
    )

    model_id: str = Field(max_length=128, description="A model of `GET /v1/models/allowed`.")
    dataset_id: str = Field(max_length=64, description="One of your datasets whose status is `ready`.")
    training_params: TrainingParams = Field(
        default_factory=TrainingParams,
        description="QLoRA hyper-parameters; omitted ones take their defaults. `lora_rank` must lie in the model's "
        "`[min_rank, max_rank]`; `target_modules` among the model's allowed modules (empty: its defaults).",
    )
    output_name: str = Field(
        max_length=200,
        description="Name of the adapter (MLflow run and registered model): 1-64 letters, digits, '.', '_', '-'.",
    )
    max_runtime_minutes: int | None = Field(
        default=None,
        description="Deadline of the training itself, in minutes (default and ceiling: the service's "
        "`QLORA_MAX_RUNTIME_MINUTES_DEFAULT` and `QLORA_MAX_RUNTIME_MINUTES_MAX`, 1440 and 4320 unless set). Past it "
        "the training is stopped, its partial adapter kept (`output_path`), and the job ends `failed` saying so.",
    )
    metadata: dict[str, str] | None = Field(
        default=None,
        description=f"Your own labels: at most {MAX_METADATA_PAIRS} pairs, keys of 1-64 letters, digits, '_', '-', "
        "'.', values of at most 512 characters. Shown in the detail; `GET /v1/trainings?metadata[key]=value` "
        "filters on them.",
    )

    @field_validator("metadata")
    @classmethod
    def _metadata_pairs(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is None:
            return None
        if len(value) > MAX_METADATA_PAIRS:
            raise ValueError(f"at most {MAX_METADATA_PAIRS} pairs, got {len(value)}")
        for key, item in value.items():
            if not METADATA_KEY.fullmatch(key):
                raise ValueError(f"key {key[:80]!r} must be 1-64 letters, digits, '_', '-' or '.'")
            if len(item) > 512:
                raise ValueError(f"the value of {key!r} is longer than 512 characters")
        return value


class TrainingStartResponse(BaseModel):
    job_id: str
    status: Literal["queued"] = "queued"
    message: str = "Training job initiated successfully"


class TrainingSummary(BaseModel):
    # read from the attributes of the job (`from_job`) or of a row of its columns (`list_json`),
    # where `job_id` is `id` (no docstring: it would become the OpenAPI description)
    model_config = ConfigDict(from_attributes=True, validate_by_name=True)

    job_id: str = Field(validation_alias="id")
    model_id: str
    dataset_id: str
    output_name: str | None = None
    status: TrainingStatusField = Field(description=STATUS_DESCRIPTION)
    stage: TrainingStageField | None = Field(
        default=None,
        description="The pipeline step: validating, downloading, training, evaluating, registering; `stopping` while "
        "a requested stop is under way (the job reads `running` until its training process is gone); `finished` "
        "once every step succeeded. A failed or stopped job keeps the stage it ended in.",
    )
    progress: float = Field(ge=0, le=1, description="Share of training steps done (never decreases).")
    created_at: datetime
    started_at: datetime | None = Field(default=None, description="When the Airflow run started (null while queued).")
    completed_at: datetime | None = None
    output_path: str | None = Field(default=None, description="S3 URI of the adapter once completed (or stopped).")

    @field_validator("progress", mode="before")
    @classmethod
    def _within_zero_and_one(cls, value: Any) -> Any:
        """The job's progress (None before any) clamped into [0, 1]."""
        return min(max(value or 0.0, 0.0), 1.0)

    @classmethod
    def from_job(cls, job: TrainingJob) -> TrainingSummary:
        """The summary of `job` (its columns as they are now)."""
        return cls.model_validate(job)

    @staticmethod
    def list_json(jobs: Iterable[Any]) -> bytes:
        """The JSON body of a list of jobs (or rows of their columns): validated and serialized
        once for all of them, faster than FastAPI's response model (which serializes twice)."""
        return _SUMMARY_LIST.dump_json(_SUMMARY_LIST.validate_python(list(jobs)))


class RegisteredModelOut(BaseModel):
    name: str = Field(description="Registered model name in the MLflow Model Registry: `{username}~{output_name}` "
                      "(`~` is in neither part's alphabet, so names of different users never collide).")
    version: str = Field(description="The model version this job registered.")
    uri: str = Field(description="`models:/{name}/{version}`: `mlflow.pyfunc.load_model(uri)` loads it (README: "
                     "*Using your adapter*).")
    ui_url: str | None = Field(default=None, description="The model version's page in the MLflow UI.")


class RunOut(BaseModel):
    run_id: str = Field(description="The Airflow run id.")
    status: str = Field(description="How the job stood when this run ended.")
    stage: str | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    error: str | None = None
    resumed_from_step: int | None = Field(default=None, description="The checkpoint step the next run continued from.")


class TrainingDetail(TrainingSummary):
    training_params: TrainingParams = Field(
        default_factory=TrainingParams,
        description="The parameters the job really uses: what was asked, every other default filled in (LoRA "
        "rank clamped into the model's range, the model's alpha, target modules and frames).")
    logs: str = Field(default="", description="The recent lines of the training task's log.")
    metrics: dict[str, float] = Field(default_factory=dict, description="Latest metrics of the MLflow run.")
    eta_seconds: float | None = Field(default=None, description="Estimated seconds of training left.")
    error: str | None = Field(default=None, description="Why the job failed.")
    stop_requested: bool = False
    max_runtime_minutes: int | None = Field(
        default=None, description="The training's deadline in minutes (the request's, else the service's default): "
        "past it the training is stopped, its partial adapter kept, and the job fails.")
    metadata: dict[str, str] = Field(default_factory=dict, description="Your labels of the job (`metadata` at creation).")
    mlflow_run_id: str | None = None
    mlflow_run_url: str | None = Field(default=None, description="The run in the MLflow UI.")
    airflow_run_url: str | None = Field(default=None, description="The DAG run in the Airflow UI.")
    registered_model: RegisteredModelOut | None = Field(
        default=None, description="The MLflow model version a completed job registered (null before).")
    previous_runs: list[RunOut] = Field(
        default_factory=list, description="The job's earlier Airflow runs, oldest first, when it was resumed "
        "(`POST /v1/trainings/{job_id}/resume`); the current one is `airflow_run_url`'s.")
    updated_at: datetime | None = None
    stale: list[str] = Field(
        default_factory=list, description="The fields of this answer shown as last stored because the pipeline "
        "service (Airflow) did not answer within `QLORA_DETAIL_AIRFLOW_TIMEOUT_S` (of `status`, `stage`, `progress`, "
        "`eta_seconds`, `logs`); empty when everything was read now.")
    stale_reason: str | None = Field(default=None, description="Why `stale` is not empty; null when it is.")

    @classmethod
    def from_job(  # type: ignore[override]
        cls, job: TrainingJob, settings: Settings, *, logs: str = "", eta_seconds: float | None = None,
        stale: Sequence[str] = (), stale_reason: str | None = None,
    ) -> TrainingDetail:
        """The detail of `job`; `logs`, `eta_seconds` and `stale` are read back from its run
        (`api.services.trainings.reads.read_detail`), the links point at the settings' UIs."""
        return cls(
            **dict(TrainingSummary.from_job(job)),
            training_params=TrainingParams.model_validate((job.request or {}).get("training_params") or {}),
            logs=logs,
            metrics=job.metrics or {},
            eta_seconds=eta_seconds,
            error=job.error,
            stop_requested=job.stop_requested_at is not None,
            max_runtime_minutes=(job.request or {}).get("max_runtime_minutes"),
            metadata=job.job_metadata or {},
            mlflow_run_id=job.mlflow_run_id,
            **run_links(job, settings),
            registered_model=registered_model(job, settings),
            previous_runs=[RunOut.model_validate(r) for r in job.runs or []],
            updated_at=job.updated_at,
            stale=list(stale),
            stale_reason=stale_reason,
        )


def _mlflow_ui(settings: Settings) -> str | None:
    return settings.mlflow_ui_url or (
        settings.mlflow_tracking_uri if (settings.mlflow_tracking_uri or "").startswith("http") else None
    )


def registered_model(job: TrainingJob, settings: Settings) -> RegisteredModelOut | None:
    """The job's registered model version (`{"name", "version"}` cached when it settled), its
    `models:/` URI and its page in the MLflow UI."""
    found = job.registered_model or {}
    if not found.get("name") or not found.get("version"):
        return None
    name, version = str(found["name"]), str(found["version"])
    ui = _mlflow_ui(settings)
    return RegisteredModelOut(name=name, version=version, uri=job_spec.registered_model_uri(name, version),
                              ui_url=job_spec.registered_model_ui_url(ui, name, version) if ui else None)


def run_links(job: TrainingJob, settings: Settings) -> dict[str, str | None]:
    """`mlflow_run_url` (once the MLflow run is known and an MLflow UI is) and `airflow_run_url`."""
    mlflow_ui = _mlflow_ui(settings)
    airflow_ui = (settings.airflow_ui_url or settings.airflow_url).rstrip("/")
    run_id = job.airflow_run_id or job_spec.dag_run_id(job.id)
    return {
        "mlflow_run_url": job_spec.mlflow_run_ui_url(mlflow_ui, job.mlflow_experiment_id, job.mlflow_run_id)
        if mlflow_ui and job.mlflow_run_id and job.mlflow_experiment_id
        else None,
        "airflow_run_url": f"{airflow_ui}/dags/{settings.training_dag_id}/runs/{run_id}",
    }


_SUMMARY_LIST = TypeAdapter(list[TrainingSummary])


class StopResponse(BaseModel):
    message: str


class ResumeResponse(BaseModel):
    message: str
    job_id: str
    status: TrainingStatusField = Field(description="`queued`: the new run waits for a worker.")
    resumed_from_step: int = Field(description="The step of the checkpoint the training continues from.")
    airflow_run_id: str = Field(description="The job's new Airflow run (`train-{job_id}-resume-N`).")
