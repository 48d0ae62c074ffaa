"""Bodies of `/v1/trainings` (field names of the spec, plus what fine-tuning APIs add)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from training import job_spec

TrainingStatusField = Literal["queued", "running", "completed", "failed", "stopped"]
TrainingStageField = Literal["validating", "downloading", "training", "evaluating", "registering", "stopping", "finished"]

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
    training_params: dict[str, Any] = Field(
        default_factory=dict,
        description="QLoRA hyper-parameters; omitted ones take their defaults. `lora_rank` must lie in the model's "
        "`[min_rank, max_rank]`; `target_modules` among the model's allowed modules (empty: its defaults).",
        json_schema_extra={"properties": job_spec.training_params_schema()["properties"]},
    )
    output_name: str = Field(
        max_length=200,
        description="Name of the adapter (MLflow run and registered model): 1-64 letters, digits, '.', '_', '-'.",
    )


class TrainingStartResponse(BaseModel):
    job_id: str
    status: Literal["queued"] = "queued"
    message: str = "Training job initiated successfully"


class TrainingSummary(BaseModel):
    job_id: str
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


class TrainingDetail(TrainingSummary):
    training_params: dict[str, Any] = Field(default_factory=dict, description="The parameters as requested.")
    logs: str = Field(default="", description="The recent lines of the training task's log.")
    metrics: dict[str, float] = Field(default_factory=dict, description="Latest metrics of the MLflow run.")
    eta_seconds: float | None = Field(default=None, description="Estimated seconds of training left.")
    error: str | None = Field(default=None, description="Why the job failed.")
    stop_requested: bool = False
    mlflow_run_id: str | None = None
    mlflow_run_url: str | None = Field(default=None, description="The run in the MLflow UI.")
    airflow_run_url: str | None = Field(default=None, description="The DAG run in the Airflow UI.")
    updated_at: datetime | None = None


class StopResponse(BaseModel):
    message: str
