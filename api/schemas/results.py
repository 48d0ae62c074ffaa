"""Bodies of what a user takes away from a job: `GET /v1/trainings/{job_id}/adapter` and
`/checkpoints` (pre-signed downloads with each file's size and SHA-256)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field


class DownloadFile(BaseModel):
    name: str = Field(description="File name; save the files of one listing in one folder.")
    size_bytes: int = Field(ge=0)
    sha256: str = Field(description="Hex SHA-256 of the file, recorded by the training engine when it saved it: "
                        "verify the download against it.")
    download_url: str = Field(description="Pre-signed GET URL: works without credentials until `expires_at`.")


class AdapterDownload(BaseModel):
    job_id: str
    partial: bool = Field(description="True for a stopped job: the adapter as it was when the job stopped.")
    expires_at: datetime = Field(description="When the `download_url`s stop working; call again for fresh ones.")
    files: list[DownloadFile]


class CheckpointOut(BaseModel):
    step: int = Field(description="Optimizer steps done when it was saved.")
    epoch: float = Field(description="Epochs done when it was saved (fractional between epoch ends).")
    created_at: datetime | None
    metrics: dict[str, float] = Field(description="`train_loss` of its step and the `eval_*` metrics of the last "
                                      "held-out evaluation before it (none before the first).")
    expires_at: datetime = Field(description="When the `download_url`s stop working.")
    files: list[DownloadFile] = Field(description="`trainable.safetensors` (the trainable weights) and `state.pt` "
                                      "(optimizer, scheduler, random states): what resuming needs.")


class PerClassOut(BaseModel):
    label: str
    precision: float
    recall: float
    f1: float
    support: int = Field(description="Held-out clips of this label.")


class ConfusionMatrixOut(BaseModel):
    labels: list[str] = Field(description="The label order of the rows and columns (the model's label ids).")
    matrix: list[list[int]] = Field(description="`matrix[i][j]`: clips of label `labels[i]` predicted as `labels[j]`.")


class EvaluationSide(BaseModel):
    metrics: dict[str, float] = Field(description="Classification: `accuracy`, `macro_f1`, `eval_loss`; captioning: "
                                      "`bleu` (0-100), `rougeL` (0-1), `eval_loss`; and `eval_examples`.")
    per_class: list[PerClassOut] | None = Field(default=None, description="Classification only.")
    confusion_matrix: ConfusionMatrixOut | None = Field(default=None, description="Classification only.")


class CaptionSampleOut(BaseModel):
    file_name: str
    reference: str = Field(description="The dataset's caption.")
    base: str | None = Field(description="The base model's caption (null when the base was not evaluated).")
    adapter: str = Field(description="The fine-tuned model's caption.")


class EvaluationOut(BaseModel):
    job_id: str
    task: str = Field(description="`video_classification` or `video_captioning`.")
    split: str = Field(description="The held-out split evaluated (`validation`).")
    held_out_examples: int
    adapter: EvaluationSide = Field(description="The base model with the job's adapter.")
    base: EvaluationSide | None = Field(description="The base model alone, on the same clips.")
    samples: list[CaptionSampleOut] = Field(default_factory=list, description="Captioning: up to 20 held-out clips "
                                            "with the reference, the base model's and the adapter's caption.")
    mlflow_run_url: str | None = Field(default=None, description="The run in the MLflow UI: its `evaluation/` "
                                       "artifacts hold the same report, the per-class or caption table and the "
                                       "confusion matrix picture.")
