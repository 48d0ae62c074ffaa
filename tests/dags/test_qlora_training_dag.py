"""The QLoRA training DAG: it parses cleanly and light, its Param schema is the job spec's,
the MLflow link plugin loads, the train task's child process handling (streaming, SIGTERM
forwarding, no orphans), validation failures without retry, and a real `dag.test` run of a
tiny job against real S3 (SeaweedFS) and a real MLflow server.

Airflow runs in subprocesses with their own AIRFLOW_HOME (a migrated temp SQLite database), so
the configuration of other tests in the session cannot leak in or out."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from tests.dags.airflow_harness import MARK, REPO, run_python as _python

from training import job_spec, storage

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
    assert tasks["train"]["retries"] == 0  # never redo the compute
    assert tasks["prepare"]["retries"] > 0 and tasks["validate_inputs"]["retries"] > 0  # transient S3
    assert tasks["finalize"]["upstream"] == ["evaluate", "register", "train"]
    assert result["links"]["train"] == {"MLflow run": "_link_MLflowRunLink"}
    assert all(links is None for task, links in result["links"].items() if task != "train")
    expected = job_spec.job_conf_schema()
    for name, schema in expected.items():
        schema = {k: v for k, v in schema.items() if k not in ("description", "default")}
        assert result["params"][name] == schema, name
    assert result["defaults"] == {"training_params": {}}  # everything else is required


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
             "dataset_id": "ds-1", "output_name": "adapter-1",
             "training_params": {"epochs": 1, "lora_rank": 4}}
CONF_CASES = {
    "good": ({}, True),
    "all_defaults": ({"training_params": {}}, True),
    "epochs_0": ({"training_params": {"epochs": 0}}, False),
    "learning_rate_0": ({"training_params": {"learning_rate": 0}}, False),
    "batch_size_65": ({"training_params": {"batch_size": 65}}, False),
    "rank_129": ({"training_params": {"lora_rank": 129}}, False),
    "dropout_1": ({"training_params": {"lora_dropout": 1.0}}, False),
    "vision_tower": ({"training_params": {"target_modules": ["vision_tower"]}}, False),
    "unknown_param": ({"training_params": {"epoch": 3}}, False),
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
    confs = {name: _conf(change) for name, (change, _) in CONF_CASES.items()}
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
    change, valid = CONF_CASES[name]
    assert (param_checks[name] == "ok") == valid, param_checks[name]
    # and the job spec's Python checks (the API's) agree with the schema
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


# --- the train task's child process --------------------------------------------------------

FAKE_ENGINE = r"""
import os, signal, sys, time
out = sys.argv[1]
def on_term(signum, frame):
    print("stopping: saving the adapter", flush=True)
    open(os.path.join(out, "adapter_config.json"), "w").write("{}")
    sys.exit(75)
signal.signal(signal.SIGTERM, on_term)
print(f"pid {os.getpid()}", flush=True)
for step in range(1, 10_000):
    print(f"step {step}\rstep {step} loss 0.5", flush=True)
    time.sleep(0.05)
"""

RUN_ENGINE = f"""
    import importlib.util, json, os, signal, sys, threading, time
    spec = importlib.util.spec_from_file_location("qlora_training_dag", {str(DAG_FILE)!r})
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    mode, engine, out = sys.argv[1], sys.argv[2], sys.argv[3]
    lines = []
    def on_line(line):
        lines.append(line)
        if line.startswith("step 3 loss"):
            if mode == "stop":
                os.kill(os.getpid(), signal.SIGTERM)  # what Airflow does to the task process
            elif mode == "kill-child":
                os.kill(int(lines[0].split()[1]), signal.SIGKILL)
            elif mode == "kill-parent":
                print("child " + lines[0].split()[1], flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
            elif mode == "kill-supervisor":
                os.kill(os.getppid(), signal.SIGKILL)  # the Celery worker above the task dies
    start = time.monotonic()
    code, stop_at, tail, orphaned = module.run_engine([sys.executable, engine, out], dict(os.environ),
                                                      on_line=on_line)
    stopped = stop_at is not None
    print({MARK!r} + json.dumps({{"code": code, "stopped": stopped, "tail": tail, "orphaned": orphaned,
                                  "reason": module._describe_exit(code, tail),
                                  "seconds": time.monotonic() - start,
                                  "saved": os.path.exists(os.path.join(out, "adapter_config.json"))}}))
"""


@pytest.fixture
def fake_engine(tmp_path) -> Path:
    path = tmp_path / "fake_engine.py"
    path.write_text(FAKE_ENGINE)
    return path


def test_sigterm_is_forwarded_and_the_engine_saves_its_adapter(airflow_env, fake_engine, tmp_path):
    result = _python(RUN_ENGINE, airflow_env, "stop", str(fake_engine), str(tmp_path), timeout=60)
    assert result["code"] == 75 and result["stopped"] is True
    assert result["saved"] is True
    assert result["tail"][-1] == "stopping: saving the adapter"
    assert "step 2" in result["tail"] and "step 2 loss 0.5" in result["tail"]  # \r split, streamed
    assert result["seconds"] < 5


def test_the_engine_is_stopped_when_the_task_supervisor_dies(airflow_env, fake_engine, tmp_path):
    """A task process whose supervisor (Airflow's, in the Celery worker) is SIGKILLed stops its
    engine at once (it saves its adapter) instead of training on as an orphan."""
    result_file = tmp_path / "result.txt"
    supervisor = (f"import subprocess, sys\n"
                  f"with open({str(result_file)!r}, 'w') as out:\n"
                  f"    subprocess.run(sys.argv[1:], stdout=out, stderr=subprocess.STDOUT)\n")
    proc = subprocess.run([sys.executable, "-c", supervisor, sys.executable, "-c", textwrap.dedent(RUN_ENGINE),
                           "kill-supervisor", str(fake_engine), str(tmp_path)], env=airflow_env,
                          cwd=airflow_env["AIRFLOW_HOME"], timeout=60)
    assert proc.returncode == -9  # the supervisor is gone; the task process lives on, orphaned
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and MARK not in result_file.read_text():
        time.sleep(0.2)
    line = next(line for line in result_file.read_text().splitlines() if line.startswith(MARK))
    result = json.loads(line[len(MARK):])
    assert result["orphaned"] is True and result["stopped"] is False
    assert result["code"] == 75 and result["saved"] is True  # stopped by SIGTERM: the adapter is saved
    assert result["tail"][-1] == "stopping: saving the adapter"


def test_a_child_killed_by_sigkill_is_reported(airflow_env, fake_engine, tmp_path):
    result = _python(RUN_ENGINE, airflow_env, "kill-child", str(fake_engine), str(tmp_path), timeout=60)
    assert result["code"] == -9 and result["stopped"] is False
    assert result["reason"] == "the training process was killed by SIGKILL"


def test_the_child_dies_with_a_killed_task_process(airflow_env, fake_engine, tmp_path):
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(RUN_ENGINE), "kill-parent",
                           str(fake_engine), str(tmp_path)], env=airflow_env, cwd=airflow_env["AIRFLOW_HOME"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == -9
    child = int(next(line for line in proc.stdout.splitlines() if line.startswith("child ")).split()[1])
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and Path(f"/proc/{child}").exists() \
            and "zombie" not in Path(f"/proc/{child}/status").read_text().lower():
        time.sleep(0.1)
    alive = Path(f"/proc/{child}").exists() and "zombie" not in Path(f"/proc/{child}/status").read_text().lower()
    if alive:
        os.kill(child, signal.SIGKILL)
    assert not alive, "the engine outlived the task process (orphan)"


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
    client.put_object(Bucket=bucket, Key=storage.dataset_report_key(dataset_id), Body=json.dumps(report).encode())


@pytest.mark.stack
def test_bad_requests_fail_in_validate_inputs_without_retry(airflow_env, s3, tmp_path):
    client = s3.client()
    labels_only, invalid = f"ds-{uuid.uuid4().hex[:8]}", f"ds-{uuid.uuid4().hex[:8]}"
    _put_report(client, s3.bucket, labels_only, valid=True, tasks=["video_classification"])
    _put_report(client, s3.bucket, invalid, valid=False, tasks=["video_captioning"])
    base = {"user": "u1", "model_id": "flamingo-tiny-captioning", "output_name": "a1", "training_params": {}}
    confs = {
        "no_report": {**base, "job_id": "j-none", "dataset_id": "ds-never-uploaded"},
        "wrong_task": {**base, "job_id": "j-task", "dataset_id": labels_only},
        "invalid": {**base, "job_id": "j-invalid", "dataset_id": invalid},
        "rank": {**base, "job_id": "j-rank", "dataset_id": labels_only, "model_id": "flamingo-tiny-classification",
                 "training_params": {"lora_rank": 17}},
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


@pytest.mark.stack
@pytest.mark.e2e
def test_a_tiny_job_trains_end_to_end(airflow_env, s3, mlflow_uri, tmp_path):
    client = s3.client()
    model_id, dataset_id = _seed_tiny_job(client, s3.bucket, tmp_path)

    job_id = f"job-{uuid.uuid4().hex[:8]}"
    conf = {"job_id": job_id, "user": "alice", "model_id": model_id, "dataset_id": dataset_id,
            "output_name": "tiny-colours", "training_params": {"epochs": 1, "batch_size": 2, "lora_rank": 4}}
    env = {**airflow_env, **s3.env(), "MLFLOW_TRACKING_URI": mlflow_uri}
    run = _run_dags(env, {"tiny": conf}, tmp_path)["tiny"]
    print("dag.test seconds for a tiny job:", run["seconds"], "per task:", run["durations"])
    assert run["state"] == "success", ((tmp_path / "dag-test.log").read_text()[-6000:], run)
    assert all(run["tis"][t] == ["success", 1] for t in TASKS), run["tis"]

    result = run["xcoms"]["finalize.return_value"]
    adapter_prefix = storage.adapter_prefix(job_id)
    assert result["output_path"] == storage.s3_uri(s3.bucket, adapter_prefix)
    keys = {o["Key"][len(adapter_prefix):] for o in
            client.list_objects_v2(Bucket=s3.bucket, Prefix=adapter_prefix).get("Contents", [])}
    assert {"adapter_model.safetensors", "adapter_config.json"} <= keys
    assert result["metrics"], result

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
    assert len(mlflow.search_runs([experiment_id], f"tags.job_id = '{job_id}'")) == 1  # one run per job
    versions = mlflow.search_model_versions(f"run_id = '{run_id}'")
    assert [v.name for v in versions] == [result["registered_model"]["name"]]


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
            client.upload_file(str(path), bucket, storage.model_prefix(model_id) + path.relative_to(model_dir).as_posix())
    dataset_id = f"ds-{uuid.uuid4().hex[:8]}"
    data_dir = make_dataset(tmp_path / dataset_id, clips)
    for path in data_dir.rglob("*"):
        if path.is_file():
            client.upload_file(str(path), bucket,
                               storage.dataset_files_prefix(dataset_id) + path.relative_to(data_dir).as_posix())
    _put_report(client, bucket, dataset_id, valid=True, tasks=["video_classification", "video_captioning"])
    return model_id, dataset_id


@pytest.mark.stack
@pytest.mark.e2e
def test_sigterm_stops_the_training_and_keeps_the_partial_adapter(airflow_env, s3, mlflow_uri, tmp_path):
    """What a stop does to the train task: SIGTERM (Airflow's kill) -> the engine saves its
    adapter and exits 75 -> the adapter is uploaded, the MLflow run is KILLED, the run fails."""
    client = s3.client()
    model_id, dataset_id = _seed_tiny_job(client, s3.bucket, tmp_path, clips=16)
    job_id = f"job-{uuid.uuid4().hex[:8]}"
    conf = {"job_id": job_id, "user": "bob", "model_id": model_id, "dataset_id": dataset_id,
            "output_name": "long-one", "training_params": {"epochs": 100, "batch_size": 1, "lora_rank": 4}}
    env = {**airflow_env, **s3.env(), "MLFLOW_TRACKING_URI": mlflow_uri}
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
    adapter_prefix = storage.adapter_prefix(job_id)
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
