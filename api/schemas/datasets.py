from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from training import s3 as s3_layout  # the S3 key layout

if TYPE_CHECKING:
    from api.models import Dataset

DatasetStatusField = Literal["ready", "processing", "error"]
DatasetStageField = Literal["awaiting_upload", "validating", "ready", "failed", "expired"]


class UploadInitiateRequest(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "file_name": "my_video_dataset.zip",
                    "file_type": "application/zip",
                    "dataset_name": "Moving squares",
                    "dataset_description": "Left/right moving squares, labelled by direction",
                }
            ]
        }
    )

    file_name: str = Field(min_length=1, max_length=1024, description="Name of the archive; only `.zip` is supported.")
    file_type: str = Field(
        min_length=1,
        max_length=255,
        description="MIME type: `application/zip`, `application/x-zip-compressed` or `application/octet-stream`.",
    )
    dataset_name: str = Field(min_length=1, max_length=200)
    dataset_description: str = Field(default="", max_length=5000)


class UploadInitiateResponse(BaseModel):
    upload_url: str = Field(description="Presigned S3 URL: `PUT` the archive's bytes to it before it expires.")
    dataset_id: str
    s3_key: str = Field(examples=["datasets/a1b2c3d4-e5f6-7890-1234-567890abcdef/my_video_dataset.zip"])


class UploadCompleteRequest(BaseModel):
    dataset_id: str = Field(min_length=1, max_length=64)
    s3_key: str = Field(min_length=1, max_length=1024)


class UploadCompleteResponse(BaseModel):
    message: str = Field(examples=["Dataset processing initiated"])
    dataset_id: str


class DatasetSummary(BaseModel):
    """A dataset in the list."""

    id: str
    name: str
    description: str
    s3_path: str = Field(description="S3 URI of the uploaded archive.")
    status: DatasetStatusField
    stage: DatasetStageField = Field(
        description="Finer lifecycle step: awaiting_upload -> validating -> ready | failed; "
        "expired when the upload was never completed."
    )
    error: str | None = Field(default=None, description="Why the dataset is in `error` (names files and rows).")
    created_at: datetime
    file_count: int = Field(description="Files in the extracted dataset (0 until validated).")
    total_size_bytes: int = Field(description="Bytes of the extracted dataset (0 until validated).")

    @staticmethod
    def list_json(rows: Iterable[Mapping[str, Any]], bucket: str) -> bytes:
        """The JSON body of a list from rows of the datasets' list columns (with `s3_key`):
        validated and serialized once for all of them, faster than FastAPI's response model
        (which serializes twice)."""
        prefix = f"s3://{bucket}/"
        return _SUMMARY_LIST.dump_json(
            _SUMMARY_LIST.validate_python([{**row, "s3_path": prefix + row["s3_key"]} for row in rows])
        )


class DatasetDetail(DatasetSummary):
    """One dataset with its validation summary."""

    file_name: str
    files_path: str | None = Field(default=None, description="S3 URI of the extracted dataset folder once ready.")
    upload_size_bytes: int | None = None
    stats: dict[str, Any] | None = Field(
        default=None, description="Validation summary: tasks, labels, captions, splits, video stats, clip_count."
    )
    updated_at: datetime

    @classmethod
    def from_dataset(cls, dataset: Dataset, bucket: str) -> DatasetDetail:
        """The detail of `dataset`, whose objects are in `bucket`."""
        return cls(
            id=dataset.id,
            name=dataset.name,
            description=dataset.description,
            s3_path=s3_layout.s3_uri(bucket, dataset.s3_key),
            status=dataset.status,  # type: ignore[arg-type]
            stage=dataset.stage,  # type: ignore[arg-type]
            error=dataset.error,
            created_at=dataset.created_at,
            file_count=dataset.file_count,
            total_size_bytes=dataset.total_size_bytes,
            file_name=dataset.file_name,
            files_path=s3_layout.s3_uri(bucket, s3_layout.dataset_files_prefix(dataset.id))
            if dataset.stage == "ready" else None,
            upload_size_bytes=dataset.upload_size_bytes,
            stats=dataset.stats,
            updated_at=dataset.updated_at,
        )


_SUMMARY_LIST = TypeAdapter(list[DatasetSummary])
