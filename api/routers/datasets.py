"""`/v1/datasets`: presigned uploads, validation status, deletion."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response, status

from api.deps import AirflowDep, CurrentUser, PAGED_LIST_ROUTE, PageDep, S3Dep, SessionDep, SettingsDep
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

router = APIRouter(prefix="/datasets", tags=["datasets"], responses={401: {"model": ErrorResponse}})

_UNAVAILABLE = {503: {"model": ErrorResponse, "description": "S3 or Airflow cannot be reached; retry later"}}


def get_service(session: SessionDep, s3: S3Dep, airflow: AirflowDep, settings: SettingsDep) -> DatasetService:
    return DatasetService(session, s3, airflow, settings)


ServiceDep = Annotated[DatasetService, Depends(get_service)]


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


@router.get(
    "",
    response_model=list[DatasetSummary],
    **PAGED_LIST_ROUTE,
    summary="The user's datasets, newest first",
    description="All your datasets, newest first; `limit` and `offset` return one page of them instead.",
)
def list_datasets(user: CurrentUser, service: ServiceDep, settings: SettingsDep, page: PageDep) -> Response:
    rows = service.list(user, page.limit, page.offset)
    return Response(DatasetSummary.list_json(rows, settings.s3_bucket), media_type="application/json")


@router.get(
    "/{dataset_id}",
    response_model=DatasetDetail,
    responses={404: {"model": ErrorResponse, "description": "Dataset not found"}},
    summary="One dataset with its validation summary",
)
def get_dataset(dataset_id: str, user: CurrentUser, service: ServiceDep, settings: SettingsDep) -> DatasetDetail:
    return DatasetDetail.from_dataset(service.get(user, dataset_id), settings.s3_bucket)


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
