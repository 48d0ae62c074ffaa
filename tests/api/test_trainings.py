"""`/v1/trainings` on real PostgreSQL and SeaweedFS; Airflow and MLflow are fakes that record
calls and return scripted states (the e2e test runs the real ones)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import update

from api.clients.airflow import TaskInstance
from api.clients.mlflow import RunSummary
from api.models import Dataset, TrainingJob
from api.models.base import new_id, utcnow
from api.deps import get_airflow, get_mlflow
from api.services.live_cache import LiveCache
from api.services.trainings.live_state import LiveState
from tests.api.conftest import FakeAirflow, make_settings
from training import job_spec
from training import s3 as s3_layout  # the S3 key layout

CLS = "flamingo-tiny-classification"
CAP = "videollama-tiny-captioning"


class FakeTrainingAirflow(FakeAirflow):
    """Adds task instances, logs, XCom and PATCH of a run's state."""

    def __init__(self) -> None:
        super().__init__()
        self.tis: dict[str, dict[str, TaskInstance]] = {}
        self.logs: dict[tuple[str, str], list[str]] = {}
        self.xcoms: dict[tuple[str, str, str], Any] = {}
        self.patches: list[tuple[str, str]] = []
        self.per_job_calls = 0

    def list_task_instances(self, dag_id, run_id):
        self._check()
        self.per_job_calls += 1
        return dict(self.tis.get(run_id, {}))

    def get_task_log(self, dag_id, run_id, task_id, try_number):
        self._check()
        self.per_job_calls += 1
        return list(self.logs.get((run_id, task_id), []))

    def get_xcom(self, dag_id, run_id, task_id, key="return_value"):
        self._check()
        self.per_job_calls += 1
        return self.xcoms.get((run_id, task_id, key))

    def get_dag_run(self, dag_id, run_id):
        self.per_job_calls += 1
        return super().get_dag_run(dag_id, run_id)

    def set_dag_run_state(self, dag_id, run_id, state):
        """Like Airflow: running task instances take the run's state at once (their processes
        live on until the next heartbeat kills them), unfinished ones are skipped."""
        self._check()
        self.patches.append((run_id, state))
        if run_id in self.states:
            self.states[run_id] = state
            for task_id, ti in self.tis.get(run_id, {}).items():
                if ti.state not in ("success", "failed", "skipped", "upstream_failed"):
                    self.task(run_id, task_id, state if ti.state == "running" else "skipped", ti.try_number)
        return self.get_dag_run(dag_id, run_id)

    def close(self) -> None:  # the app closes its client at shutdown
        pass

    def with_timeout(self, timeout_s):  # the detail's short reads: this fake answers at once
        return self

    def task(self, run_id: str, task_id: str, state: str, try_number: int = 1) -> None:
        self.tis.setdefault(run_id, {})[task_id] = TaskInstance(task_id, state, try_number, utcnow(), None)


class FakeMlflow:
    def __init__(self) -> None:
        self.runs: dict[str, RunSummary] = {}
        self.bulk_calls = 0
        self.calls = 0

    def get_run(self, run_id):
        self.calls += 1
        return self.runs.get(run_id)

    def get_runs(self, runs):
        self.calls += 1
        self.bulk_calls += 1
        return {r: self.runs[r] for r in runs if r in self.runs}

    def set(self, run_id: str, progress: float, **metrics: float) -> None:
        self.runs[run_id] = RunSummary(run_id, "7", "RUNNING", None, None, {"progress": progress, **metrics})


@pytest.fixture
def settings(postgres_url, s3):
    """Live state read on every list (a test of the shared cache sets its own TTL); no quota in
    the way of tests that start many jobs (`test_trainings_robust.py` tests it)."""
    return make_settings(postgres_url, s3, live_state_ttl_s=0, max_active_jobs_per_user=100)


@pytest.fixture
def airflow() -> FakeTrainingAirflow:  # replaces the conftest's fake for this module
    return FakeTrainingAirflow()


@pytest.fixture
def mlflow(client) -> FakeMlflow:
    fake = FakeMlflow()
    client.app.dependency_overrides[get_mlflow] = lambda: fake
    return fake


def user_id(client, auth) -> str:
    return client.get("/v1/auth/me", headers=auth).json()["id"]


def make_dataset(client, auth, stage: str = "ready", tasks=("video_classification", "video_captioning")) -> str:
    owner = user_id(client, auth)
    dataset_id = new_id()
    with client.app.state.sessionmaker() as session:
        status = {"ready": "ready", "validating": "processing", "failed": "error"}[stage]
        session.add(Dataset(id=dataset_id, owner_id=owner, name="squares", file_name="s.zip",
                            s3_key=s3_layout.dataset_upload_key(dataset_id, "s.zip"), stage=stage, status=status,
                            error="bad clip" if stage == "failed" else None, stats={"tasks": list(tasks)}))
        session.commit()
    return dataset_id


def body(dataset_id: str, model_id: str = CLS, output_name: str = "squares-v1", **params: Any) -> dict:
    return {"model_id": model_id, "dataset_id": dataset_id, "output_name": output_name,
            "training_params": {"epochs": 1, "batch_size": 2, "lora_rank": 4, **params}}


def start(client, auth, dataset_id: str, **kw: Any) -> str:
    resp = client.post("/v1/trainings", json=body(dataset_id, **kw), headers=auth)
    assert resp.status_code == 202, resp.text
    return resp.json()["job_id"]


def job_rows(client) -> int:
    with client.app.state.sessionmaker() as session:
        return session.query(TrainingJob).count()


# --- POST ----------------------------------------------------------------------------------

def test_start_creates_the_job_and_triggers_one_run(client, auth, airflow, mlflow) -> None:
    dataset_id = make_dataset(client, auth)
    resp = client.post("/v1/trainings", json=body(dataset_id), headers=auth)
    assert resp.status_code == 202
    job_id = resp.json()["job_id"]
    assert resp.json() == {"job_id": job_id, "status": "queued", "message": "Training job initiated successfully"}
    # the run gets every parameter resolved: what was asked, the rest the definition's or the model's defaults
    resolved = {"epochs": 1, "learning_rate": 2e-4, "batch_size": 2, "gradient_accumulation_steps": 1,
                "max_steps": None, "warmup_ratio": 0.0, "weight_decay": 0.0, "lora_rank": 4, "lora_alpha": 16,
                "lora_dropout": 0.05, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                         "up_proj", "down_proj"],
                "frames": 4, "frame_sampling": "uniform", "sampling_fps": None, "eval_every_epochs": 1,
                "checkpoint_every_steps": None, "seed": 42}
    assert airflow.triggers == [("qlora_training", f"train-{job_id}", {
        "job_id": job_id, "user": client.get("/v1/auth/me", headers=auth).json()["username"], "model_id": CLS,
        "dataset_id": dataset_id, "output_name": "squares-v1", "max_runtime_minutes": 24 * 60, **resolved})]
    assert job_spec.validate_job_conf(airflow.triggers[0][2], ["video_classification"]) == []
    detail = client.get(f"/v1/trainings/{job_id}", headers=auth).json()
    assert (detail["status"], detail["progress"], detail["started_at"], detail["output_path"]) == (
        "queued", 0.0, None, None)
    assert detail["training_params"] == resolved
    assert detail["airflow_run_url"].endswith(f"/dags/qlora_training/runs/train-{job_id}")


BAD_REQUESTS = {
    "unknown model": ({"model_id": "gpt-17"}, "model_id 'gpt-17' is not an available model"),
    "rank above the model's range": ({"lora_rank": 17}, f"lora_rank must be between 1 and 16 for model {CLS}, got 17"),
    "rank zero": ({"lora_rank": 0}, "lora_rank: input should be greater than or equal to 1, got 0"),
    "epochs zero": ({"epochs": 0}, "epochs: input should be greater than or equal to 1, got 0"),
    "epochs too many": ({"epochs": 1000}, "epochs: input should be less than or equal to 100, got 1000"),
    "epochs not an integer": ({"epochs": 1.5}, "epochs: input should be a valid integer, got 1.5"),
    "epochs a string": ({"epochs": "3"}, "epochs: input should be a valid integer, got '3'"),
    "learning rate zero": ({"learning_rate": 0}, "learning_rate: input should be greater than 0, got 0"),
    "learning rate negative": ({"learning_rate": -0.1}, "learning_rate: input should be greater than 0"),
    "batch size zero": ({"batch_size": 0}, "batch_size: input should be greater than or equal to 1"),
    "dropout one": ({"lora_dropout": 1.0}, "lora_dropout: input should be less than 1, got 1.0"),
    "dropout negative": ({"lora_dropout": -0.1}, "lora_dropout: input should be greater than or equal to 0"),
    "warm-up ratio one": ({"warmup_ratio": 1}, "warmup_ratio: input should be less than 1, got 1"),
    "frames zero": ({"frames": 0}, "frames: input should be greater than or equal to 1, got 0"),
    "max steps zero": ({"max_steps": 0}, "max_steps: input should be greater than or equal to 1, got 0"),
    "unknown frame sampling": ({"frame_sampling": "keyframes"}, "frame_sampling: 'keyframes' is not one of 'uniform', 'fps'"),
    "sampling rate zero": ({"frame_sampling": "fps", "sampling_fps": 0}, "sampling_fps: input should be greater than 0, got 0"),
    "sampling rate too high": ({"sampling_fps": 60}, "sampling_fps: input should be less than or equal to 30, got 60"),
    "sampling rate with uniform": ({"frame_sampling": "uniform", "sampling_fps": 2},
                                   "sampling_fps (2.0) applies only with frame_sampling 'fps'"),
    "sampling rate, model samples uniformly": ({"sampling_fps": 2},
                                               "sampling_fps (2.0) applies only with frame_sampling 'fps' (model"),
    "accumulation zero": ({"gradient_accumulation_steps": 0}, "gradient_accumulation_steps: input should be greater"),
    "unknown target module": ({"target_modules": ["q_proj", "conv9"]}, "target_modules: 'conv9' is not a known module"),
    "unknown parameter": ({"warmup": 3}, "unknown training parameter 'warmup'"),
    "unsafe output name": ({"output_name": "../etc/passwd"}, "output_name must be 1 to 64 characters"),
    "blank output name": ({"output_name": ""}, "output_name must be 1 to 64 characters"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_every_rule_answers_400_with_a_precise_detail(client, auth, airflow, case) -> None:
    dataset_id = make_dataset(client, auth)
    change, detail = BAD_REQUESTS[case]
    request = body(dataset_id)
    for key in ("model_id", "output_name"):
        if key in change:
            request[key] = change[key]
    request["training_params"].update({k: v for k, v in change.items() if k not in ("model_id", "output_name")})
    before = job_rows(client)
    resp = client.post("/v1/trainings", json=request, headers=auth)
    assert resp.status_code == 400, resp.text
    assert detail in resp.json()["detail"]
    assert airflow.triggers == [] and job_rows(client) == before


def test_target_modules_allowed_listed_once_and_empty_means_defaults(client, auth, airflow) -> None:
    dataset_id = make_dataset(client, auth)
    allowed = list(job_spec.load_catalog().get(CLS).allowed_target_modules)
    resp = client.post("/v1/trainings", json=body(dataset_id, target_modules=["q_proj", "q_proj"]), headers=auth)
    assert resp.status_code == 400
    assert "target_modules: q_proj listed more than once" in resp.json()["detail"]
    resp = client.post("/v1/trainings", json=body(dataset_id, target_modules="q_proj"), headers=auth)
    assert resp.status_code == 400 and "target_modules: input should be a valid list" in resp.json()["detail"]
    assert airflow.triggers == []
    assert client.post("/v1/trainings", json=body(dataset_id, target_modules=allowed), headers=auth).status_code == 202
    assert client.post("/v1/trainings", json=body(dataset_id, target_modules=[]), headers=auth).status_code == 202


def test_fps_frame_sampling_is_accepted_and_resolved(client, auth, airflow) -> None:
    """fps-based sampling (at most `frames` a clip) reaches the run conf and the job detail; its
    rate defaults to 1 frame a second."""
    dataset_id = make_dataset(client, auth)
    for asked, rate in (({"frame_sampling": "fps", "sampling_fps": 2.5, "frames": 16}, 2.5),
                        ({"frame_sampling": "fps"}, 1.0)):
        resp = client.post("/v1/trainings", json=body(dataset_id, **asked), headers=auth)
        assert resp.status_code == 202, resp.text
        conf = airflow.triggers[-1][2]
        assert (conf["frame_sampling"], conf["sampling_fps"], conf["frames"]) == ("fps", rate, asked.get("frames", 4))
        detail = client.get(f"/v1/trainings/{resp.json()['job_id']}", headers=auth).json()
        assert (detail["training_params"]["frame_sampling"], detail["training_params"]["sampling_fps"]) == ("fps", rate)


@pytest.mark.parametrize("stage", ["validating", "failed"])
def test_dataset_must_be_ready(client, auth, airflow, stage) -> None:
    dataset_id = make_dataset(client, auth, stage=stage)
    resp = client.post("/v1/trainings", json=body(dataset_id), headers=auth)
    assert resp.status_code == 400
    assert f"dataset {dataset_id} is not ready" in resp.json()["detail"]
    assert airflow.triggers == []


def test_dataset_must_exist_and_be_yours(client, auth, other_auth, airflow) -> None:
    theirs = make_dataset(client, other_auth)
    for dataset_id in (theirs, new_id()):
        resp = client.post("/v1/trainings", json=body(dataset_id), headers=auth)
        assert resp.status_code == 400
        assert resp.json()["detail"] == f"dataset_id {dataset_id!r}: dataset not found"
    assert airflow.triggers == []


def test_dataset_must_fit_the_model_type(client, auth, airflow) -> None:
    labels_only = make_dataset(client, auth, tasks=["video_classification"])
    resp = client.post("/v1/trainings", json=body(labels_only, model_id=CAP), headers=auth)
    assert resp.status_code == 400
    assert (f"the dataset does not fit model {CAP}: it needs a dataset for video_captioning (a 'caption' for "
            "every clip); the dataset supports: video_classification") in resp.json()["detail"]
    captions_only = make_dataset(client, auth, tasks=["video_captioning"])
    assert client.post("/v1/trainings", json=body(captions_only, model_id=CAP), headers=auth).status_code == 202


def test_missing_fields_are_400(client, auth) -> None:
    resp = client.post("/v1/trainings", json={"model_id": CLS}, headers=auth)
    assert resp.status_code == 400
    assert "dataset_id: is required" in resp.json()["detail"]


def test_airflow_down_is_503_and_leaves_no_job(client, auth, airflow) -> None:
    dataset_id = make_dataset(client, auth)
    airflow.down = True
    before = job_rows(client)
    resp = client.post("/v1/trainings", json=body(dataset_id), headers=auth)
    assert resp.status_code == 503
    assert "Airflow" in resp.json()["detail"]
    assert job_rows(client) == before
    assert client.get("/v1/trainings", headers=auth).json() == []


def test_unauthenticated_is_401(client) -> None:
    assert client.get("/v1/trainings").status_code == 401
    assert client.post("/v1/trainings", json={}).status_code == 401


# --- reads -----------------------------------------------------------------------------------

def test_status_progress_and_completion_are_read_back(client, auth, airflow, mlflow, s3) -> None:
    dataset_id = make_dataset(client, auth)
    job_id = start(client, auth, dataset_id)
    run = f"train-{job_id}"
    airflow.states[run] = "running"
    airflow.task(run, "validate_inputs", "success")
    airflow.task(run, "prepare", "success")
    airflow.task(run, "train", "running")
    airflow.xcoms[(run, "train", "mlflow_run_id")] = "a" * 32
    airflow.xcoms[(run, "train", "mlflow_experiment_id")] = "7"
    airflow.logs[(run, "train")] = [f"line {i}" for i in range(100)] + ["step 5/10 loss 0.5"]
    mlflow.set("a" * 32, 0.5, loss=0.5)

    detail = client.get(f"/v1/trainings/{job_id}", headers=auth).json()
    assert (detail["status"], detail["stage"], detail["progress"]) == ("running", "training", 0.5)
    assert detail["metrics"] == {"progress": 0.5, "loss": 0.5}
    assert detail["mlflow_run_id"] == "a" * 32
    assert detail["logs"].endswith("step 5/10 loss 0.5") and "line 0\n" not in detail["logs"]
    assert detail["started_at"] is not None and detail["eta_seconds"] is not None
    assert detail["mlflow_run_url"] is None or detail["mlflow_run_url"].endswith(f"/experiments/7/runs/{'a' * 32}")

    # progress never goes back (e.g. MLflow answers an older value)
    mlflow.set("a" * 32, 0.3)
    assert client.get(f"/v1/trainings/{job_id}", headers=auth).json()["progress"] == 0.5
    # the list reads live progress in bulk
    mlflow.set("a" * 32, 0.8)
    listed = client.get("/v1/trainings", headers=auth).json()
    assert [(j["job_id"], j["status"], j["progress"]) for j in listed] == [(job_id, "running", 0.8)]

    airflow.states[run] = "success"
    for task in ("train", "evaluate", "register", "finalize"):
        airflow.task(run, task, "success")
    output = s3_layout.s3_uri("qlora-test", s3_layout.adapter_prefix(job_id))
    airflow.xcoms[(run, "finalize", "return_value")] = {"output_path": output}
    mlflow.set("a" * 32, 1.0, loss=0.1, final_accuracy=1.0)
    done = client.get(f"/v1/trainings/{job_id}", headers=auth).json()
    assert (done["status"], done["progress"], done["output_path"]) == ("completed", 1.0, output)
    assert done["completed_at"] is not None and done["metrics"]["final_accuracy"] == 1.0
    assert done["error"] is None


def test_queued_until_a_task_starts(client, auth, airflow, mlflow) -> None:
    job_id = start(client, auth, make_dataset(client, auth))
    airflow.states[f"train-{job_id}"] = "running"  # run started, no task yet
    detail = client.get(f"/v1/trainings/{job_id}", headers=auth).json()
    assert (detail["status"], detail["stage"], detail["logs"]) == ("queued", None, "")


@pytest.mark.parametrize("last_line", [
    "AirflowFailException: the training process was killed by SIGKILL",
    # the engine killed on every try: the last retry's own exception (retried, so not AirflowFail...)
    "training.pipeline.engine_jobs.EngineLost: the training process was killed by SIGKILL"])
def test_failed_job_reports_the_reason_from_the_task_log(client, auth, airflow, mlflow, last_line) -> None:
    job_id = start(client, auth, make_dataset(client, auth))
    run = f"train-{job_id}"
    airflow.states[run] = "failed"
    airflow.task(run, "validate_inputs", "success")
    airflow.task(run, "prepare", "success")
    airflow.task(run, "train", "failed")
    airflow.logs[(run, "train")] = ["[engine] step 3/100", "Task failed with exception", last_line]
    detail = client.get(f"/v1/trainings/{job_id}", headers=auth).json()
    assert detail["status"] == "failed"
    assert detail["error"] == "task train (training) failed: the training process was killed by SIGKILL"
    assert detail["completed_at"] is not None and detail["output_path"] is None


def test_list_has_no_per_job_calls_and_caches_terminal_states(client, auth, airflow, mlflow) -> None:
    dataset_id = make_dataset(client, auth)
    jobs = [start(client, auth, dataset_id, output_name=f"n{i}") for i in range(5)]
    for job_id in jobs[:3]:
        airflow.states[f"train-{job_id}"] = "success"
    airflow.per_job_calls = airflow.list_calls = 0
    listed = client.get("/v1/trainings", headers=auth).json()
    assert [j["job_id"] for j in listed] == jobs[::-1]
    assert sorted(j["status"] for j in listed) == ["completed"] * 3 + ["queued"] * 2
    assert airflow.list_calls == 1 and airflow.per_job_calls == 0
    # terminal ones are cached: the next list asks Airflow about the 2 queued ones only
    airflow.states.update({f"train-{j}": "running" for j in jobs[:3]})  # would be visible if re-read
    listed = client.get("/v1/trainings", headers=auth).json()
    assert sorted(j["status"] for j in listed) == ["completed"] * 3 + ["queued"] * 2
    assert airflow.list_calls == 2 and airflow.per_job_calls == 0


def test_lost_run_ends_failed_with_a_reason(client, auth, airflow, mlflow) -> None:
    job_id = start(client, auth, make_dataset(client, auth))
    del airflow.states[f"train-{job_id}"]
    with client.app.state.sessionmaker() as session:
        session.execute(update(TrainingJob).where(TrainingJob.id == job_id)
                        .values(created_at=utcnow() - timedelta(minutes=10)))
        session.commit()
    from api.main import reconcile_once

    client.app.state.mlflow, client.app.state.airflow = None, airflow
    assert reconcile_once(client.app) >= 1
    detail = client.get(f"/v1/trainings/{job_id}", headers=auth).json()
    assert detail["status"] == "failed"
    assert detail["error"] == f"The Airflow run train-{job_id} of this job no longer exists"


def test_reconcile_settles_a_killed_run(client, auth, airflow, mlflow) -> None:
    job_id = start(client, auth, make_dataset(client, auth))
    run = f"train-{job_id}"
    airflow.states[run] = "failed"
    airflow.task(run, "train", "failed")  # no exception line: the worker died
    from api.main import reconcile_once

    client.app.state.mlflow, client.app.state.airflow = None, airflow
    reconcile_once(client.app)
    with client.app.state.sessionmaker() as session:
        job = session.get(TrainingJob, job_id)
        assert job.status == "failed" and job.settled_at is not None
        assert job.error.startswith("task train (training) failed without an error message")


def test_other_users_job_is_404(client, auth, other_auth, airflow, mlflow) -> None:
    job_id = start(client, auth, make_dataset(client, auth))
    assert client.get(f"/v1/trainings/{job_id}", headers=other_auth).status_code == 404
    assert client.post(f"/v1/trainings/{job_id}/stop", headers=other_auth).status_code == 404
    assert client.get("/v1/trainings", headers=other_auth).json() == []
    assert client.get(f"/v1/trainings/{new_id()}", headers=auth).json() == {"detail": "Training job not found"}
    assert airflow.patches == []


# --- stop ------------------------------------------------------------------------------------

def running_job(client, auth, airflow) -> tuple[str, str]:
    job_id = start(client, auth, make_dataset(client, auth))
    run = f"train-{job_id}"
    airflow.states[run] = "running"
    for task in ("validate_inputs", "prepare"):
        airflow.task(run, task, "success")
    airflow.task(run, "train", "running")
    for task in ("evaluate", "register", "finalize"):
        airflow.task(run, task, None)
    return job_id, run


def upload_partial_adapter(s3, job_id: str, *, exited: bool = True) -> str:
    """What a stopped training does: the engine uploads its partial adapter (adapter_config.json
    last) before it exits; once it exited, the train task publishes its result.json."""
    prefix = s3_layout.adapter_prefix(job_id)
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        s3.client().put_object(Bucket=s3.bucket, Key=prefix + name, Body=b"{}")
    if exited:
        publish_result(s3, job_id)
    return s3_layout.s3_uri(s3.bucket, prefix)


def publish_result(s3, job_id: str) -> None:
    s3.client().put_object(Bucket=s3.bucket, Key=s3_layout.training_result_key(job_id),
                           Body=b'{"status": "stopped"}')


def stop_request(s3, job_id: str) -> dict | None:
    """The stop request the train task polls (`training.s3.training_stop_key`)."""
    import json

    try:
        return json.loads(s3.client().get_object(Bucket=s3.bucket, Key=s3_layout.training_stop_key(job_id))["Body"]
                          .read())
    except s3.client().exceptions.NoSuchKey:
        return None


def task_stops_its_engine(airflow, run: str) -> None:
    """What the train task does with a stop request once its engine exited: it fails, and with
    it the run (the later tasks never run)."""
    airflow.task(run, "train", "failed")
    for task in ("evaluate", "register", "finalize"):
        airflow.task(run, task, "upstream_failed")
    airflow.states[run] = "failed"


def test_stop_ends_stopped_only_once_the_training_process_is_gone(client, auth, airflow, mlflow, s3) -> None:
    job_id, run = running_job(client, auth, airflow)
    resp = client.post(f"/v1/trainings/{job_id}/stop", headers=auth)
    assert resp.status_code == 202
    assert resp.json() == {"message": f"Stop request received for {job_id}"}
    # only the train task is told to stop (it stops its engine itself); the run is not touched
    assert airflow.patches == []
    assert stop_request(s3, job_id)["run_id"] == run

    # the training is still saving: the job is not stopped yet, on the detail and on the list
    detail = client.get(f"/v1/trainings/{job_id}", headers=auth).json()
    assert (detail["status"], detail["stage"], detail["stop_requested"]) == ("running", "stopping", True)
    assert detail["output_path"] is None and detail["completed_at"] is None and detail["eta_seconds"] is None
    listed = client.get("/v1/trainings", headers=auth).json()
    assert [(j["status"], j["stage"]) for j in listed] == [("running", "stopping")]
    # asking again while it stops repeats the request
    assert client.post(f"/v1/trainings/{job_id}/stop", headers=auth).status_code == 202

    # the engine uploaded its partial adapter but has not exited yet: still stopping
    upload_partial_adapter(s3, job_id, exited=False)
    detail = client.get(f"/v1/trainings/{job_id}", headers=auth).json()
    assert (detail["status"], detail["stage"], detail["output_path"]) == ("running", "stopping", None)

    # the engine exited: the task published its result and failed the run
    output = upload_partial_adapter(s3, job_id)
    task_stops_its_engine(airflow, run)
    detail = client.get(f"/v1/trainings/{job_id}", headers=auth).json()
    assert (detail["status"], detail["stage"], detail["output_path"]) == ("stopped", "training", output)
    assert detail["completed_at"] is not None and detail["error"] is None
    again = client.post(f"/v1/trainings/{job_id}/stop", headers=auth)
    assert again.status_code == 400
    assert again.json()["detail"] == f"Job {job_id} is stopped: only queued or running jobs can be stopped"
    assert airflow.patches == []


def test_a_stop_that_loses_the_race_to_the_end_of_training_leaves_the_job_completed(client, auth, airflow, mlflow,
                                                                                    s3) -> None:
    job_id, run = running_job(client, auth, airflow)
    assert client.post(f"/v1/trainings/{job_id}/stop", headers=auth).status_code == 202
    # the engine finished its last step before the task saw the request: train succeeds, evaluate runs
    airflow.task(run, "train", "success")
    airflow.task(run, "evaluate", "running")
    detail = client.get(f"/v1/trainings/{job_id}", headers=auth).json()
    assert (detail["status"], detail["stage"], detail["stop_requested"]) == ("running", "evaluating", True)
    for task in ("evaluate", "register", "finalize"):
        airflow.task(run, task, "success")
    airflow.states[run] = "success"
    detail = client.get(f"/v1/trainings/{job_id}", headers=auth).json()
    assert (detail["status"], detail["stage"], detail["error"]) == ("completed", "finished", None)
    assert detail["output_path"] == s3_layout.s3_uri(s3.bucket, s3_layout.adapter_prefix(job_id))
    assert airflow.patches == []  # evaluate and register were never killed


def test_a_stop_after_training_finished_is_409_and_the_job_completes(client, auth, airflow, mlflow, s3) -> None:
    job_id, run = running_job(client, auth, airflow)
    airflow.task(run, "train", "success")
    airflow.task(run, "evaluate", "running")
    resp = client.post(f"/v1/trainings/{job_id}/stop", headers=auth)
    assert resp.status_code == 409
    assert resp.json()["detail"] == (f"Job {job_id} has finished training and is now evaluating its adapter: it is "
                                     "not stopped (that would throw away a finished training) and ends completed")
    assert airflow.patches == [] and stop_request(s3, job_id) is None
    assert client.get(f"/v1/trainings/{job_id}", headers=auth).json()["stop_requested"] is False


def test_a_torn_partial_adapter_is_not_the_output(client, auth, airflow, mlflow, s3) -> None:
    job_id, run = running_job(client, auth, airflow)
    assert client.post(f"/v1/trainings/{job_id}/stop", headers=auth).status_code == 202
    task_stops_its_engine(airflow, run)
    # weights uploaded, config not yet (or never: SIGKILL cut the upload short)
    s3.client().put_object(Bucket=s3.bucket, Key=s3_layout.adapter_prefix(job_id) + "adapter_model.safetensors",
                           Body=b"{}")
    detail = client.get(f"/v1/trainings/{job_id}", headers=auth).json()
    assert (detail["status"], detail["output_path"]) == ("running", None)
    publish_result(s3, job_id)  # the engine is gone, its adapter torn: stopped, with no output
    detail = client.get(f"/v1/trainings/{job_id}", headers=auth).json()
    assert (detail["status"], detail["output_path"]) == ("stopped", None)


def test_stop_without_an_adapter_ends_stopped_at_the_kill_deadline(client, auth, airflow, mlflow, settings) -> None:
    job_id, run = running_job(client, auth, airflow)
    assert client.post(f"/v1/trainings/{job_id}/stop", headers=auth).status_code == 202
    task_stops_its_engine(airflow, run)  # its result could not be published
    assert client.get(f"/v1/trainings/{job_id}", headers=auth).json()["status"] == "running"
    with client.app.state.sessionmaker() as session:  # the request was made long enough ago
        session.execute(update(TrainingJob).where(TrainingJob.id == job_id)
                        .values(stop_requested_at=utcnow() - timedelta(seconds=settings.stop_kill_deadline_s + 1)))
        session.commit()
    detail = client.get(f"/v1/trainings/{job_id}", headers=auth).json()
    assert (detail["status"], detail["output_path"], detail["error"]) == ("stopped", None, None)


def test_reconcile_settles_a_stopping_job_the_list_cannot(client, auth, airflow, mlflow, s3) -> None:
    job_id, run = running_job(client, auth, airflow)
    assert client.post(f"/v1/trainings/{job_id}/stop", headers=auth).status_code == 202
    client.get(f"/v1/trainings/{job_id}", headers=auth)  # read as stopping
    task_stops_its_engine(airflow, run)
    output = upload_partial_adapter(s3, job_id)
    airflow.per_job_calls = 0
    listed = client.get("/v1/trainings", headers=auth).json()
    assert [(j["status"], j["stage"]) for j in listed] == [("running", "stopping")]  # cached, not invented
    assert airflow.per_job_calls == 0
    from api.main import reconcile_once

    client.app.state.mlflow, client.app.state.airflow = None, airflow
    reconcile_once(client.app)
    listed = client.get("/v1/trainings", headers=auth).json()
    assert [(j["status"], j["output_path"]) for j in listed] == [("stopped", output)]


def test_stop_of_a_finished_job_is_400(client, auth, airflow, mlflow) -> None:
    job_id = start(client, auth, make_dataset(client, auth))
    airflow.states[f"train-{job_id}"] = "success"  # ended since the last read
    resp = client.post(f"/v1/trainings/{job_id}/stop", headers=auth)
    assert resp.status_code == 400 and "is completed" in resp.json()["detail"]
    assert airflow.patches == []


def test_stop_of_a_queued_job(client, auth, airflow, mlflow) -> None:
    job_id = start(client, auth, make_dataset(client, auth))
    assert client.post(f"/v1/trainings/{job_id}/stop", headers=auth).status_code == 202
    assert client.get(f"/v1/trainings/{job_id}", headers=auth).json()["status"] == "stopped"


# --- the list stays fast: shared live state, settled jobs from the database, pages ----------

class SlowListAirflow(FakeTrainingAirflow):
    """Its bulk run list takes a while, like a loaded Airflow API server."""

    attempts = 0

    def list_dag_runs(self, dag_id, run_ids):
        self.attempts += 1
        time.sleep(0.3)
        return super().list_dag_runs(dag_id, run_ids)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def shared_live_state(client, ttl_s: float) -> Clock:
    clock = Clock()
    client.app.state.training_live = LiveState(LiveCache("runs", ttl_s, clock), LiveCache("summaries", ttl_s, clock))
    return clock


def test_concurrent_lists_within_the_ttl_share_one_airflow_call(client, auth, other_auth, mlflow) -> None:
    airflow = SlowListAirflow()
    airflow.states = {}
    client.app.dependency_overrides[get_airflow] = lambda: airflow
    mine = [start(client, auth, make_dataset(client, auth), output_name=f"m{i}") for i in range(3)]
    theirs = start(client, other_auth, make_dataset(client, other_auth))
    run = f"train-{mine[0]}"
    airflow.states[run] = "running"
    airflow.task(run, "train", "running")
    airflow.xcoms[(run, "train", "mlflow_run_id")] = "b" * 32
    airflow.xcoms[(run, "train", "mlflow_experiment_id")] = "7"
    client.get(f"/v1/trainings/{mine[0]}", headers=auth)  # learns its MLflow run
    mlflow.set("b" * 32, 0.4)
    clock = shared_live_state(client, ttl_s=2.0)
    airflow.list_calls = mlflow.bulk_calls = airflow.attempts = 0  # the detail read the live state too

    with ThreadPoolExecutor(12) as pool:
        lists = list(pool.map(lambda h: client.get("/v1/trainings", headers=h), [auth] * 10 + [other_auth] * 2))
    assert [r.status_code for r in lists] == [200] * 12
    assert airflow.list_calls == 1 and mlflow.bulk_calls == 1  # for 12 requests of 2 users
    assert {(j["job_id"], j["status"], j["progress"]) for j in lists[0].json()} == {
        (mine[0], "running", 0.4), (mine[1], "queued", 0.0), (mine[2], "queued", 0.0)}
    assert [j["job_id"] for j in lists[-1].json()] == [theirs]

    def statuses() -> dict[str, str]:
        resp = client.get("/v1/trainings", headers=auth)
        assert resp.status_code == 200
        return {j["job_id"]: j["status"] for j in resp.json()}

    # within the TTL changes are not seen yet; after it, one more call sees them
    airflow.states[f"train-{mine[1]}"] = "success"
    clock.now += 1.0
    assert statuses()[mine[1]] == "queued" and airflow.list_calls == 1
    clock.now += 1.5
    assert statuses()[mine[1]] == "completed" and airflow.list_calls == 2

    # Airflow down after a good read: the last state is served (one failed try per TTL)
    airflow.states[f"train-{mine[2]}"] = "running"
    airflow.down = True
    clock.now += 2.5
    for _ in range(3):
        assert statuses() == {mine[0]: "running", mine[1]: "completed", mine[2]: "queued"}
    assert airflow.attempts == 3 and airflow.list_calls == 2


def test_a_settled_job_is_read_from_the_database_alone(client, auth, airflow, mlflow) -> None:
    job_id = start(client, auth, make_dataset(client, auth))
    run = f"train-{job_id}"
    airflow.states[run] = "success"
    for task in job_spec.TASK_IDS:
        airflow.task(run, task, "success")
    airflow.xcoms[(run, "train", "mlflow_run_id")] = "c" * 32
    airflow.xcoms[(run, "train", "mlflow_experiment_id")] = "7"
    output = s3_layout.s3_uri("qlora-test", s3_layout.adapter_prefix(job_id))
    airflow.xcoms[(run, "finalize", "return_value")] = {"output_path": output}
    airflow.logs[(run, "train")] = [f"line {i}" for i in range(100)] + ["training done"]
    mlflow.set("c" * 32, 1.0, loss=0.1)
    first = client.get(f"/v1/trainings/{job_id}", headers=auth).json()  # settles it
    assert (first["status"], first["stage"], first["output_path"]) == ("completed", "finished", output)
    assert first["logs"].endswith("training done") and first["metrics"]["loss"] == 0.1

    airflow.per_job_calls = airflow.list_calls = mlflow.calls = 0
    airflow.logs[(run, "train")] = ["would be seen if read again"]
    mlflow.set("c" * 32, 1.0, loss=9.0)
    airflow.down = True
    again = client.get(f"/v1/trainings/{job_id}", headers=auth).json()
    assert again == first
    assert client.get("/v1/trainings", headers=auth).json()[0]["status"] == "completed"
    assert (airflow.per_job_calls, airflow.list_calls, mlflow.calls) == (0, 0, 0)


def test_a_failed_job_keeps_its_reason_and_log_without_airflow(client, auth, airflow, mlflow) -> None:
    job_id = start(client, auth, make_dataset(client, auth))
    run = f"train-{job_id}"
    airflow.states[run] = "failed"
    airflow.task(run, "validate_inputs", "success")
    airflow.task(run, "prepare", "failed")
    airflow.logs[(run, "prepare")] = ["downloading", "RuntimeError: the model is not in S3"]
    from api.main import reconcile_once

    client.app.state.airflow = airflow
    reconcile_once(client.app)  # settled in the background, never read by the user before
    airflow.down = True
    detail = client.get(f"/v1/trainings/{job_id}", headers=auth).json()
    assert (detail["status"], detail["stage"]) == ("failed", "downloading")
    assert detail["error"] == "task prepare (downloading) failed: the model is not in S3"
    assert detail["logs"].endswith("RuntimeError: the model is not in S3")


def test_list_pages_with_limit_and_offset(client, auth, airflow, mlflow) -> None:
    dataset_id = make_dataset(client, auth)
    jobs = [start(client, auth, dataset_id, output_name=f"p{i}") for i in range(5)][::-1]  # newest first

    def page(query: str) -> list[str]:
        resp = client.get(f"/v1/trainings{query}", headers=auth)
        assert resp.status_code == 200, resp.text
        return [j["job_id"] for j in resp.json()]

    assert page("") == jobs
    assert page("?limit=2") == jobs[:2]
    assert page("?limit=2&offset=2") == jobs[2:4]
    assert page("?limit=1000&offset=4") == jobs[4:]
    assert page("?offset=5") == []
    assert page("?offset=1000000000") == []  # the largest offset
    for bad, field in (("limit=0", "limit"), ("limit=1001", "limit"), ("offset=-1", "offset"),
                       ("offset=25328633764896853132190941184", "offset"), ("limit=x", "limit")):
        resp = client.get(f"/v1/trainings?{bad}", headers=auth)
        assert resp.status_code == 400 and resp.json()["detail"].startswith(f"{field}: "), resp.text
    params = {p["name"]: p for p in client.get("/v1/openapi.json").json()["paths"]["/v1/trainings"]["get"]["parameters"]}
    assert params["limit"]["schema"]["anyOf"][0] == {"type": "integer", "maximum": 1000, "minimum": 1}
    assert params["offset"]["schema"]["minimum"] == 0


# --- dataset delete uses the real job states ------------------------------------------------

def test_dataset_delete_reads_the_real_job_states(client, auth, airflow, mlflow) -> None:
    dataset_id = make_dataset(client, auth)
    job_id = start(client, auth, dataset_id)
    airflow.states[f"train-{job_id}"] = "running"
    assert client.delete(f"/v1/datasets/{dataset_id}", headers=auth).status_code == 409
    airflow.states[f"train-{job_id}"] = "success"  # cached status still says running
    assert client.delete(f"/v1/datasets/{dataset_id}", headers=auth).status_code == 204
    assert client.get(f"/v1/trainings/{job_id}", headers=auth).json()["status"] == "completed"
