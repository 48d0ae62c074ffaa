"""MLflow logging against a real tracking server (artifacts in the test S3): params, tags,
per-step metrics, per-epoch eval, the adapter artifact and a registered model version."""

from __future__ import annotations

import pytest

from training.cli import main

pytestmark = pytest.mark.stack


def test_training_run_is_tracked_in_mlflow(tmp_path, tiny_models, colour_dataset, mlflow_uri, s3_env):
    from mlflow import MlflowClient

    out = tmp_path / "out"
    task = "video_classification"
    assert main(["run", "--model", str(tiny_models("flamingo", task)), "--data", str(colour_dataset), "--task", task,
                 "--output", str(out), "--epochs", "2", "--batch-size", "4", "--frames", "4", "--seed", "0",
                 "--learning-rate", "2e-3", "--mlflow-uri", mlflow_uri, "--run-name", "colour-test",
                 "--job-id", "job-123", "--experiment", "engine-tests", "--registered-model-name", "engine-test-adapter"]) == 0

    client = MlflowClient(tracking_uri=mlflow_uri)
    runs = client.search_runs([client.get_experiment_by_name("engine-tests").experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.run_name == "colour-test" and run.info.status == "FINISHED"
    assert run.data.tags["job_id"] == "job-123" and run.data.tags["dataset"] == str(colour_dataset)
    assert run.data.params["lora_rank"] == "8" and run.data.params["task"] == task
    losses = client.get_metric_history(run.info.run_id, "loss")
    assert sorted(m.step for m in losses) == list(range(1, 13))  # 24 clips / 4 x 2 epochs
    progress = client.get_metric_history(run.info.run_id, "progress")
    assert max(m.value for m in progress) == pytest.approx(1.0)
    assert len(client.get_metric_history(run.info.run_id, "epoch_accuracy")) == 2
    assert "final_accuracy" in run.data.metrics and "base_accuracy" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "adapter")}
    assert "adapter/adapter_model.safetensors" in artifacts and "adapter/label_map.json" in artifacts
    versions = client.search_model_versions("name='engine-test-adapter'")
    assert [v.run_id for v in versions] == [run.info.run_id]
