"""The QLoRA training DAG: it parses cleanly and light, its Params are the job spec's fields
and the training parameters' one definition, the MLflow link plugin loads, validation failures
without retry, and real `dag.test` runs of a tiny job (trained, evaluated, registered; and
stopped) against real S3 (SeaweedFS) and a real MLflow server. The train task's child process
handling is tested with its module: tests/training/pipeline/test_engine_process.py.

Airflow runs in subprocesses with their own AIRFLOW_HOME (a migrated temp SQLite database), so
the configuration of other tests in the session cannot leak in or out."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from devstack.mlflow_server import WORKER_ACCOUNT
from tests.dags.airflow_harness import MARK, REPO, run_python as _python

from training import job_spec, params
from training import s3 as s3_layout

DAG_FILE = REPO / "dags" / "qlora_training.py"
PLUGINS = REPO / "plugins"
HEAVY = ("boto3", "botocore", "pandas", "numpy", "mlflow", "torch", "transformers", "peft",
         "bitsandbytes", "av", "training.trainer", "training.modeling")
TASKS = ["validate_inputs", "prepare", "train", "evaluate", "register", "finalize"]


LOAD_DAG = f"""
    from airflow.dag_processing.dagbag import DagBag
    bag = DagBag(dag_folder={str(DAG_FILE)!r})
    dag = bag.dags.get("qlora_training")
"""


def _with_dag(code: str) -> str:
    return textwrap.dedent(LOAD_DAG) + textwrap.dedent(code)


# --- parsing ------------------------------------------------------------------------------

def test_dag_parses_with_the_job_spec_params(airflow_env):
    result = _python(_with_dag(f"""
        import json
        from airflow.serialization.serialized_objects import DagSerialization
        tasks = {{t.task_id: {{"queue": t.queue, "pool": t.pool, "retries": t.retries,
                              "upstream": sorted(t.upstream_task_ids)}} for t in dag.tasks}}
        serialized = DagSerialization.to_dict(dag)["dag"]["tasks"]
        links = {{t["__var"]["task_id"]: t["__var"].get("_operator_extra_links") for t in serialized}}
        print({MARK!r} + json.dumps({{
            "errors": {{k: str(v) for k, v in bag.import_errors.items()}},
            "dag_ids": sorted(bag.dags), "schedule": str(dag.schedule), "doc": dag.doc_md or "",
            "order": [t.task_id for t in dag.topological_sort()], "tasks": tasks, "links": links,
            "params": {{k: dag.params.get_param(k).schema for k in dag.params}},
            "descriptions": {{k: dag.params.get_param(k).description for k in dag.params}},
            "defaults": {{k: dag.params.get_param(k).value for k in dag.params if dag.params.get_param(k).has_value}},
        }}))
    """), airflow_env)
    assert result["errors"] == {}
    assert result["dag_ids"] == ["qlora_training"]
    assert result["schedule"] == "None"
    assert "QLoRA training" in result["doc"] and "queue `gpu`" in result["doc"]
    assert result["order"] == TASKS
    tasks = result["tasks"]
    assert tasks["train"]["queue"] == "gpu" and tasks["train"]["pool"] == "gpu"
    assert tasks["prepare"]["queue"] == "gpu" and tasks["evaluate"]["queue"] == "gpu"
    assert tasks["register"]["queue"] == "default"  # MLflow bookkeeping needs no GPU
    assert tasks["train"]["retries"] == 2  # an engine lost unasked: each try resumes from the last checkpoint
    assert all(tasks[t]["retries"] > 0 for t in ("validate_inputs", "prepare", "evaluate", "register"))
    assert tasks["evaluate"]["upstream"] == ["prepare", "train"]
    assert tasks["register"]["upstream"] == ["evaluate", "train"]  # only an evaluated adapter
    assert tasks["finalize"]["upstream"] == ["evaluate", "register", "train"]
    assert result["links"]["train"] == {"MLflow run": "_link_MLflowRunLink"}
    assert all(links is None for task, links in result["links"].items() if task != "train")
    # the conf is flat: the job's fields, then one titled field per training parameter
    assert set(result["params"]) == set(job_spec.JOB_FIELDS) | set(params.PARAM_NAMES)
    for name, schema in job_spec.job_field_schemas().items():
        assert result["params"][name] == {k: v for k, v in schema.items() if k not in ("description", "default")}, name
        assert result["descriptions"][name] == schema["description"]
    for name, schema in params.airflow_param_schemas().items():
        expected = {k: v for k, v in schema.items() if k not in ("description", "default")}
        assert result["params"][name] == {**expected, "section": "Training parameters"}, name
        assert result["params"][name]["title"] and result["descriptions"][name] == schema["description"]
    assert result["defaults"] == {  # the job's fields are required, but for its deadline
        "max_runtime_minutes": job_spec.DEFAULT_MAX_RUNTIME_MINUTES,
        **{name: schema["default"] for name, schema in params.airflow_param_schemas().items()
           if schema["default"] is not None}}


def test_dag_file_imports_nothing_heavy(airflow_env):
    result = _python(f"""
        import importlib.util, json, sys
        spec = importlib.util.spec_from_file_location("qlora_training_dag", {str(DAG_FILE)!r})
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        print({MARK!r} + json.dumps([m for m in {HEAVY!r} if m in sys.modules]))
    """, airflow_env)
    assert result == []


GOOD_CONF = {"job_id": "job-1", "user": "user-1", "model_id": "flamingo-tiny-captioning",
             "dataset_id": "ds-1", "output_name": "adapter-1", "epochs": 1, "lora_rank": 4}
#: name: (change to GOOD_CONF (None: drop the key), valid, what the Params schema says when it
#: cannot tell: an unknown top-level key is no Param; validate_inputs rejects it)
CONF_CASES = {
    "good": ({}, True),
    "all_defaults": ({"epochs": None, "lora_rank": None}, True),
    "integral_float": ({"epochs": 3.0}, True),
    "epochs_0": ({"epochs": 0}, False),
    "learning_rate_0": ({"learning_rate": 0}, False),
    "batch_size_65": ({"batch_size": 65}, False),
    "rank_129": ({"lora_rank": 129}, False),
    "rank_string": ({"lora_rank": "8"}, False),
    "dropout_1": ({"lora_dropout": 1.0}, False),
    "warmup_1": ({"warmup_ratio": 1.0}, False),
    "max_steps_0": ({"max_steps": 0}, False),
    "frames_0": ({"frames": 0}, False),
    "seed_negative": ({"seed": -1}, False),
    "vision_tower": ({"target_modules": ["vision_tower"]}, False),
    "unknown_param": ({"epoch": 3}, False, "ok"),
    "output_name": ({"output_name": "has space"}, False),
    "unknown_model": ({"model_id": "gpt-5"}, False),
    "job_id_path": ({"job_id": "../x"}, False),
    "job_id_missing": ({"job_id": None}, False),
}


def _conf(change: dict) -> dict:
    return {k: v for k, v in {**GOOD_CONF, **change}.items() if v is not None}


@pytest.fixture(scope="module")
def param_checks(airflow_env) -> dict[str, str]:
    """What the DAG's Params say about each conf (as a trigger from the UI or REST would)."""
    confs = {name: _conf(case[0]) for name, case in CONF_CASES.items()}
    return _python(_with_dag(f"""
        import copy, json, sys
        out = {{}}
        for name, conf in json.loads(sys.argv[1]).items():
            params = copy.deepcopy(dag.params)
            try:
                params.update(conf)
                params.validate()
                out[name] = "ok"
            except Exception as exc:
                out[name] = type(exc).__name__ + ": " + str(exc)
        print({MARK!r} + json.dumps(out))
    """), airflow_env, json.dumps(confs))


@pytest.mark.parametrize("name", list(CONF_CASES))
def test_params_schema_rejects_what_the_api_rejects(param_checks, name):
    change, valid, *schema_says = CONF_CASES[name]
    if schema_says:
        assert param_checks[name] == schema_says[0]
    else:
        assert (param_checks[name] == "ok") == valid, param_checks[name]
    # and the job spec's Python checks (the API's and validate_inputs') agree
    assert (job_spec.validate_job_conf(_conf(change)) == []) == valid


def test_the_plugin_registers_the_mlflow_link(airflow_env):
    result = _python(f"""
        import json
        from airflow import plugins_manager
        links = plugins_manager.get_operator_extra_links()
        names = [p.name for p in plugins_manager.get_plugins()] if hasattr(plugins_manager, "get_plugins") else []
        print({MARK!r} + json.dumps({{"links": [type(l).__name__ for l in links],
                                      "link_names": [l.name for l in links]}}))
    """, airflow_env)
    assert "MLflowRunLink" in result["links"] and "MLflow run" in result["link_names"]


def test_the_link_points_at_the_run_in_the_mlflow_ui(monkeypatch):
    sys.path.insert(0, str(PLUGINS))
    try:
        import qlora_mlflow_link as plugin
    finally:
        sys.path.remove(str(PLUGINS))
    values = {job_spec.XCOM_MLFLOW_RUN_ID: "abc123", job_spec.XCOM_MLFLOW_EXPERIMENT_ID: "7"}

    class FakeXCom:
        @staticmethod
        def get_value(*, ti_key, key):
            return values.get(key)

    import airflow.sdk.execution_time.xcom as xcom_module
    monkeypatch.setattr(xcom_module, "XCom", FakeXCom)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000/")
    monkeypatch.delenv("QLORA_MLFLOW_UI_URL", raising=False)
    link = plugin.MLflowRunLink()
    assert link.get_link(None, ti_key=object()) == "http://127.0.0.1:5000/#/experiments/7/runs/abc123"
    monkeypatch.setenv("QLORA_MLFLOW_UI_URL", "https://mlflow.example.com")
    assert link.get_link(None, ti_key=object()) == "https://mlflow.example.com/#/experiments/7/runs/abc123"
    monkeypatch.delenv("QLORA_MLFLOW_UI_URL")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///x.db")  # no UI to link to
    assert link.get_link(None, ti_key=object()) == ""
    values.clear()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert link.get_link(None, ti_key=object()) == ""  # no run yet


# --- real runs (dag.test) ----------------------------------------------------------------

RUNNER = f"""
    import json, os, sys, time
    from airflow.dag_processing.dagbag import DagBag
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    dag = DagBag(dag_folder=sys.argv[1]).dags["qlora_training"]
    results = {{}}
    for name, conf in json.loads(sys.argv[2]).items():
        start = time.perf_counter()
        run = dag.test(run_conf=conf)
        seconds = time.perf_counter() - start
        tis = {{ti.task_id: [str(ti.state), ti.try_number] for ti in run.get_task_instances()}}
        durations = {{ti.task_id: round(ti.duration or 0, 2) for ti in run.get_task_instances()}}
        with create_session() as session:
            xcoms = {{f"{{x.task_id}}.{{x.key}}": XComModel.deserialize_value(x)
                     for x in session.query(XComModel).filter(XComModel.run_id == run.run_id)}}
        links = {{}}
        if tis.get("train", [None])[0] in ("success", "failed"):
            from airflow.models.dagbag import DBDagBag
            from airflow.serialization.serialized_objects import DagSerialization
            from airflow.serialization.definitions.baseoperator import SerializedBaseOperator
            sdag = DagSerialization.from_dict(DagSerialization.to_dict(dag))
            train = sdag.get_task("train")
            ti = next(t for t in run.get_task_instances() if t.task_id == "train")
            links = {{name: train.get_extra_links(ti, name) for name in train.extra_links}}
        results[name] = {{"state": str(run.state), "tis": tis, "seconds": round(seconds, 2),
                         "xcoms": xcoms, "links": links, "durations": durations}}
    print({MARK!r} + json.dumps(results, default=str))
"""


def _run_dags(env: dict[str, str], confs: dict[str, dict], cwd: Path, timeout: int = 600) -> dict:
    return _python(RUNNER, env, str(DAG_FILE), json.dumps(confs), timeout=timeout, cwd=cwd, log=cwd / "dag-test.log")


def _put_report(client, bucket: str, dataset_id: str, *, valid: bool, tasks: list[str]) -> None:
    report = {"dataset_id": dataset_id, "valid": valid, "errors": [] if valid else ["clips/a.mp4: unreadable"],
              "file_count": 1, "total_size_bytes": 1, "clip_count": 8, "tasks": tasks}
    client.put_object(Bucket=bucket, Key=s3_layout.dataset_report_key(dataset_id), Body=json.dumps(report).encode())


@pytest.mark.stack
def test_bad_requests_fail_in_validate_inputs_without_retry(airflow_env, s3, tmp_path):
    client = s3.client()
    labels_only, invalid = f"ds-{uuid.uuid4().hex[:8]}", f"ds-{uuid.uuid4().hex[:8]}"
    _put_report(client, s3.bucket, labels_only, valid=True, tasks=["video_classification"])
    _put_report(client, s3.bucket, invalid, valid=False, tasks=["video_captioning"])
    base = {"user": "u1", "model_id": "flamingo-tiny-captioning", "output_name": "a1"}
    confs = {
        "no_report": {**base, "job_id": "j-none", "dataset_id": "ds-never-uploaded"},
        "wrong_task": {**base, "job_id": "j-task", "dataset_id": labels_only},
        "invalid": {**base, "job_id": "j-invalid", "dataset_id": invalid},
        "rank": {**base, "job_id": "j-rank", "dataset_id": labels_only, "model_id": "flamingo-tiny-classification",
                 "lora_rank": 17},
        "unknown_param": {**base, "job_id": "j-unknown", "dataset_id": labels_only,
                          "model_id": "flamingo-tiny-classification", "epoch": 3},  # no Param rejects it
    }
    env = {**airflow_env, **s3.env()}
    runs = _run_dags(env, confs, tmp_path, timeout=300)
    print("validate_inputs seconds:", {name: run["durations"]["validate_inputs"] for name, run in runs.items()})
    for name, run in runs.items():
        assert run["state"] == "failed", (name, run)
        assert run["tis"]["validate_inputs"] == ["failed", 1], (name, run)  # no retry
        assert run["tis"]["train"][0] == "upstream_failed"
    log = (tmp_path / "dag-test.log").read_text()
    assert "dataset ds-never-uploaded has no validation report" in log
    assert ("the dataset does not fit model flamingo-tiny-captioning: it needs a dataset for "
            "video_captioning (a 'caption' for every clip); the dataset supports: video_classification") in log
    assert f"dataset {invalid} is not valid: clips/a.mp4: unreadable" in log
    assert "lora_rank must be between 1 and 16 for model flamingo-tiny-classification, got 17" in log
    assert "unknown training parameter 'epoch'" in log


@pytest.mark.stack
@pytest.mark.e2e
def test_a_tiny_job_trains_end_to_end(airflow_env, s3, mlflow_uri, mlflow_server, tmp_path):
    client = s3.client()
    model_id, dataset_id = _seed_tiny_job(client, s3.bucket, tmp_path)

    job_id = f"job-{uuid.uuid4().hex[:8]}"
    conf = {"job_id": job_id, "user": "alice", "model_id": model_id, "dataset_id": dataset_id,
            "output_name": "tiny-colours", "epochs": 1, "batch_size": 2, "lora_rank": 4}
    env = {**airflow_env, **s3.env(), **mlflow_server.env(WORKER_ACCOUNT)}  # the workers' MLflow account
    run = _run_dags(env, {"tiny": conf}, tmp_path)["tiny"]
    print("dag.test seconds for a tiny job:", run["seconds"], "per task:", run["durations"])
    assert run["state"] == "success", ((tmp_path / "dag-test.log").read_text()[-6000:], run)
    assert all(run["tis"][t] == ["success", 1] for t in TASKS), run["tis"]

    resolved = run["xcoms"]["validate_inputs.return_value"]  # every default filled in, rank as asked
    assert resolved == {**resolved, "epochs": 1, "batch_size": 2, "lora_rank": 4} and set(resolved) == set(params.PARAM_NAMES)
    assert resolved["lora_alpha"] and resolved["target_modules"] and resolved["frames"]
    result = run["xcoms"]["finalize.return_value"]
    adapter_prefix = s3_layout.adapter_prefix(job_id)
    assert result["output_path"] == s3_layout.s3_uri(s3.bucket, adapter_prefix)
    keys = {o["Key"][len(adapter_prefix):] for o in
            client.list_objects_v2(Bucket=s3.bucket, Prefix=adapter_prefix).get("Contents", [])}
    assert {"adapter_model.safetensors", "adapter_config.json", "metrics.json"} <= keys  # metrics: evaluate's
    metrics = result["metrics"]
    assert metrics["task"] == "video_classification" and metrics["held_out_examples"] > 0, metrics
    assert "accuracy" in metrics["adapter"] and "accuracy" in metrics["base"], metrics
    # evaluated by the training's engine (model loaded once) and registered by the train task:
    # evaluate and register only pass them on, without a second engine (issue 16)
    trained = run["xcoms"]["train.return_value"]
    assert trained["evaluation"] == metrics and trained["registered_model"] == result["registered_model"]
    log = (tmp_path / "dag-test.log").read_text()
    assert "evaluated adapter and base model on" in log and "held-out metrics (evaluated by the training's engine)" in log
    assert "registered by the train task: alice~tiny-colours version" in log and "training evaluate" not in log
    worker_cache = Path(airflow_env["QLORA_CACHE_DIR"])
    assert not (worker_cache / "trainings" / job_id).exists()  # the job's folders are gone from the worker
    assert (worker_cache / "models" / model_id).is_dir()  # the cache's model stays for the next job

    run_id = run["xcoms"]["train.mlflow_run_id"]
    assert result["mlflow_run_id"] == run_id
    experiment_id = run["xcoms"]["train.mlflow_experiment_id"]
    expected_link = job_spec.mlflow_run_ui_url(mlflow_uri, experiment_id, run_id)
    assert run["links"] == {"MLflow run": expected_link}  # what the Airflow UI shows

    from mlflow.tracking import MlflowClient

    mlflow = MlflowClient(tracking_uri=mlflow_uri)
    mlflow_run = mlflow.get_run(run_id)
    assert mlflow_run.info.status == "FINISHED"
    assert mlflow_run.info.run_name == "tiny-colours"
    assert mlflow.get_experiment(experiment_id).name == "qlora/alice"
    tags = mlflow_run.data.tags
    assert (tags["job_id"], tags["user"], tags["dataset_id"], tags["model_id"]) == (job_id, "alice", dataset_id, model_id)
    assert mlflow_run.data.metrics, "the engine logged no metrics into the job's run"
    assert {"final_accuracy", "base_accuracy"} <= set(mlflow_run.data.metrics)  # logged by evaluate
    assert len(mlflow.search_runs([experiment_id], f"tags.job_id = '{job_id}'")) == 1  # one run per job
    versions = mlflow.search_model_versions(f"run_id = '{run_id}'")
    assert [v.name for v in versions] == [result["registered_model"]["name"]] == ["alice~tiny-colours"]
    assert versions[0].source.endswith("/model")  # the pyfunc model (training/mlflow_model.py)


def _seed_tiny_job(client, bucket: str, tmp_path: Path, clips: int = 8) -> tuple[str, str]:
    """A tiny classification model and a generated dataset (with its report) in S3."""
    from training.data.synthetic import make_dataset

    model_id = "flamingo-tiny-classification"
    model_dir = tmp_path / "model"
    if not model_dir.is_dir():
        build = subprocess.run([sys.executable, "-m", "training", "build-tiny", "--architecture", "flamingo",
                                "--task", "video_classification", "--out", str(model_dir), "--catalog-id",
                                model_id, "--labels", "blue,red"], capture_output=True, text=True, timeout=300)
        assert build.returncode == 0, build.stderr[-3000:]
    for path in model_dir.rglob("*"):
        if path.is_file():
            client.upload_file(str(path), bucket, s3_layout.model_prefix(model_id) + path.relative_to(model_dir).as_posix())
    dataset_id = f"ds-{uuid.uuid4().hex[:8]}"
    data_dir = make_dataset(tmp_path / dataset_id, clips)
    for path in data_dir.rglob("*"):
        if path.is_file():
            client.upload_file(str(path), bucket,
                               s3_layout.dataset_files_prefix(dataset_id) + path.relative_to(data_dir).as_posix())
    _put_report(client, bucket, dataset_id, valid=True, tasks=["video_classification", "video_captioning"])
    return model_id, dataset_id


@pytest.mark.stack
@pytest.mark.e2e
def test_sigterm_stops_the_training_and_keeps_the_partial_adapter(airflow_env, s3, mlflow_uri, mlflow_server,
                                                                 tmp_path):
    """What a stop does to the train task: SIGTERM (Airflow's kill) -> the engine saves its
    adapter, uploads it and exits 75 -> the task reads where from the result manifest, the
    MLflow run is KILLED, the run fails, the job's folder leaves the worker."""
    client = s3.client()
    model_id, dataset_id = _seed_tiny_job(client, s3.bucket, tmp_path, clips=16)
    job_id = f"job-{uuid.uuid4().hex[:8]}"
    conf = {"job_id": job_id, "user": "bob", "model_id": model_id, "dataset_id": dataset_id,
            "output_name": "long-one", "epochs": 100, "batch_size": 1, "lora_rank": 4}
    env = {**airflow_env, **s3.env(), **mlflow_server.env(WORKER_ACCOUNT)}  # the workers' MLflow account
    runner = subprocess.Popen([sys.executable, "-c", textwrap.dedent(RUNNER), str(DAG_FILE), json.dumps({"stop": conf})],
                              env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    stop_sent = engine_exited = None
    try:
        assert runner.stdout is not None
        for line in runner.stdout:
            lines.append(line)
            if stop_sent is None and "step 2/" in line:
                stop_sent = time.monotonic()
                runner.send_signal(signal.SIGTERM)
            if engine_exited is None and "training process exited with code" in line:
                engine_exited = time.monotonic()
        runner.wait(timeout=120)
    finally:
        if runner.poll() is None:
            runner.kill()
    output = "".join(lines)
    assert stop_sent is not None, output[-6000:]
    exited = [line for line in lines if "training process exited with code" in line]
    assert exited and "exited with code 75" in exited[0], output[-6000:]
    print(f"stop: SIGTERM to engine exit (adapter saved) {engine_exited - stop_sent:.2f} s")
    assert engine_exited - stop_sent < 5  # Airflow sends SIGKILL ~5 s after SIGTERM
    result = json.loads(next(line for line in lines if line.startswith(MARK))[len(MARK):])["stop"]
    assert result["state"] == "failed"
    assert result["tis"]["train"] == ["failed", 1]
    assert result["tis"]["evaluate"][0] == "upstream_failed"
    adapter_prefix = s3_layout.adapter_prefix(job_id)
    assert f"training stopped by request; partial adapter at s3://{s3.bucket}/{adapter_prefix}" in output
    keys = {o["Key"][len(adapter_prefix):] for o in
            client.list_objects_v2(Bucket=s3.bucket, Prefix=adapter_prefix).get("Contents", [])}
    assert {"adapter_model.safetensors", "adapter_config.json"} <= keys
    run_id = result["xcoms"]["train.mlflow_run_id"]
    from mlflow.tracking import MlflowClient

    mlflow_run = MlflowClient(tracking_uri=mlflow_uri).get_run(run_id)
    assert mlflow_run.info.status == "KILLED"
    assert mlflow_run.data.tags["job_id"] == job_id
    assert result["links"]["MLflow run"].endswith(f"/runs/{run_id}")
    assert not (Path(airflow_env["QLORA_CACHE_DIR"]) / "trainings" / job_id).exists()


@pytest.mark.stack
@pytest.mark.e2e
@pytest.mark.slow
def test_a_stop_request_stops_only_the_training_and_a_late_one_changes_nothing(airflow_env, s3, tmp_path):
    """The API's stop (`training.s3.training_stop_key`) as the train task reads it: during
    training the task stops its engine (partial adapter kept), the run fails; written once the
    training ended it changes nothing: evaluate and register run, the run succeeds."""
    client = s3.client()
    model_id, dataset_id = _seed_tiny_job(client, s3.bucket, tmp_path, clips=16)
    stopped, late, early = (f"job-{uuid.uuid4().hex[:8]}" for _ in range(3))
    base = {"user": "carol", "model_id": model_id, "dataset_id": dataset_id, "batch_size": 1, "lora_rank": 4}
    confs = {"stopped": {**base, "job_id": stopped, "output_name": "stopped", "epochs": 100},
             "late": {**base, "job_id": late, "output_name": "late", "epochs": 1},
             "early": {**base, "job_id": early, "output_name": "early", "epochs": 1}}
    env = {k: v for k, v in {**airflow_env, **s3.env()}.items() if not k.startswith("MLFLOW_")}  # no tracking

    def ask_stop(job_id: str) -> float:
        client.put_object(Bucket=s3.bucket, Key=s3_layout.training_stop_key(job_id),
                          Body=json.dumps({"run_id": None, "requested_at": "now"}).encode())
        return time.monotonic()

    ask_stop(early)  # before its run: the train task finds it before starting an engine
    runner = subprocess.Popen([sys.executable, "-c", textwrap.dedent(RUNNER), str(DAG_FILE), json.dumps(confs)],
                              env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    asked = exited = late_asked = None
    try:
        assert runner.stdout is not None
        for line in runner.stdout:
            lines.append(line)
            if asked is None and "step 2/" in line:
                asked = ask_stop(stopped)
            elif asked is not None and exited is None and "training process exited with code" in line:
                exited = time.monotonic()
            elif exited is not None and late_asked is None and "training process exited with code 0" in line:
                late_asked = ask_stop(late)  # the second job's training just ended: evaluate comes next
        runner.wait(timeout=300)
    finally:
        if runner.poll() is None:
            runner.kill()
    output = "".join(lines)
    (tmp_path / "runner.log").write_text(output)
    assert asked is not None and exited is not None and late_asked is not None, f"see {tmp_path / 'runner.log'}"
    print(f"stop request in S3 to engine exit (adapter saved): {exited - asked:.2f} s")
    assert exited - asked < 15  # polled every 2 s, then one step and the upload
    results = json.loads(next(line for line in lines if line.startswith(MARK))[len(MARK):])
    first, second = results["stopped"], results["late"]
    assert first["state"] == "failed" and first["tis"]["train"][0] == "failed", first
    assert first["tis"]["evaluate"][0] == "upstream_failed"
    assert "training process exited with code 75" in output
    prefix = s3_layout.adapter_prefix(stopped)
    assert f"training stopped by request; partial adapter at s3://{s3.bucket}/{prefix}" in output
    assert "adapter_config.json" in {o["Key"][len(prefix):] for o in
                                     client.list_objects_v2(Bucket=s3.bucket, Prefix=prefix).get("Contents", [])}
    assert second["state"] == "success" and all(second["tis"][t][0] == "success" for t in TASKS), second
    # stopped before its engine started: no engine, and the final manifest says so at once (the
    # API's evidence that nothing trains: the job ends `stopped` without waiting for a kill deadline)
    third = results["early"]
    assert third["state"] == "failed" and third["tis"]["train"][0] == "failed", third
    assert not any(early in line and "running:" in line for line in lines)
    final = json.loads(client.get_object(Bucket=s3.bucket, Key=s3_layout.training_result_key(early))["Body"].read())
    assert (final["status"], final["exited"], final["error"]) == (
        "stopped", True, "training stopped by request before it started; no adapter was saved"), final
