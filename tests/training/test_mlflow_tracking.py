"""MLflow logging against a real tracking server (artifacts in the test S3): params (every training
parameter as resolved), tags, per-step metrics, per-epoch eval, the adapter artifact; then
`evaluate` adds the final metrics of the adapter and the base model to the same run."""

from __future__ import annotations

import pytest

from training import params
from training.cli import main
from training.result import RunStatus, read_result

pytestmark = pytest.mark.stack


def test_training_run_is_tracked_in_mlflow(tmp_path, tiny_models, colour_dataset, mlflow_uri, s3_env):
    from mlflow import MlflowClient

    out = tmp_path / "out"
    task = "video_classification"
    model = tiny_models("flamingo", task)
    assert main(["run", "--model", str(model), "--data", str(colour_dataset), "--task", task,
                 "--output", str(out), "--epochs", "2", "--batch-size", "4", "--frames", "4", "--seed", "0",
                 "--learning-rate", "2e-3", "--gradient-accumulation-steps", "2", "--eval-every-epochs", "2",
                 "--weight-decay", "0.01", "--warmup-ratio", "0.2", "--mlflow-uri", mlflow_uri,
                 "--run-name", "colour-test", "--job-id", "job-123", "--experiment", "engine-tests"]) == 0

    client = MlflowClient(tracking_uri=mlflow_uri)
    experiment = client.get_experiment_by_name("engine-tests")
    # the MLflow UI opens it in its model-training view
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    result = read_result(out)
    assert result.status == RunStatus.COMPLETED
    assert (result.mlflow_run_id, result.mlflow_experiment_id) == (run.info.run_id, experiment.experiment_id)
    assert run.info.run_name == "colour-test" and run.info.status == "FINISHED"
    assert run.data.tags["job_id"] == "job-123" and run.data.tags["dataset"] == str(colour_dataset)
    # every training parameter, as the run really used it (the model's defaults filled in)
    assert set(params.PARAM_NAMES) <= set(run.data.params)
    assert {k: run.data.params[k] for k in ("lora_rank", "lora_alpha", "gradient_accumulation_steps",
                                           "eval_every_epochs", "weight_decay", "warmup_ratio", "frames",
                                           "max_steps", "seed")} == {
        "lora_rank": "8", "lora_alpha": "16", "gradient_accumulation_steps": "2", "eval_every_epochs": "2",
        "weight_decay": "0.01", "warmup_ratio": "0.2", "frames": "4", "max_steps": "None", "seed": "0"}
    assert run.data.params["target_modules"] == "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
    assert run.data.params["task"] == task
    losses = client.get_metric_history(run.info.run_id, "loss")
    # 24 clips / batch 4 = 6 batches an epoch, 2 per optimizer step: 3 steps an epoch, 2 epochs
    assert sorted(m.step for m in losses) == list(range(1, 7))
    rates = sorted(client.get_metric_history(run.info.run_id, "learning_rate"), key=lambda m: m.step)
    assert rates[0].value == pytest.approx(2e-3)  # int(0.2 x 6) = 1 warm-up step, then linear decay
    assert rates[-1].value == pytest.approx(0.0)
    progress = client.get_metric_history(run.info.run_id, "progress")
    assert max(m.value for m in progress) == pytest.approx(1.0)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "epoch_accuracy")] == [6]  # every 2nd epoch
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "adapter")}
    assert "adapter/adapter_model.safetensors" in artifacts and "adapter/label_map.json" in artifacts
    assert not client.search_model_versions(f"run_id='{run.info.run_id}'")  # registering is the DAG's job

    assert main(["evaluate", "--model", str(model), "--adapter", str(out), "--data", str(colour_dataset),
                 "--output", str(out / "metrics.json"), "--mlflow-uri", mlflow_uri,
                 "--mlflow-run-id", run.info.run_id]) == 0
    logged = client.get_run(run.info.run_id).data.metrics
    assert logged["final_accuracy"] == pytest.approx(read_metrics(out)["adapter"]["accuracy"])
    assert logged["base_accuracy"] == pytest.approx(read_metrics(out)["base"]["accuracy"])


def read_metrics(out):
    import json

    return json.loads((out / "metrics.json").read_text())
