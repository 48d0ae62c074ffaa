from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator

from training import s3 as s3_layout  # the S3 key layout

if TYPE_CHECKING:
    from api.models import Dataset

DatasetStatusField = Literal["ready", "processing", "error"]
DatasetStageField = Literal["awaiting_upload", "validating", "ready", "failed", "expired"]


#: the example body of an upload (the multipart one adds its sizes)
UPLOAD_EXAMPLE = {
    "file_name": "my_video_dataset.zip",
    "file_type": "application/zip",
    "dataset_name": "Moving squares",
    "dataset_description": "Left/right moving squares, labelled by direction",
}


class UploadInitiateRequest(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [UPLOAD_EXAMPLE]})

    file_name: str = Field(min_length=1, max_length=1024, description="Name of the archive; only `.zip` is supported.")
    file_type: str = Field(
        min_length=1,
        max_length=255,
        description="MIME type: `application/zip`, `application/x-zip-compressed` or `application/octet-stream`.",
    )
    dataset_name: str = Field(min_length=1, max_length=200)
    dataset_description: str = Field(default="", max_length=5000)
    file_size_bytes: int | None = Field(
        default=None, ge=1,
        description="Size of the archive in bytes. When given, the pre-signed URL binds it (`Content-Length` is "
        "a signed header): S3 refuses a body of any other size. It counts against your storage quota from now on.")


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


#: S3's multipart limits: parts of 5 MiB to 5 GiB (the last may be smaller), at most 10,000 parts
MULTIPART_MIN_PART_BYTES = 5 * 1024**2
MULTIPART_MAX_PART_BYTES = 5 * 1024**3
MULTIPART_MAX_PARTS = 10_000
#: the part size when the request names none
MULTIPART_DEFAULT_PART_BYTES = 64 * 1024**2
#: URLs handed out in one answer (ask `multipart/parts` for the rest)
MULTIPART_MAX_URLS = 1000


class MultipartInitiateRequest(UploadInitiateRequest):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{**UPLOAD_EXAMPLE, "size_bytes": 7516192768, "part_size_bytes": 67108864}]}
    )

    size_bytes: int = Field(ge=1, description="Size of the archive in bytes (checked against the upload limit now "
                            "and against the assembled object on completion).")
    part_size_bytes: int | None = Field(
        default=None, ge=MULTIPART_MIN_PART_BYTES, le=MULTIPART_MAX_PART_BYTES,
        description="Bytes per part (every part but the last): 5 MiB to 5 GiB; default 64 MiB, raised so that "
        "the archive fits in 10,000 parts.")


class PartUrl(BaseModel):
    part_number: int = Field(ge=1, le=MULTIPART_MAX_PARTS)
    url: str = Field(description="Pre-signed S3 URL: `PUT` this part's bytes to it; keep the `ETag` header of the "
                     "answer for `multipart/complete`.")


class MultipartInitiateResponse(BaseModel):
    dataset_id: str
    s3_key: str = Field(examples=["datasets/a1b2c3d4-e5f6-7890-1234-567890abcdef/my_video_dataset.zip"])
    upload_id: str = Field(description="S3's id of the multipart upload.")
    part_size_bytes: int = Field(description="Bytes of every part but the last.")
    part_count: int = Field(description="Parts to upload: ceil(size_bytes / part_size_bytes).")
    parts: list[PartUrl] = Field(description="URLs of parts 1..part_count (at most the first 1,000; ask "
                                 "`multipart/parts` for the others).")
    expires_at: datetime = Field(description="When the part URLs expire (ask `multipart/parts` for new ones).")


class MultipartPartsRequest(BaseModel):
    dataset_id: str = Field(min_length=1, max_length=64)
    upload_id: str = Field(min_length=1, max_length=1024)
    part_numbers: list[int] = Field(
        default_factory=list, max_length=MULTIPART_MAX_URLS,
        description="Parts to get fresh URLs for (1 to 10,000; at most 1,000 a call); empty: only list the "
        "uploaded parts.")

    @field_validator("part_numbers")
    @classmethod
    def _within_limits(cls, value: list[int]) -> list[int]:
        bad = [n for n in value if not 1 <= n <= MULTIPART_MAX_PARTS]
        if bad:
            raise ValueError(f"part numbers run from 1 to {MULTIPART_MAX_PARTS}, got {bad[0]}")
        return sorted(set(value))


class UploadedPartInfo(BaseModel):
    part_number: int
    etag: str
    size_bytes: int


class MultipartPartsResponse(BaseModel):
    dataset_id: str
    upload_id: str
    uploaded: list[UploadedPartInfo] = Field(description="Parts S3 holds for this upload, by part number: a "
                                             "client resuming an interrupted upload skips them.")
    parts: list[PartUrl] = Field(description="Fresh URLs for the requested `part_numbers`.")
    expires_at: datetime = Field(description="When these URLs expire.")


class CompletedPart(BaseModel):
    part_number: int = Field(ge=1, le=MULTIPART_MAX_PARTS)
    etag: str = Field(min_length=1, max_length=128, description="The `ETag` header S3 answered the part's `PUT` with.")


class MultipartCompleteRequest(BaseModel):
    dataset_id: str = Field(min_length=1, max_length=64)
    upload_id: str = Field(min_length=1, max_length=1024)
    parts: list[CompletedPart] = Field(min_length=1, max_length=MULTIPART_MAX_PARTS,
                                       description="Every part of the archive, each once.")

    @field_validator("parts")
    @classmethod
    def _each_once(cls, value: list[CompletedPart]) -> list[CompletedPart]:
        numbers = [p.part_number for p in value]
        if len(set(numbers)) != len(numbers):
            raise ValueError("each part number must be listed once")
        return value


class MultipartAbortRequest(BaseModel):
    dataset_id: str = Field(min_length=1, max_length=64)


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
    upload_size_bytes: int | None = Field(default=None, description="Size of the uploaded archive recorded by "
                                          "`upload-complete`: validation processes exactly this object.")
    upload_etag: str | None = Field(default=None, description="S3 ETag of the uploaded archive recorded by "
                                    "`upload-complete`; an archive changed after it ends the dataset in `error`.")
    stats: dict[str, Any] | None = Field(
        default=None, description="Validation summary: tasks, labels, captions, splits, clip_count, video stats "
        "(min/max/mean) and `clips`: per clip its file_name, codec, pix_fmt, container, upright width/height, "
        "duration_s, fps, frames, rotation and has_audio."
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
            upload_etag=dataset.upload_etag,
            stats=dataset.stats,
            updated_at=dataset.updated_at,
        )


_SUMMARY_LIST = TypeAdapter(list[DatasetSummary])
