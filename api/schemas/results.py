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
