"""`/v1/trainings/{job_id}/adapter|checkpoints`: what a user takes away from a job."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import CurrentUser, TrainingsDep
from api.routers.openapi_doc import JOB_ID, UNAUTHORIZED, error, ok_example
from api.schemas.results import AdapterDownload, CheckpointOut
from api.services.trainings import reads, results

router = APIRouter(prefix="/trainings", tags=["trainings"], responses=UNAUTHORIZED)

_NOT_FOUND = {404: error("No such job of yours", "Training job not found")}
_UNAVAILABLE = {503: error("S3 cannot be reached; retry later", "Storage (S3) is unavailable; retry later")}
_EXPIRES = "2026-11-25T11:02:00Z"
_URL = "https://s3.example.com/qlora/trainings/" + JOB_ID + "/{path}?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Expires=3600&..."


def _file(path: str, size: int, sha: str) -> dict:
    return {"name": path.rsplit("/", 1)[-1], "size_bytes": size, "sha256": sha, "download_url": _URL.format(path=path)}


ADAPTER_EXAMPLE = {
    "job_id": JOB_ID, "partial": False, "expires_at": _EXPIRES,
    "files": [_file("adapter/adapter_config.json", 912, "3b1f" + "0" * 60),
              _file("adapter/adapter_model.safetensors", 1_245_184, "9c4e" + "1" * 60),
              _file("adapter/label_map.json", 88, "e0a2" + "2" * 60),
              _file("adapter/preprocessing_config.json", 214, "51d7" + "3" * 60),
              _file("adapter/tokenizer.json", 2_301, "7f08" + "4" * 60)],
}
CHECKPOINTS_EXAMPLE = [
    {"step": 6, "epoch": 1.0, "created_at": "2026-11-25T10:01:10Z", "expires_at": _EXPIRES,
     "metrics": {"train_loss": 0.61, "eval_loss": 0.58, "eval_accuracy": 0.75},
     "files": [_file("checkpoints/step-0000006/state.pt", 40_123, "aa01" + "5" * 60),
               _file("checkpoints/step-0000006/trainable.safetensors", 331_776, "bb02" + "6" * 60)]},
    {"step": 12, "epoch": 2.0, "created_at": "2026-11-25T10:01:40Z", "expires_at": _EXPIRES,
     "metrics": {"train_loss": 0.32, "eval_loss": 0.35, "eval_accuracy": 1.0},
     "files": [_file("checkpoints/step-0000012/state.pt", 40_123, "cc03" + "7" * 60),
               _file("checkpoints/step-0000012/trainable.safetensors", 331_776, "dd04" + "8" * 60)]},
]


@router.get(
    "/{job_id}/adapter",
    response_model=AdapterDownload,
    responses={200: ok_example(ADAPTER_EXAMPLE), **_NOT_FOUND,
               409: error("Nothing to download yet: the job is queued or running, failed, or stopped before it "
                          "saved a partial adapter",
                          f"Job {JOB_ID} is running: its adapter can be downloaded once the job completed (or once "
                          "stopped, when it saved a partial adapter)"),
               **_UNAVAILABLE},
    summary="Download links of the job's adapter",
    description="For a `completed` job its LoRA adapter; for a `stopped` one the partial adapter it saved "
    "(`partial: true`). Each file comes with its size, its SHA-256 (recorded by the training engine as it saved "
    "it) and a pre-signed GET URL that needs no credentials until `expires_at`. Save all files in one folder and "
    "load it with `training.inference.load_adapter(base_dir, adapter_dir)` (README: *Using your adapter*), or run "
    "`qlora train download JOB_ID -o DIR`.",
)
def get_adapter(job_id: str, user: CurrentUser, trainings: TrainingsDep) -> AdapterDownload:
    job = reads.owned_job(trainings, user, job_id)
    return results.adapter_download(trainings, job)


@router.get(
    "/{job_id}/checkpoints",
    response_model=list[CheckpointOut],
    responses={200: ok_example(CHECKPOINTS_EXAMPLE), **_NOT_FOUND, **_UNAVAILABLE},
    summary="The job's uploaded checkpoints, newest last",
    description="The resumable checkpoints the training uploaded as it went (every `checkpoint_every_steps`, by "
    "default once per epoch after its evaluation; the last two are kept), listed while the job runs too. Each "
    "has its step, epoch, time, the training loss and last held-out metrics, and pre-signed downloads of its "
    "files. Empty before the first checkpoint.",
)
def list_checkpoints(job_id: str, user: CurrentUser, trainings: TrainingsDep) -> list[CheckpointOut]:
    job = reads.owned_job(trainings, user, job_id)
    return results.list_checkpoints(trainings, job)
