"""`/v1/trainings/{job_id}/adapter|checkpoints|evaluation|resume`: what a user takes away from a
job, and continuing it."""

from __future__ import annotations

from fastapi import APIRouter, status

from api.deps import CurrentUser, TrainingsDep
from api.routers.openapi_doc import JOB_ID, JOB_NOT_FOUND, UNAUTHORIZED, error, ok_example
from api.schemas.results import AdapterDownload, CheckpointOut, EvaluationOut
from api.schemas.trainings import ResumeResponse
from api.services.trainings import reads, results
from api.services.trainings import resume as resuming

router = APIRouter(prefix="/trainings", tags=["trainings"], responses=UNAUTHORIZED)

_NOT_FOUND = JOB_NOT_FOUND
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


_PER_CLASS = [{"label": "blue", "precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 4},
              {"label": "red", "precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 4}]
EVALUATION_EXAMPLE = {
    "job_id": JOB_ID, "task": "video_classification", "split": "validation", "held_out_examples": 8,
    "adapter": {"metrics": {"eval_loss": 0.08, "eval_examples": 8, "accuracy": 1.0, "macro_f1": 1.0},
                "per_class": _PER_CLASS,
                "confusion_matrix": {"labels": ["blue", "red"], "matrix": [[4, 0], [0, 4]]}},
    "base": {"metrics": {"eval_loss": 0.69, "eval_examples": 8, "accuracy": 0.5, "macro_f1": 0.33},
             "per_class": [{"label": "blue", "precision": 0.5, "recall": 1.0, "f1": 0.67, "support": 4},
                           {"label": "red", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 4}],
             "confusion_matrix": {"labels": ["blue", "red"], "matrix": [[4, 0], [4, 0]]}},
    "samples": [],
    "mlflow_run_url": "http://127.0.0.1:5000/#/experiments/1/runs/5f0c8e2a9b7d4c1e8a6f3b2d1c0e9f8a",
}


@router.get(
    "/{job_id}/evaluation",
    response_model=EvaluationOut,
    responses={200: ok_example(EVALUATION_EXAMPLE), **_NOT_FOUND,
               409: error("No evaluation yet: the job has not reached (or failed before) its evaluation",
                          f"Job {JOB_ID} has no evaluation yet (running, stage training): the adapter is evaluated "
                          "against the base model once its training completed"),
               503: error("MLflow cannot be read; retry later",
                          "The tracking server (MLflow) cannot be read; retry later (connection refused)")},
    summary="The held-out evaluation of the adapter against the base model",
    description="Read from the job's MLflow run (the report its `evaluate` step logged as "
    "`evaluation/evaluation.json`): the adapter and the base model on the same held-out clips. Classification: "
    "accuracy, macro-F1, eval loss, per-class precision/recall/F1/support and the confusion matrix with its label "
    "order. Captioning: BLEU, ROUGE-L, eval loss and, for up to 20 held-out clips, the reference, the base "
    "model's and the adapter's caption. The run's `evaluation/` artifacts in the MLflow UI show the same as "
    "tables and a confusion matrix picture.",
)
def get_evaluation(job_id: str, user: CurrentUser, trainings: TrainingsDep) -> EvaluationOut:
    job = reads.owned_job(trainings, user, job_id)
    return results.evaluation(trainings, job)


@router.post(
    "/{job_id}/resume",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=ResumeResponse,
    responses={202: ok_example({"message": f"Job {JOB_ID} resumes from the checkpoint at step 12",
                                "job_id": JOB_ID, "status": "queued", "resumed_from_step": 12,
                                "airflow_run_id": f"train-{JOB_ID}-resume-1"}),
               **_NOT_FOUND,
               400: error("The job cannot be resumed: it is queued or running, it completed, it has no uploaded "
                          "checkpoint, or its dataset or model is gone",
                          f"Job {JOB_ID} cannot be resumed: it completed: there is nothing left to train. Only "
                          "stopped or failed jobs with an uploaded checkpoint can be resumed"),
               503: error("Airflow or S3 cannot be reached; retry later",
                          "The pipeline service (Airflow) is unavailable; retry later")},
    summary="Resume a stopped or failed job from its last checkpoint",
    description="Continues a `stopped` or `failed` job from its newest uploaded checkpoint (`GET .../checkpoints`) "
    "to its planned end, through a new Airflow run of the same job (`train-{job_id}-resume-N`): the trainable "
    "weights, optimizer, scheduler, random states and step are restored, the same MLflow run continues from that "
    "step, so the job ends with the metrics an uninterrupted run with the same seed reaches. The job goes back to "
    "`queued`; its detail lists the earlier runs in `previous_runs` and its events record the resumption. "
    "A job that dies mid-training (its process killed, its worker lost) is resumed the same way by Airflow's "
    "retry of the train task, without a request.",
)
def resume_training(job_id: str, user: CurrentUser, trainings: TrainingsDep) -> ResumeResponse:
    job, step = resuming.resume_job(trainings, user, job_id)
    return ResumeResponse(message=f"Job {job.id} resumes from the checkpoint at step {step}", job_id=job.id,
                          status=job.status, resumed_from_step=step, airflow_run_id=job.airflow_run_id or "")
