"""`/v1/datasets`: presigned uploads (one PUT, or multipart for large archives), validation
status, deletion."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response, status

from api.deps import (
    AirflowDep,
    CurrentUser,
    IdempotencyDep,
    PAGED_LIST_ROUTE,
    PageDep,
    S3Dep,
    SessionDep,
    SettingsDep,
)
from api.routers.openapi_doc import (
    DATASET_DETAIL,
    DATASET_ID,
    DATASET_SUMMARY,
    MULTIPART_COMPLETE,
    MULTIPART_INITIATED,
    MULTIPART_PARTS,
    UPLOAD_ID,
    S3_KEY,
    UNAUTHORIZED,
    body_example,
    error,
    ok_example,
)
from api.schemas.common import ErrorResponse, MessageResponse
from api.schemas.datasets import (
    DatasetDetail,
    DatasetSummary,
    MultipartAbortRequest,
    MultipartCompleteRequest,
    MultipartInitiateRequest,
    MultipartInitiateResponse,
    MultipartPartsRequest,
    MultipartPartsResponse,
    PartUrl,
    UploadedPartInfo,
    UploadCompleteRequest,
    UploadCompleteResponse,
    UploadInitiateRequest,
    UploadInitiateResponse,
)
from api.services.datasets import DatasetService

router = APIRouter(prefix="/datasets", tags=["datasets"], responses=UNAUTHORIZED)

_UNAVAILABLE = {503: error("S3 or Airflow cannot be reached; retry later", "Storage (S3) is unavailable; retry later")}
_NOT_FOUND = {404: error("No such dataset of yours", "Dataset not found")}
_QUOTA = {413: error("The upload would take your datasets past your storage quota (`QLORA_USER_STORAGE_QUOTA_BYTES`)",
                     "Storage quota exceeded: your datasets use 53687091000 of your 53687091200 bytes "
                     "(QLORA_USER_STORAGE_QUOTA_BYTES) and this upload needs 70412; delete datasets you no longer "
                     "need")}


def get_service(session: SessionDep, s3: S3Dep, airflow: AirflowDep, settings: SettingsDep) -> DatasetService:
    return DatasetService(session, s3, airflow, settings)


ServiceDep = Annotated[DatasetService, Depends(get_service)]


@router.post(
    "/upload-initiate",
    response_model=UploadInitiateResponse,
    responses={
        200: ok_example({"upload_url": f"http://127.0.0.1:9000/qlora/{S3_KEY}?X-Amz-Algorithm=AWS4-HMAC-SHA256"
                                       "&X-Amz-Expires=3600&X-Amz-Signature=...",
                         "dataset_id": DATASET_ID, "s3_key": S3_KEY}),
        400: error("Not a `.zip` name or type, or a field is invalid (`detail` names it)",
                   "Unsupported file_type 'video/mp4'; supported: .zip archives sent as application/zip, "
                   "application/x-zip-compressed, application/octet-stream"),
        409: error("The `Idempotency-Key` was used with another request body, or its dataset no longer awaits "
                   "its upload",
                   "Idempotency-Key 'k-1' was already used at 2026-11-30T17:00:00Z for another request body "
                   "(POST /v1/datasets/upload-initiate); retry with the same body to get that answer, or use a new "
                   "key for a new request"),
        **_QUOTA, **_UNAVAILABLE},
    openapi_extra=body_example({"file_name": "toy.zip", "file_type": "application/zip", "dataset_name": "toy",
                                "dataset_description": "squares"}, **{"x-validation-status": 400}),
    summary="Start an upload: returns a presigned S3 PUT URL",
    description="Creates the dataset (stage `awaiting_upload`) and returns a presigned URL; `PUT` the `.zip` "
    "archive to it, then call `upload-complete`. Uploads not completed in time expire and are deleted. With "
    "`file_size_bytes` the URL binds that size (S3 answers 403 to a body of any other size) and it is checked "
    "against your storage quota now (413 past it). Send an `Idempotency-Key` to retry safely: the same key with the "
    "same body within 24 h answers the same dataset again (header `Idempotent-Replayed: true`) with an upload URL "
    "signed anew (the first one is not kept), as long as the dataset still awaits its upload (409 once it was "
    "completed, expired or deleted); the same key with another body is 409.",
)
def upload_initiate(body: UploadInitiateRequest, user: CurrentUser, service: ServiceDep,
                    idempotency: IdempotencyDep) -> UploadInitiateResponse:
    dataset, url, replayed = service.initiate(user, body, idempotency.key)
    idempotency.answered(replayed)
    return UploadInitiateResponse(upload_url=url, dataset_id=dataset.id, s3_key=dataset.s3_key)


@router.post(
    "/upload-complete",
    response_model=UploadCompleteResponse,
    responses={
        200: ok_example({"message": "Dataset processing initiated", "dataset_id": DATASET_ID}),
        400: error("Invalid input, S3 key mismatch, missing, empty or too large object, or the upload expired",
                   "No object at s3_key: PUT the archive to upload_url before completing the upload"),
        **_NOT_FOUND,
        **_QUOTA,
        **_UNAVAILABLE,
    },
    openapi_extra=body_example({"dataset_id": DATASET_ID, "s3_key": S3_KEY}, **{"x-validation-status": 400}),
    summary="Finish an upload and start validation",
    description="Checks the uploaded object (size, the size declared at initiation, your storage quota: 413 "
    "and the object deleted past it), records its size and ETag and triggers the `dataset_validation` Airflow "
    "DAG, which processes exactly that object: an archive changed after this call ends the dataset in `error` "
    "(\"changed after upload-complete\"). Idempotent: calling it again after success answers 200 without "
    "starting a second run.",
)
def upload_complete(body: UploadCompleteRequest, user: CurrentUser, service: ServiceDep) -> UploadCompleteResponse:
    dataset = service.complete(user, body.dataset_id, body.s3_key)
    return UploadCompleteResponse(message="Dataset processing initiated", dataset_id=dataset.id)


_MULTIPART_BAD = {400: error("Invalid input, unknown upload, upload complete or expired, or S3 refused the parts",
                             "No such multipart upload for this dataset (wrong upload_id, or aborted or completed); "
                             "initiate a new upload")}


@router.post(
    "/multipart/initiate",
    response_model=MultipartInitiateResponse,
    responses={200: ok_example(MULTIPART_INITIATED), **_MULTIPART_BAD,
               409: error("The `Idempotency-Key` was used with another request body, or its dataset no longer "
                          "awaits its upload",
                          "Idempotency-Key 'k-1' was already used at 2026-11-30T17:00:00Z for another request body "
                          "(POST /v1/datasets/multipart/initiate); retry with the same body to get that answer, or "
                          "use a new key for a new request"),
               **_QUOTA, **_UNAVAILABLE},
    openapi_extra=body_example(MultipartInitiateRequest, **{"x-validation-status": 400}),
    summary="Start a multipart upload: returns pre-signed S3 part URLs",
    description="For archives too large for one `PUT` (S3 takes at most 5 GiB in one request; the `qlora` "
    "command uses this above 100 MiB). Creates the dataset (stage `awaiting_upload`) and an S3 multipart upload "
    "split into `part_count` parts of `part_size_bytes` (each URL binds its part's size: S3 answers 403 to any "
    "other; `size_bytes` counts against your storage quota, 413 past it); `PUT` each part to its URL, keep each "
    "answer's `ETag`, "
    "then call `multipart/complete`. `multipart/parts` lists what S3 already holds and re-issues URLs (to resume "
    "or retry), `multipart/abort` deletes everything. Uploads not completed in time are aborted and deleted. "
    "Send an `Idempotency-Key` to retry safely: the same key with the same body within 24 h answers the same "
    "dataset and S3 upload again (header `Idempotent-Replayed: true`) with part URLs signed anew, as long as the "
    "dataset still awaits its upload (409 once it was completed, expired, aborted or deleted); the same key with "
    "another body is 409.",
)
def multipart_initiate(body: MultipartInitiateRequest, user: CurrentUser, service: ServiceDep,
                       idempotency: IdempotencyDep) -> MultipartInitiateResponse:
    upload, replayed = service.initiate_multipart(user, body, idempotency.key)
    idempotency.answered(replayed)
    return MultipartInitiateResponse(
        dataset_id=upload.dataset.id, s3_key=upload.dataset.s3_key, upload_id=upload.upload_id,
        part_size_bytes=upload.part_size, part_count=upload.part_count,
        parts=[PartUrl(part_number=n, url=url) for n, url in upload.urls], expires_at=upload.expires_at,
    )


@router.post(
    "/multipart/parts",
    response_model=MultipartPartsResponse,
    responses={200: ok_example(MULTIPART_PARTS), **_MULTIPART_BAD, **_NOT_FOUND, **_UNAVAILABLE},
    openapi_extra=body_example({"dataset_id": DATASET_ID, "upload_id": UPLOAD_ID, "part_numbers": [2, 3]},
                               **{"x-validation-status": 400}),
    summary="List the uploaded parts and get fresh part URLs (resume, retry)",
    description="The parts S3 already holds for the upload (number, ETag, size) and new pre-signed URLs for "
    "`part_numbers`: a client that was interrupted uploads only the missing parts; one whose URL expired asks "
    "again.",
)
def multipart_parts(body: MultipartPartsRequest, user: CurrentUser, service: ServiceDep) -> MultipartPartsResponse:
    dataset, uploaded, urls, expires_at = service.multipart_parts(user, body.dataset_id, body.upload_id,
                                                                  body.part_numbers)
    return MultipartPartsResponse(
        dataset_id=dataset.id, upload_id=body.upload_id,
        uploaded=[UploadedPartInfo(part_number=p.part_number, etag=p.etag, size_bytes=p.size) for p in uploaded],
        parts=[PartUrl(part_number=n, url=url) for n, url in urls], expires_at=expires_at,
    )


@router.post(
    "/multipart/complete",
    response_model=UploadCompleteResponse,
    responses={200: ok_example({"message": "Dataset processing initiated", "dataset_id": DATASET_ID}),
               **_MULTIPART_BAD, **_NOT_FOUND, **_UNAVAILABLE},
    openapi_extra=body_example(MULTIPART_COMPLETE, **{"x-validation-status": 400}),
    summary="Assemble a multipart upload and start validation",
    description="S3 assembles the archive from the listed parts and ETags; then as `upload-complete`: the size "
    "is checked and the `dataset_validation` DAG runs. Idempotent.",
)
def multipart_complete(body: MultipartCompleteRequest, user: CurrentUser, service: ServiceDep) -> UploadCompleteResponse:
    dataset = service.complete_multipart(user, body.dataset_id, body.upload_id,
                                         [(p.part_number, p.etag) for p in body.parts])
    return UploadCompleteResponse(message="Dataset processing initiated", dataset_id=dataset.id)


@router.post(
    "/multipart/abort",
    response_model=MessageResponse,
    responses={
        200: ok_example({"message": f"Upload of dataset {DATASET_ID} aborted; nothing of it is left"}),
        400: error("A field is invalid (`detail` names it)", "dataset_id: is required"),
        **_NOT_FOUND,
        409: error("The upload is complete: delete the dataset instead",
                   "The upload of this dataset is complete; delete the dataset instead"),
        **_UNAVAILABLE,
    },
    openapi_extra=body_example({"dataset_id": DATASET_ID}, **{"x-validation-status": 400}),
    summary="Abort an upload: its parts, objects and the dataset are deleted",
    description="Aborts the S3 multipart upload, deletes the parts S3 holds and any object under the dataset's "
    "prefix, and the dataset itself: nothing of an abandoned upload is left. Only for an upload not yet "
    "completed; a completed one is deleted with `DELETE /v1/datasets/{dataset_id}`.",
)
def multipart_abort(body: MultipartAbortRequest, user: CurrentUser, service: ServiceDep) -> MessageResponse:
    service.abort_multipart(user, body.dataset_id)
    return MessageResponse(message=f"Upload of dataset {body.dataset_id} aborted; nothing of it is left")


@router.get(
    "",
    response_model=list[DatasetSummary],
    responses={200: ok_example([DATASET_SUMMARY]), **PAGED_LIST_ROUTE["responses"]},
    openapi_extra=PAGED_LIST_ROUTE["openapi_extra"],
    summary="The user's datasets, newest first",
    description="All your datasets, newest first; `limit` and `offset` return one page of them instead "
    "(`X-Total-Count` counts them all).",
)
def list_datasets(user: CurrentUser, service: ServiceDep, settings: SettingsDep, page: PageDep) -> Response:
    rows = service.list(user, page.limit, page.offset)
    return Response(DatasetSummary.list_json(rows, settings.s3_bucket), media_type="application/json",
                    headers={"X-Total-Count": str(service.count(user))})


@router.get(
    "/{dataset_id}",
    response_model=DatasetDetail,
    responses={200: ok_example(DATASET_DETAIL), **_NOT_FOUND},
    summary="One dataset with its validation summary",
    description="`status` is `processing` while the upload is awaited or validated, then `ready` or `error`; "
    "`stage` is finer (`awaiting_upload`, `validating`, `ready`, `failed`, `expired`). On `error`, `error` names "
    "the first problems (file and row); once `ready`, `stats` summarises the clips, labels, captions and splits.",
)
def get_dataset(dataset_id: str, user: CurrentUser, service: ServiceDep, settings: SettingsDep) -> DatasetDetail:
    return DatasetDetail.from_dataset(service.get(user, dataset_id), settings.s3_bucket)


@router.delete(
    "/{dataset_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses={
        204: {"description": "Deleted: the dataset and every S3 object under its prefix are gone"},
        **_NOT_FOUND,
        409: error("A queued or running training uses it, or it is being validated",
                   "Dataset is used by a queued or running training job; stop the job or wait for it to end"),
        **_UNAVAILABLE,
    },
    summary="Delete a dataset and every S3 object under its prefix",
    description="Deletes the uploaded archive, the extracted files and the validation report. Trainings that "
    "used the dataset keep their adapters.",
)
def delete_dataset(dataset_id: str, user: CurrentUser, service: ServiceDep) -> Response:
    service.delete(user, dataset_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
