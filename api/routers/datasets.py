"""`/v1/datasets`: presigned uploads, validation status, deletion."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Response, status
from pydantic import TypeAdapter

from api.deps import AirflowDep, CurrentUser, PAGED_LIST_ROUTE, PageDep, S3Dep, SessionDep, SettingsDep
from api.models import Dataset
from api.schemas.common import ErrorResponse
from api.schemas.datasets import (
    DatasetDetail,
    DatasetSummary,
    UploadCompleteRequest,
    UploadCompleteResponse,
    UploadInitiateRequest,
    UploadInitiateResponse,
)
from api.services.datasets import DatasetService
from training import storage

router = APIRouter(prefix="/datasets", tags=["datasets"], responses={401: {"model": ErrorResponse}})

_UNAVAILABLE = {503: {"model": ErrorResponse, "description": "S3 or Airflow cannot be reached; retry later"}}


def get_service(session: SessionDep, s3: S3Dep, airflow: AirflowDep, settings: SettingsDep) -> DatasetService:
    return DatasetService(session, s3, airflow, settings)


ServiceDep = Annotated[DatasetService, Depends(get_service)]


def to_detail(dataset: Dataset, bucket: str) -> DatasetDetail:
    fields = _fields(dataset, bucket)
    fields.update(
        file_name=dataset.file_name,
        files_path=storage.s3_uri(bucket, storage.dataset_files_prefix(dataset.id)) if dataset.stage == "ready" else None,
        upload_size_bytes=dataset.upload_size_bytes,
        stats=dataset.stats,
        updated_at=dataset.updated_at,
    )
    return DatasetDetail.model_validate(fields)


def _fields(dataset: Dataset, bucket: str) -> dict[str, Any]:
    return {
        "id": dataset.id,
        "name": dataset.name,
        "description": dataset.description,
        "s3_path": storage.s3_uri(bucket, dataset.s3_key),
        "status": dataset.status,
        "stage": dataset.stage,
        "error": dataset.error,
        "created_at": dataset.created_at,
        "file_count": dataset.file_count,
        "total_size_bytes": dataset.total_size_bytes,
        "updated_at": dataset.updated_at,
    }


@router.post(
    "/upload-initiate",
    response_model=UploadInitiateResponse,
    responses={400: {"model": ErrorResponse, "description": "Invalid input"}, **_UNAVAILABLE},
    openapi_extra={"x-validation-status": 400},
    summary="Start an upload: returns a presigned S3 PUT URL",
    description="Creates the dataset (stage `awaiting_upload`) and returns a presigned URL; `PUT` the `.zip` "
    "archive to it, then call `upload-complete`. Uploads not completed in time expire and are deleted.",
)
def upload_initiate(body: UploadInitiateRequest, user: CurrentUser, service: ServiceDep) -> UploadInitiateResponse:
    dataset, url = service.initiate(user, body)
    return UploadInitiateResponse(upload_url=url, dataset_id=dataset.id, s3_key=dataset.s3_key)


@router.post(
    "/upload-complete",
    response_model=UploadCompleteResponse,
    responses={
        400: {"model": ErrorResponse, "description": "Invalid input, S3 key mismatch, missing or too large object"},
        404: {"model": ErrorResponse, "description": "Dataset not found"},
        **_UNAVAILABLE,
    },
    openapi_extra={"x-validation-status": 400},
    summary="Finish an upload and start validation",
    description="Checks the uploaded object and triggers the `dataset_validation` Airflow DAG. Idempotent: "
    "calling it again after success answers 200 without starting a second run.",
)
def upload_complete(body: UploadCompleteRequest, user: CurrentUser, service: ServiceDep) -> UploadCompleteResponse:
    dataset = service.complete(user, body.dataset_id, body.s3_key)
    return UploadCompleteResponse(message="Dataset processing initiated", dataset_id=dataset.id)


_SUMMARIES = TypeAdapter(list[DatasetSummary])


@router.get(
    "",
    response_model=list[DatasetSummary],
    **PAGED_LIST_ROUTE,
    summary="The user's datasets, newest first",
    description="All your datasets, newest first; `limit` and `offset` return one page of them instead.",
)
def list_datasets(user: CurrentUser, service: ServiceDep, settings: SettingsDep, page: PageDep) -> Response:
    prefix = f"s3://{settings.s3_bucket}/"
    items = [
        {**row, "s3_path": prefix + row["s3_key"]}
        for row in service.list(user, page.limit, page.offset)
    ]
    # serialized once here (validated against the schema) rather than twice by FastAPI
    return Response(_SUMMARIES.dump_json(_SUMMARIES.validate_python(items)), media_type="application/json")


@router.get(
    "/{dataset_id}",
    response_model=DatasetDetail,
    responses={404: {"model": ErrorResponse, "description": "Dataset not found"}},
    summary="One dataset with its validation summary",
)
def get_dataset(dataset_id: str, user: CurrentUser, service: ServiceDep, settings: SettingsDep) -> DatasetDetail:
    return to_detail(service.get(user, dataset_id), settings.s3_bucket)


@router.delete(
    "/{dataset_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses={
        404: {"model": ErrorResponse, "description": "Dataset not found"},
        409: {"model": ErrorResponse, "description": "A queued or running training uses it, or it is being validated"},
        **_UNAVAILABLE,
    },
    summary="Delete a dataset and every S3 object under its prefix",
)
def delete_dataset(dataset_id: str, user: CurrentUser, service: ServiceDep) -> Response:
    service.delete(user, dataset_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
