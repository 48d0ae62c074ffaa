"""The job's MLflow run as the DAG's tasks keep it (`training.pipeline.mlflow_runs`), against a
real MLflow tracking store and model registry (SQLite): tags, ending a run the engine could not
end, and one registered model version per run however often the task is retried."""

from __future__ import annotations

import pytest

from training import job_spec
from training.pipeline import mlflow_runs

CONF = {"job_id": "job-1", "user": "ada", "model_id": "flamingo-tiny-classification", "dataset_id": "ds-1",
        "output_name": "colours", "epochs": 3}


@pytest.fixture
def mlflow(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("QLORA_MLFLOW_UI_URL", raising=False)
    client = MlflowClient(tracking_uri=uri)
    client.experiment_id = client.create_experiment(job_spec.mlflow_experiment_name("ada"),
                                                    artifact_location=str(tmp_path / "artifacts"))
    return client


def _run(mlflow, job_id: str = "job-1") -> str:
    return mlflow.create_run(mlflow.experiment_id, tags={"job_id": job_id}, run_name="colours").info.run_id


#: a train task: mlflow imported ahead in a thread, the run announced while that import is half done
_ANNOUNCE_DURING_IMPORT = """
import logging, sys, time
from training.pipeline import mlflow_runs
logging.basicConfig(level=logging.WARNING)
assert "mlflow" not in sys.modules
mlflow_runs.import_ahead()
while sum(m.startswith("mlflow") for m in list(sys.modules)) < 250:  # the thread is half way (of ~440)
    time.sleep(0.001)
mlflow_runs.tag_run("0123456789abcdef", {"mlflow.user": "ada", "job_id": "job-1"})
"""


def test_the_run_is_tagged_while_mlflow_is_still_being_imported_ahead():
    """Importing mlflow from two threads at once fails ("partially initialized module
    'mlflow.tracking.fluent'"): runs lost their `mlflow.user` and `job_id` tags that way. Against
    a tracking server that refuses connections, the tagging must get as far as the network (the
    race shows with an HTTP tracking URI, not with SQLite)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": os.getcwd(), "MLFLOW_TRACKING_URI": "http://127.0.0.1:9",
           "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    done = subprocess.run([sys.executable, "-c", _ANNOUNCE_DURING_IMPORT], capture_output=True, text=True,
                          timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "could not tag MLflow run 0123456789abcdef" in done.stderr, done.stderr[-2000:]
    assert "partially initialized" not in done.stderr and "127.0.0.1" in done.stderr, done.stderr[-2000:]

def test_the_run_gets_the_jobs_tags(mlflow):
    run_id = _run(mlflow)
    assert mlflow_runs.tag_run(run_id, mlflow_runs.job_tags(CONF, "train-job-1"))
    tags = mlflow.get_run(run_id).data.tags
    assert {k: tags[k] for k in ("job_id", "user", "dataset_id", "model_id", "output_name", "airflow_dag_id",
                                 "airflow_run_id")} == {
        "job_id": "job-1", "user": "ada", "dataset_id": "ds-1", "model_id": "flamingo-tiny-classification",
        "output_name": "colours", "airflow_dag_id": "qlora_training", "airflow_run_id": "train-job-1"}
    assert not mlflow_runs.tag_run("0" * 32, {"a": "b"})  # no such run: logged, never raised


def test_the_run_of_a_job_is_found_by_its_tag(mlflow):
    _run(mlflow, "other-job")
    run_id = _run(mlflow)
    assert mlflow_runs.find_job_run("qlora/ada", "job-1") == (run_id, mlflow.experiment_id)
    assert mlflow_runs.find_job_run("qlora/ada", "job-9") is None
    assert mlflow_runs.find_job_run("qlora/nobody", "job-1") is None


def test_a_run_left_running_is_ended_with_the_reason(mlflow):
    run_id = _run(mlflow)
    assert mlflow_runs.end_run(run_id, "KILLED", "training stopped by request; no adapter was saved")
    run = mlflow.get_run(run_id)
    assert run.info.status == "KILLED"
    assert run.data.tags["failure_reason"] == "training stopped by request; no adapter was saved"
    finished = _run(mlflow)
    mlflow.set_terminated(finished, "FINISHED")
    assert not mlflow_runs.end_run(finished, "FAILED", "late")  # the engine ended it: left as it is
    assert mlflow.get_run(finished).info.status == "FINISHED"
    assert not mlflow_runs.end_run("0" * 32, "FAILED", "x")  # never raises


def test_the_adapter_is_registered_once_per_run(mlflow):
    run_id = _run(mlflow)
    first = mlflow_runs.register_adapter(run_id, "ada~colours", "job-1")
    assert first == {"name": "ada~colours", "version": "1"}
    assert mlflow_runs.register_adapter(run_id, "ada~colours", "job-1") == first  # a retried task
    second = mlflow_runs.register_adapter(_run(mlflow, "job-2"), "ada~colours", "job-2")
    assert second == {"name": "ada~colours", "version": "2"}  # the registered model exists already
    version = mlflow.get_model_version("ada~colours", "1")
    assert version.source.endswith(f"{run_id}/artifacts/adapter") and version.tags == {"job_id": "job-1"}
    assert mlflow.get_run(run_id).data.tags["registered_model_version"] == "1"


def test_the_link_to_the_run(monkeypatch):
    monkeypatch.delenv("QLORA_MLFLOW_UI_URL", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert mlflow_runs.run_ui_url("7", "abc") == "http://127.0.0.1:5000/#/experiments/7/runs/abc"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///x.db")
    assert mlflow_runs.run_ui_url("7", "abc") is None


def test_the_registered_version_loads_with_pyfunc_and_predicts_like_the_engine(mlflow, tmp_path, tiny_models,
                                                                              colour_dataset):
    """`mlflow.pyfunc.load_model("models:/NAME/VERSION")` of a real (tiny) adapter: its input
    schema is the clip column, its predictions are `python -m training predict`'s."""
    import json
    import io
    from contextlib import redirect_stdout

    import mlflow as mlflow_module
    import pandas as pd

    from training.cli import main

    model = tiny_models("flamingo", "video_classification")
    adapter = tmp_path / "adapter"
    assert main(["run", "--model", str(model), "--data", str(colour_dataset), "--task", "video_classification",
                 "--output", str(adapter), "--epochs", "1", "--batch-size", "8", "--frames", "4",
                 "--mlflow-uri", ""]) == 0
    run_id = _run(mlflow)
    name = job_spec.registered_model_name("ada", "colours")
    registered = mlflow_runs.register_adapter(run_id, name, "job-1", adapter_uri=str(adapter),
                                              base_model_uri=str(model))
    assert registered == {"name": "ada~colours", "version": "1"}
    assert mlflow.get_model_version(name, "1").source.endswith(f"{run_id}/artifacts/model")

    mlflow_module.set_tracking_uri(mlflow._tracking_client.tracking_uri)
    loaded = mlflow_module.pyfunc.load_model(job_spec.registered_model_uri(name, "1"))
    schema = loaded.metadata.get_input_schema()
    assert schema.input_names() == ["clip"] and schema.input_types()[0].name == "string"
    clips = sorted(str(p) for p in (colour_dataset / "clips").glob("*.mp4"))[:4]
    got = loaded.predict(pd.DataFrame({"clip": clips}))
    engine = []
    for clip in clips:
        out = io.StringIO()
        with redirect_stdout(out):
            assert main(["predict", "--model", str(model), "--adapter", str(adapter), "--clip", clip]) == 0
        engine.append(json.loads(out.getvalue().strip().splitlines()[-1])["label"])
    assert list(got["prediction"]) == engine and set(engine) <= {"blue", "red"}
