"""What a user takes away, end to end on the real stack (API on uvicorn + PostgreSQL, SeaweedFS,
Airflow running `qlora_training`, MLflow): checkpoints listed while the job runs; once completed,
every file of the adapter downloaded through its pre-signed URL (no credentials), checked against
its SHA-256, loaded with `training.inference.load_adapter`, and its predictions equal the
engine's own `predict` on the adapter in S3; the registered MLflow model version (named in the
detail) loads with `mlflow.pyfunc.load_model` and predicts the same labels; the evaluation
endpoint serves the report the evaluate step logged (confusion matrix, per-class table and
picture in the run's artifacts); the run carries `mlflow.user` and its dataset input."""

from __future__ import annotations

import hashlib
import io
import json
import time
from contextlib import redirect_stdout
from pathlib import Path

import httpx
import pytest

from devstack.seed import seed_tiny_models
from tests.e2e.journey import TERMINAL, login, ready_dataset, start_job
from training import s3 as s3_layout

pytestmark = [pytest.mark.e2e, pytest.mark.stack, pytest.mark.timeout(900)]
MODEL = "flamingo-tiny-classification"


def test_checkpoints_live_then_download_and_load_the_adapter(api_server, tmp_path, monkeypatch):
    lines = seed_tiny_models(api_server.s3, tmp_path / "seed.log")
    assert not any("failed" in line for line in lines), lines
    base_url = api_server.base_url.rstrip("/") + "/v1"
    with httpx.Client(base_url=base_url, timeout=60) as api, httpx.Client(base_url=base_url, timeout=60) as other:
        login(api)
        login(other)
        dataset_id = ready_dataset(api, tmp_path)
        job_id = start_job(api, dataset_id, MODEL, "dirs", epochs=3)
        assert other.get(f"/trainings/{job_id}/adapter").status_code == 404

        live, refused, job = [], None, {}
        deadline = time.monotonic() + 420
        while time.monotonic() < deadline:
            job = api.get(f"/trainings/{job_id}").json()
            if job["status"] in TERMINAL:
                break
            if job["status"] == "running" and not live:
                listed = api.get(f"/trainings/{job_id}/checkpoints")
                assert listed.status_code == 200, listed.text
                live = listed.json()
                if refused is None:
                    refused = api.get(f"/trainings/{job_id}/adapter")
            time.sleep(0.3)
        assert job["status"] == "completed", (job.get("error"), job.get("logs"))
        assert refused is not None and refused.status_code == 409 and "once the job completed" in refused.json()["detail"]
        assert live and live[0]["step"] > 0 and live[0]["epoch"] == 1.0, live  # seen while the job ran
        checkpoints = api.get(f"/trainings/{job_id}/checkpoints").json()
        assert [c["epoch"] for c in checkpoints] == [1.0, 2.0]  # once per epoch, not after the last
        assert {"train_loss", "eval_loss", "eval_accuracy"} <= set(checkpoints[-1]["metrics"])

        adapter = api.get(f"/trainings/{job_id}/adapter").json()
        evaluation = api.get(f"/trainings/{job_id}/evaluation")
        detail = api.get(f"/trainings/{job_id}").json()
    assert adapter["partial"] is False

    # the evaluation endpoint serves what the evaluate step logged to the MLflow run
    assert evaluation.status_code == 200, evaluation.text
    report = evaluation.json()
    assert (report["task"], report["split"]) == ("video_classification", "validation")
    assert report["adapter"]["confusion_matrix"]["labels"] == ["blue", "red"]
    for side in ("adapter", "base"):
        matrix = report[side]["confusion_matrix"]["matrix"]
        assert sum(map(sum, matrix)) == report["held_out_examples"] == sum(c["support"] for c in report[side]["per_class"])
        assert report[side]["metrics"]["accuracy"] == pytest.approx(
            sum(matrix[i][i] for i in range(len(matrix))) / report["held_out_examples"])
    from mlflow.tracking import MlflowClient

    mlflow = MlflowClient(tracking_uri=api_server.mlflow_uri)
    run = mlflow.get_run(detail["mlflow_run_id"])
    assert report["adapter"]["metrics"]["accuracy"] == run.data.metrics["final_accuracy"]
    artifacts = {f.path for f in mlflow.list_artifacts(run.info.run_id, "evaluation")}
    assert {"evaluation/evaluation.json", "evaluation/per_class.json", "evaluation/confusion_matrix.png"} <= artifacts
    # the run carries the service user and its dataset as an MLflow input
    assert run.data.tags["mlflow.user"] == run.data.tags["user"] and run.data.tags["user"].startswith("e2e_")
    inputs = run.inputs.dataset_inputs
    assert [i.dataset.name for i in inputs] == [dataset_id] and inputs[0].dataset.source_type == "s3"

    # the registered model: named per user without collisions, linked from the detail
    registered = detail["registered_model"]
    assert registered["name"] == f"{run.data.tags['user']}~dirs" and registered["version"] == "1"
    assert registered["uri"] == f"models:/{registered['name']}/1"
    assert registered["ui_url"] == f"{api_server.mlflow_uri}/#/models/{registered['name']}/versions/1"
    assert mlflow.get_model_version(registered["name"], "1").run_id == run.info.run_id
    folder = tmp_path / "my-adapter"
    folder.mkdir()
    for f in adapter["files"]:  # a plain HTTP client, no credentials
        body = httpx.get(f["download_url"], timeout=60).raise_for_status().content
        assert (len(body), hashlib.sha256(body).hexdigest()) == (f["size_bytes"], f["sha256"])
        (folder / f["name"]).write_bytes(body)
    assert {"adapter_config.json", "adapter_model.safetensors", "label_map.json"} <= {p.name for p in folder.iterdir()}

    # the base model, as a user has it (here: the catalog's tiny one from the stack's S3)
    for name, value in api_server.s3.env().items():
        monkeypatch.setenv(name, value)
    base_dir = tmp_path / "base"
    s3_layout.download_prefix(api_server.s3.client(), api_server.s3.bucket, s3_layout.model_prefix(MODEL), base_dir)

    from training.cli import main
    from training.data.loader import ClipDataset, Example
    from training.evaluation import classify
    from training.inference import load_adapter
    from training.loading import read_base_model
    from training.quantization import compute_dtype, device

    model = load_adapter(base_dir, folder)
    assert type(model).__name__.startswith("Peft") and sorted(model.id2label.values()) == ["blue", "red"]
    base = read_base_model(base_dir)
    clips = sorted((tmp_path / "data" / "squares").rglob("*.mp4"))[:3]
    labels = []
    label2id = {label: i for i, label in model.id2label.items()}
    frames = json.loads((folder / "training_info.json").read_text())["frames"]
    for clip in clips:
        dataset = ClipDataset([Example(clip.name, clip, label=model.id2label[0])], task="video_classification",
                              family=base.family, prep=base.prep, tokenizer=base.tokenizer, frames=frames,
                              label2id=label2id)
        probs = classify(model, base.family, base.prep, dataset, 0, device(), compute_dtype(device()))
        out = io.StringIO()
        with redirect_stdout(out):  # the engine's predict, on the adapter as the job left it in S3
            assert main(["predict", "--model", str(base_dir), "--adapter", s3_layout.s3_uri(
                api_server.s3.bucket, s3_layout.adapter_prefix(job_id)), "--clip", str(clip)]) == 0
        engine = json.loads(out.getvalue().strip().splitlines()[-1])
        mine = {model.id2label[i]: round(float(p), 6) for i, p in enumerate(probs)}
        assert engine["probabilities"] == pytest.approx(mine, abs=1e-5), clip
        assert engine["label"] == max(mine, key=mine.get)
        labels.append(engine["label"])

    # the registered version loads with MLflow alone and predicts what the engine predicts
    import mlflow as mlflow_module
    import pandas as pd

    mlflow_module.set_tracking_uri(api_server.mlflow_uri)
    loaded = mlflow_module.pyfunc.load_model(registered["uri"])
    assert loaded.metadata.get_input_schema().input_names() == ["clip"]
    predicted = loaded.predict(pd.DataFrame({"clip": [str(c) for c in clips]}))
    assert list(predicted["prediction"]) == labels
