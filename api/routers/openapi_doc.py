"""What the routes add to the OpenAPI schema beyond their types: examples and documented errors.

Every operation of the API documents (and `tests/docs/test_openapi_complete.py` checks):
a `summary`, a `description`, a readable operation id (the route function's name in camelCase,
or `operation_id=`), an example of its request body (`openapi_extra=body_example(...)`), an
example of its success response (`responses={200: ok_example(...)}`, or the route's status code)
and each error it can answer with an example (`error(...)`). The examples are checked against
the schemas. `docs/openapi.json` is this schema exported by `make docs`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from api.schemas.common import ErrorResponse
from training.architectures import ARCHITECTURES
from training.catalog import load_catalog

JSON = "application/json"


def error(description: str, detail: str) -> dict[str, Any]:
    """A documented error response: when it happens, and the `detail` it carries."""
    return {"model": ErrorResponse, "description": description,
            "content": {JSON: {"example": {"detail": detail}}}}


def ok_example(example: Any, description: str | None = None) -> dict[str, Any]:
    """The example of a success response (merged with the route's `response_model`)."""
    out: dict[str, Any] = {"content": {JSON: {"example": example}}}
    if description:
        out["description"] = description
    return out


def body_example(example: Any | type[BaseModel], **extra: Any) -> dict[str, Any]:
    """`openapi_extra` of a route with a JSON body: its example (a model class: the first of
    its `examples`), plus other `openapi_extra` keys (e.g. `**{"x-validation-status": 400}`)."""
    if isinstance(example, type) and issubclass(example, BaseModel):
        example = example.model_json_schema()["examples"][0]
    return {"requestBody": {"content": {JSON: {"example": example}}}, **extra}


# --- errors every router shares ---------------------------------------------------------------
UNAUTHORIZED = {401: error("No bearer token, or it is invalid or expired: log in again",
                           "Not authenticated: send `Authorization: Bearer <access_token>`")}

# --- example values (one set, so the examples of the operations tell one story) -------------
#: the 404 of every `/v1/trainings/{job_id}...` route (`reads.owned_job`)
JOB_NOT_FOUND = {404: error("No such job of yours", "Training job not found")}
DATASET_ID = "3f6c2a9e-8d41-4b7a-9c55-0e2b7d1f6a10"
JOB_ID = "b7e2c1d0-5a3f-4e8b-9f61-2c4d8a7e3b95"
S3_KEY = f"datasets/{DATASET_ID}/toy.zip"
CREATED = "2026-11-25T10:00:00Z"

DATASET_SUMMARY = {
    "id": DATASET_ID, "name": "toy", "description": "squares", "s3_path": f"s3://qlora/{S3_KEY}",
    "status": "ready", "stage": "ready", "error": None, "created_at": CREATED,
    "file_count": 33, "total_size_bytes": 81234,
}
DATASET_DETAIL = {
    **DATASET_SUMMARY, "file_name": "toy.zip", "files_path": f"s3://qlora/datasets/{DATASET_ID}/files/",
    "upload_size_bytes": 70412, "upload_etag": "\"3f2a9c0b7d1e4f5a6b7c8d9e0f1a2b3c\"",
    "updated_at": "2026-11-25T10:00:12Z",
    "stats": {"clip_count": 32, "tasks": ["video_classification", "video_captioning"],
              "labels": {"blue": 16, "red": 16}, "splits": {"train": 24, "validation": 4, "test": 4}},
}

def _model_detail(model_id: str) -> dict[str, Any]:
    """A catalog entry as `GET /v1/models/{model_id}` answers it (bucket `qlora`)."""
    m = load_catalog().get(model_id)
    arch = ARCHITECTURES[m.base_architecture]
    return {
        "id": m.id, "name": m.name, "description": m.description, "model_type": m.model_type,
        "base_architecture": m.base_architecture, "version": m.version, "tiny": m.tiny,
        "supported_lora_params": {"min_rank": m.min_rank, "max_rank": m.max_rank, "default_alpha": m.default_alpha},
        "default_target_modules": list(arch.default_target_modules),
        "allowed_target_modules": list(arch.allowed_target_modules),
        "architecture_class": m.architecture_class, "checkpoint": m.checkpoint,
        "weights_uri": f"s3://qlora/models/{m.id}/",
    }


MODEL_DETAIL = _model_detail("flamingo-tiny-classification")

TRAINING_PARAMS = {"epochs": 8, "learning_rate": 0.002, "batch_size": 4, "lora_rank": 8, "lora_alpha": 16,
                   "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
TRAINING_REQUEST = {"model_id": "flamingo-tiny-classification", "dataset_id": DATASET_ID,
                    "output_name": "toy-colour", "training_params": TRAINING_PARAMS}
TRAINING_SUMMARY = {
    "job_id": JOB_ID, "model_id": "flamingo-tiny-classification", "dataset_id": DATASET_ID,
    "output_name": "toy-colour", "status": "running", "stage": "training", "progress": 0.62,
    "created_at": CREATED, "started_at": "2026-11-25T10:00:02Z", "completed_at": None, "output_path": None,
}
TRAINING_DETAIL = {
    **TRAINING_SUMMARY,
    "training_params": {**TRAINING_PARAMS, "gradient_accumulation_steps": 1, "max_steps": None,
                        "warmup_ratio": 0.0, "weight_decay": 0.0, "frames": 4, "eval_every_epochs": 1,
                        "seed": 42},
    "logs": "step 30/48 epoch 5 loss 0.4120 lr 1.30e-03 41.5 samples/s progress 0.625\n",
    "metrics": {"loss": 0.412, "learning_rate": 0.0013, "progress": 0.62, "epoch": 5.0, "epoch_accuracy": 0.75},
    "eta_seconds": 9.5, "error": None, "stop_requested": False, "max_runtime_minutes": 1440,
    "mlflow_run_id": "5f0e1d2c3b4a49887766554433221100",
    "mlflow_run_url": "http://127.0.0.1:5000/#/experiments/1/runs/5f0e1d2c3b4a49887766554433221100",
    "airflow_run_url": f"http://127.0.0.1:8080/dags/qlora_training/runs/train-{JOB_ID}",
    "updated_at": "2026-11-25T10:00:20Z",
}

# --- multipart uploads ------------------------------------------------------------------------
UPLOAD_ID = "2~aB3dE5fG7hI9jK1lM3nO5pQ7rS9tU1vW3x"
BIG_S3_KEY = f"datasets/{DATASET_ID}/clips.zip"
EXPIRES = "2026-11-25T11:00:00Z"


def _part_url(n: int) -> dict[str, Any]:
    return {"part_number": n, "url": f"http://127.0.0.1:9000/qlora/{BIG_S3_KEY}?partNumber={n}&uploadId={UPLOAD_ID}"
                                     "&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=..."}


MULTIPART_INITIATED = {"dataset_id": DATASET_ID, "s3_key": BIG_S3_KEY, "upload_id": UPLOAD_ID,
                       "part_size_bytes": 67108864, "part_count": 3, "parts": [_part_url(n) for n in (1, 2, 3)],
                       "expires_at": EXPIRES}
MULTIPART_PARTS = {"dataset_id": DATASET_ID, "upload_id": UPLOAD_ID,
                   "uploaded": [{"part_number": 1, "etag": "\"9b2cf535f27731c974343645a3985328\"",
                                 "size_bytes": 67108864}],
                   "parts": [_part_url(n) for n in (2, 3)], "expires_at": EXPIRES}
MULTIPART_COMPLETE = {"dataset_id": DATASET_ID, "upload_id": UPLOAD_ID, "parts": [
    {"part_number": 1, "etag": "\"9b2cf535f27731c974343645a3985328\""},
    {"part_number": 2, "etag": "\"6f1ed002ab5595859014ebf0951522d9\""},
    {"part_number": 3, "etag": "\"1f3870be274f6c49b3e31a0c6728957f\""}]}

# --- following a job --------------------------------------------------------------------------
TRAINING_EVENTS = {"has_more": False, "data": [
    {"id": 41, "created_at": "2026-11-25T10:00:04Z", "type": "status", "level": "info",
     "message": "Status queued -> running; stage (none) -> downloading",
     "data": {"from_status": "queued", "to_status": "running", "from_stage": None, "to_stage": "downloading"}},
    {"id": 42, "created_at": "2026-11-25T10:00:15Z", "type": "epoch", "level": "info",
     "message": "Epoch 5/8 ended at step 30: accuracy 0.75",
     "data": {"epoch": 5, "step": 30, "metrics": {"accuracy": 0.75}}},
]}
METRIC_HISTORY = {"loss": [{"step": 29, "value": 0.431, "timestamp": "2026-11-25T10:00:14Z"},
                           {"step": 30, "value": 0.412, "timestamp": "2026-11-25T10:00:15Z"}]}
TRAINING_LOG = ("step 29/48 epoch 5 loss 0.4310 lr 1.34e-03 40.9 samples/s progress 0.604\n"
                "step 30/48 epoch 5 loss 0.4120 lr 1.30e-03 41.5 samples/s progress 0.625\n")

# --- webhooks ---------------------------------------------------------------------------------
WEBHOOK_ID = "5c1e7a2b-3d4f-4a6b-8c9d-0e1f2a3b4c5d"
WEBHOOK = {"id": WEBHOOK_ID, "url": "https://example.com/hooks/qlora",
           "events": ["training.completed", "training.failed"], "description": "CI notifications",
           "created_at": CREATED}
WEBHOOK_DELIVERY = {
    "id": "msg_2b7c9d1e4f6a8b0c3d5e7f9a1b3c5d7e", "event": "training.completed", "subject_id": JOB_ID, "status": "delivered",
    "created_at": "2026-11-25T10:00:31Z", "next_attempt_at": None, "delivered_at": "2026-11-25T10:01:02Z",
    "last_error": None,
    "attempts": [
        {"attempt": 1, "at": "2026-11-25T10:00:31Z", "status_code": None, "error": "timed out after 10 s",
         "duration_ms": 10004, "next_retry_at": "2026-11-25T10:01:01Z"},
        {"attempt": 2, "at": "2026-11-25T10:01:01Z", "status_code": 200, "error": None, "duration_ms": 87,
         "next_retry_at": None},
    ],
}
