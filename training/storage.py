"""The S3 key layout of the platform: the one place that says where things live.

    datasets/{dataset_id}/{file_name}           the uploaded archive (as the user named it)
    datasets/{dataset_id}/files/...             the extracted, validated dataset folder
    datasets/{dataset_id}/validation/report.json  the validation report (GX results, stats)
    models/{model_id}/                          base model weights, config, tokenizer, processor
    trainings/{job_id}/adapter/                 the trained LoRA adapter (+ processor files)
    trainings/{job_id}/checkpoints/             resumable training checkpoints
"""

from __future__ import annotations

DATASETS = "datasets"
MODELS = "models"
TRAININGS = "trainings"


def dataset_prefix(dataset_id: str) -> str:
    return f"{DATASETS}/{dataset_id}/"


def dataset_upload_key(dataset_id: str, safe_file_name: str) -> str:
    return f"{dataset_prefix(dataset_id)}{safe_file_name}"


def dataset_files_prefix(dataset_id: str) -> str:
    return f"{dataset_prefix(dataset_id)}files/"


def dataset_report_key(dataset_id: str) -> str:
    return f"{dataset_prefix(dataset_id)}validation/report.json"


def model_prefix(model_id: str) -> str:
    return f"{MODELS}/{model_id}/"


def training_prefix(job_id: str) -> str:
    return f"{TRAININGS}/{job_id}/"


def adapter_prefix(job_id: str) -> str:
    return f"{training_prefix(job_id)}adapter/"


def checkpoints_prefix(job_id: str) -> str:
    return f"{training_prefix(job_id)}checkpoints/"


def s3_uri(bucket: str, key: str) -> str:
    return f"s3://{bucket}/{key}"


def split_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/some/key` -> (`bucket`, `some/key`)."""
    if not uri.startswith("s3://"):
        raise ValueError(f"not an s3:// URI: {uri}")
    bucket, _, key = uri[len("s3://"):].partition("/")
    if not bucket:
        raise ValueError(f"no bucket in {uri}")
    return bucket, key
