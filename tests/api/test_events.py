"""A job's events, metric history, whole log and the list's filters, on real PostgreSQL and
SeaweedFS; Airflow and MLflow are the fakes of test_trainings (the e2e test runs the real ones)."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import update

from api.clients.mlflow import MetricPoint, MlflowUnavailable, RunSummary
from api.deps import get_mlflow
from api.main import create_app, reconcile_once
from api.models import TrainingJob
from api.models.base import utcnow
from tests.api.test_trainings import (  # noqa: F401  (fixtures)
    CAP,
    CLS,
    FakeMlflow,
    FakeTrainingAirflow,
    airflow,
    make_dataset,
    running_job,
    settings,
    start,
    task_stops_its_engine,
    upload_partial_adapter,
)
from fastapi.testclient import TestClient
from api.deps import get_airflow
from training import job_spec
from training import s3 as s3_layout  # the S3 key layout

RUN_ID = "e" * 32


class HistoryMlflow(FakeMlflow):
    """Adds per-step metric histories; `down` makes every read fail."""

    def __init__(self) -> None:
        super().__init__()
        self.history: dict[tuple[str, str], list[MetricPoint]] = {}
        self.history_calls = 0
        self.down = False

    def log(self, key: str, step: int, value: float) -> None:
        self.history.setdefault((RUN_ID, key), []).append(MetricPoint(step, value, 1_700_000_000_000 + step))

    def get_run(self, run_id):
        if self.down:
            raise MlflowUnavailable("connection refused (fake)")
        return super().get_run(run_id)

    def get_metric_history(self, run_id, key):
        if self.down:
            raise MlflowUnavailable("connection refused (fake)")
        self.history_calls += 1
        return list(self.history.get((run_id, key), []))

    def summary(self, **metrics: float) -> None:
        """The run's latest values: those of the histories, plus `metrics`."""
        latest = {k: v[-1].value for (r, k), v in self.history.items() if r == RUN_ID and v}
        self.runs[RUN_ID] = RunSummary(RUN_ID, "7", "RUNNING", None, None, {**latest, **metrics})


@pytest.fixture
def mlflow(client) -> HistoryMlflow:
    fake = HistoryMlflow()
    client.app.dependency_overrides[get_mlflow] = lambda: fake
    client.app.state.mlflow = fake  # the reconcile pass reads the app's clients
    return fake


@pytest.fixture
def reconcile(client, airflow):
    client.app.state.airflow = airflow
    return lambda: reconcile_once(client.app)


def events(client, auth, job_id: str, query: str = "") -> list[dict]:
    resp = client.get(f"/v1/trainings/{job_id}/events{query}", headers=auth)
    assert resp.status_code == 200, resp.text
    return resp.json()["data"]


def statuses(evts: list[dict]) -> list[tuple]:
    return [(e["data"]["from_status"], e["data"]["to_status"], e["data"]["from_stage"], e["data"]["to_stage"])
            for e in evts if e["type"] == "status"]


def train_running(airflow, mlflow, run: str) -> None:
    airflow.states[run] = "running"
    for task in ("validate_inputs", "prepare"):
        airflow.task(run, task, "success")
    airflow.task(run, "train", "running")
    airflow.xcoms[(run, "train", "mlflow_run_id")] = RUN_ID
    airflow.xcoms[(run, "train", "mlflow_experiment_id")] = "7"


# --- events -----------------------------------------------------------------------------------

def test_events_follow_a_job_from_queued_to_completed_unwatched(client, auth, airflow, mlflow, reconcile) -> None:
    job_id = start(client, auth, make_dataset(client, auth), epochs=3, eval_every_epochs=1)
    run = f"train-{job_id}"
    airflow.states[run] = "running"
    airflow.task(run, "validate_inputs", "running")
    reconcile()  # nobody reads the job: the background pass records what changes
    train_running(airflow, mlflow, run)
    reconcile()  # running, training; the MLflow run is found
    # 4 steps per epoch; epoch 1 evaluated, epoch 2's last step logged but not its evaluation yet
    for step in range(1, 9):
        mlflow.log("epoch", step, step / 4)
        mlflow.log("loss", step, 1 / step)
    mlflow.log("epoch_accuracy", 4, 0.5)
    mlflow.log("epoch_loss", 4, 0.9)
    mlflow.summary(progress=8 / 12)
    reconcile()
    reconcile()
    shown = events(client, auth, job_id)
    epochs = [e["data"] for e in shown if e["type"] == "epoch"]
    assert epochs == [{"epoch": 1, "step": 4, "metrics": {"accuracy": 0.5, "loss": 0.9}}]
    assert [e["message"] for e in shown if e["type"] == "epoch"] == ["Epoch 1/3 ended at step 4: accuracy 0.5, loss 0.9"]

    calls = mlflow.history_calls
    reconcile()  # nothing new in MLflow's latest values beyond epoch 2 (waiting for its eval): read again
    mlflow.log("epoch_accuracy", 8, 0.75)
    mlflow.log("epoch_loss", 8, 0.5)
    mlflow.summary(progress=8 / 12)
    reconcile()
    assert [e["data"]["epoch"] for e in events(client, auth, job_id) if e["type"] == "epoch"] == [1, 2]
    reconcile()
    assert mlflow.history_calls == calls + 3 * 2  # twice 3 series while epoch 2 awaited its eval; then none

    for step in range(9, 13):
        mlflow.log("epoch", step, step / 4)
    mlflow.log("epoch_accuracy", 12, 1.0)
    mlflow.log("epoch_loss", 12, 0.1)
    mlflow.summary(progress=1.0)
    airflow.states[run] = "success"
    for task in job_spec.TASK_IDS:
        airflow.task(run, task, "success")
    reconcile()

    shown = events(client, auth, job_id)
    assert statuses(shown) == [
        (None, "queued", None, None),
        ("queued", "running", None, "validating"),
        ("running", "running", "validating", "training"),
        ("running", "completed", "training", "finished"),
    ]
    assert [(e["data"]["epoch"], e["data"]["metrics"]["accuracy"]) for e in shown if e["type"] == "epoch"] == [
        (1, 0.5), (2, 0.75), (3, 1.0)]
    ids = [e["id"] for e in shown]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert {e["level"] for e in shown} == {"info"}
    # the order of the events is the order things happened: completion after the last epoch
    kinds = [(e["type"], e["data"].get("to_status") or e["data"].get("epoch")) for e in shown]
    assert kinds.index(("epoch", 3)) < kinds.index(("status", "completed"))

    # a restarted API (a new app on the same database) serves the same events, without any service
    airflow.down, mlflow.down = True, True
    again = create_app(client.app.state.settings)
    again.dependency_overrides[get_airflow] = lambda: airflow
    with TestClient(again) as other:
        assert other.get(f"/v1/trainings/{job_id}/events", headers=auth).json()["data"] == shown


def test_the_cursor_pages_and_is_stable_while_events_arrive(client, auth, airflow, mlflow, reconcile) -> None:
    job_id, run = running_job(client, auth, airflow)
    reconcile()
    first = client.get(f"/v1/trainings/{job_id}/events?limit=1", headers=auth).json()
    assert len(first["data"]) == 1 and first["has_more"] is True
    cursor = first["data"][0]["id"]
    rest = events(client, auth, job_id, f"?after={cursor}")
    assert client.post(f"/v1/trainings/{job_id}/stop", headers=auth).status_code == 202
    newer = events(client, auth, job_id, f"?after={rest[-1]['id']}")
    assert [e["type"] for e in newer] == ["stop_requested"]
    assert events(client, auth, job_id, f"?after={cursor}")[:len(rest)] == rest  # the old page did not move
    assert events(client, auth, job_id) == first["data"] + rest + newer
    assert client.get(f"/v1/trainings/{job_id}/events?after={newer[-1]['id']}", headers=auth).json() == {
        "data": [], "has_more": False}
    for bad in ("after=-1", "after=x", "limit=0", "limit=1001"):
        resp = client.get(f"/v1/trainings/{job_id}/events?{bad}", headers=auth)
        assert resp.status_code == 400 and resp.json()["detail"].startswith(bad.split("=")[0] + ":"), resp.text


def test_the_same_change_seen_by_two_readers_is_one_event(client, auth, airflow, mlflow, reconcile) -> None:
    job_id, run = running_job(client, auth, airflow)
    with client.app.state.sessionmaker() as session:  # two readers that both saw the job queued
        session.execute(update(TrainingJob).where(TrainingJob.id == job_id).values(status="queued", stage=None))
        session.commit()
    client.get(f"/v1/trainings/{job_id}", headers=auth)
    with client.app.state.sessionmaker() as session:
        session.execute(update(TrainingJob).where(TrainingJob.id == job_id).values(status="queued", stage=None))
        session.commit()
    reconcile()
    assert statuses(events(client, auth, job_id)) == [(None, "queued", None, None),
                                                      ("queued", "running", None, "training")]


def test_a_failed_job_has_an_error_event_with_its_reason(client, auth, airflow, mlflow, reconcile) -> None:
    job_id = start(client, auth, make_dataset(client, auth))
    run = f"train-{job_id}"
    airflow.states[run] = "failed"
    airflow.task(run, "validate_inputs", "success")
    airflow.task(run, "prepare", "failed")
    airflow.logs[(run, "prepare")] = ["RuntimeError: the model is not in S3"]
    reconcile()
    errors = [e for e in events(client, auth, job_id) if e["type"] == "error"]
    assert [(e["level"], e["message"], e["data"]) for e in errors] == [
        ("error", "task prepare (downloading) failed: the model is not in S3", {"stage": "downloading"})]


def test_a_stopped_job_has_its_request_checkpoints_or_a_warning(client, auth, airflow, mlflow, s3) -> None:
    job_id, run = running_job(client, auth, airflow)
    assert client.post(f"/v1/trainings/{job_id}/stop", headers=auth).status_code == 202
    assert client.post(f"/v1/trainings/{job_id}/stop", headers=auth).status_code == 202  # asked twice: one event
    upload_partial_adapter(s3, job_id)
    task_stops_its_engine(airflow, run)
    s3.client().put_object(Bucket=s3.bucket, Key=s3_layout.training_result_key(job_id), Body=json.dumps({
        "status": "stopped", "checkpoints": [{"step": 50, "epoch": 1.0, "name": "step-0000050"},
                                             {"step": 63, "epoch": 1.26, "name": "step-0000063"}]}).encode())
    assert client.get(f"/v1/trainings/{job_id}", headers=auth).json()["status"] == "stopped"
    shown = events(client, auth, job_id)
    assert [e["type"] for e in shown].count("stop_requested") == 1
    checkpoints = [e["data"] for e in shown if e["type"] == "checkpoint"]
    assert [(c["step"], c["epoch"], c["name"]) for c in checkpoints] == [(50, 1.0, "step-0000050"),
                                                                        (63, 1.26, "step-0000063")]
    assert "checkpoints/step-0000063" in checkpoints[1]["location"]
    assert statuses(shown)[-1][:2] == ("running", "stopped") and not [e for e in shown if e["type"] == "warning"]

    # stopped before anything was saved: a warning says so
    job_id, run = running_job(client, auth, airflow)
    assert client.post(f"/v1/trainings/{job_id}/stop", headers=auth).status_code == 202
    task_stops_its_engine(airflow, run)
    s3.client().put_object(Bucket=s3.bucket, Key=s3_layout.training_result_key(job_id), Body=b'{"status": "failed"}')
    assert client.get(f"/v1/trainings/{job_id}", headers=auth).json()["status"] == "stopped"
    warnings = [e for e in events(client, auth, job_id) if e["type"] == "warning"]
    assert [(w["level"], w["message"].split(":")[0]) for w in warnings] == [
        ("warning", "The job was stopped before a partial adapter was saved")]


def test_events_of_another_users_job_are_404(client, auth, other_auth, airflow, mlflow) -> None:
    job_id = start(client, auth, make_dataset(client, auth))
    for path in ("events", "metrics", "logs"):
        resp = client.get(f"/v1/trainings/{job_id}/{path}", headers=other_auth)
        assert resp.status_code == 404 and resp.json() == {"detail": "Training job not found"}


# --- metric history ---------------------------------------------------------------------------

def test_metric_history_pages_by_step(client, auth, airflow, mlflow) -> None:
    job_id, run = running_job(client, auth, airflow)
    assert client.get(f"/v1/trainings/{job_id}/metrics?keys=loss", headers=auth).json() == {"loss": []}  # no run yet
    train_running(airflow, mlflow, run)
    for step in range(1, 26):
        mlflow.log("loss", step, 1 / step)
        mlflow.log("learning_rate", step, 0.001)
    mlflow.log("epoch_accuracy", 10, 0.5)
    mlflow.summary(progress=0.5)
    client.get(f"/v1/trainings/{job_id}", headers=auth)  # finds the MLflow run

    got, after, pages = {"loss": [], "learning_rate": []}, -1, 0
    while True:
        resp = client.get(f"/v1/trainings/{job_id}/metrics?keys=loss,learning_rate&after_step={after}&limit=10",
                          headers=auth)
        assert resp.status_code == 200, resp.text
        pages += 1
        for key, points in resp.json().items():
            got[key] += points
        if resp.headers["X-Has-More"] == "false":
            assert "X-Next-After-Step" not in resp.headers
            break
        after = int(resp.headers["X-Next-After-Step"])
    assert pages == 3
    for key in got:  # equal to the fake MLflow's history: every step once, in order, with its value and time
        expected = mlflow.history[(RUN_ID, key)]
        assert [(p["step"], p["value"]) for p in got[key]] == [(p.step, p.value) for p in expected]
    assert got["loss"][0]["timestamp"].startswith("2023-11-14T22:13:20.001")
    everything = client.get(f"/v1/trainings/{job_id}/metrics", headers=auth).json()
    assert sorted(everything) == ["epoch_accuracy", "learning_rate", "loss", "progress"]
    assert everything["epoch_accuracy"] == [{"step": 10, "value": 0.5, "timestamp": everything["epoch_accuracy"][0]["timestamp"]}]

    for bad in ("limit=0", "after_step=x", "keys=", "keys=" + ",".join(f"k{i}" for i in range(51))):
        resp = client.get(f"/v1/trainings/{job_id}/metrics?{bad}", headers=auth)
        assert resp.status_code == 400 and resp.json()["detail"], resp.text
    mlflow.down = True
    resp = client.get(f"/v1/trainings/{job_id}/metrics?keys=loss", headers=auth)
    assert resp.status_code == 503 and resp.json()["detail"].startswith("The metrics service (MLflow) cannot be read")


# --- the whole log ----------------------------------------------------------------------------

def test_the_whole_log_pages_back_to_the_file(client, auth, airflow, mlflow) -> None:
    job_id, run = running_job(client, auth, airflow)
    log = [f"line {i} " + "x" * (i % 7) for i in range(2345)]
    airflow.logs[(run, "train")] = log
    text, offset, pages = "", 0, 0
    while True:
        resp = client.get(f"/v1/trainings/{job_id}/logs?offset={offset}&limit=1000", headers=auth)
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
        text += resp.text
        pages += 1
        assert resp.headers["X-Total-Lines"] == "2345"
        if int(resp.headers["X-Next-Offset"]) == offset:
            break
        offset = int(resp.headers["X-Next-Offset"])
    assert text == "".join(line + "\n" for line in log) and pages == 4
    assert resp.headers["X-Log-Complete"] == "false"  # still running: more may come
    assert client.get(f"/v1/trainings/{job_id}", headers=auth).json()["logs"] == "\n".join(log[-60:])  # the tail
    airflow.states[run] = "success"
    for task in job_spec.TASK_IDS:
        airflow.task(run, task, "success")
    client.get(f"/v1/trainings/{job_id}", headers=auth)
    last = client.get(f"/v1/trainings/{job_id}/logs?offset=2000", headers=auth)
    assert last.headers["X-Log-Complete"] == "true" and last.text.endswith("line 2344 " + "x" * (2344 % 7) + "\n")
    assert client.get(f"/v1/trainings/{job_id}/logs?limit=100001", headers=auth).status_code == 400
    airflow.down = True
    assert client.get(f"/v1/trainings/{job_id}/logs", headers=auth).status_code == 503


# --- the list: filters, metadata, total count --------------------------------------------------

def test_list_filters_metadata_and_total_count(client, auth, airflow, mlflow) -> None:
    cls_data, cap_data = make_dataset(client, auth), make_dataset(client, auth)
    ids = {}
    for name, model, data, meta in (("a", CLS, cls_data, {"team": "vision", "run": "1"}),
                                    ("b", CLS, cap_data, {"team": "vision", "run": "2"}),
                                    ("c", CAP, cap_data, {"team": "nlp"}),
                                    ("d", CAP, cls_data, None)):
        resp = client.post("/v1/trainings", headers=auth, json={
            "model_id": model, "dataset_id": data, "output_name": name, "metadata": meta,
            "training_params": {"epochs": 1, "lora_rank": 4}})
        assert resp.status_code == 202, resp.text
        ids[name] = resp.json()["job_id"]
    assert client.get(f"/v1/trainings/{ids['a']}", headers=auth).json()["metadata"] == {"team": "vision", "run": "1"}
    assert client.get(f"/v1/trainings/{ids['d']}", headers=auth).json()["metadata"] == {}
    airflow.states[f"train-{ids['b']}"] = "success"
    with client.app.state.sessionmaker() as session:
        session.execute(update(TrainingJob).where(TrainingJob.id == ids["a"])
                        .values(created_at=utcnow() - timedelta(days=2)))
        session.commit()

    def names(query: str) -> tuple[list[str], str]:
        resp = client.get(f"/v1/trainings{query}", headers=auth)
        assert resp.status_code == 200, resp.text
        by_id = {v: k for k, v in ids.items()}
        return sorted(by_id[j["job_id"]] for j in resp.json()), resp.headers["X-Total-Count"]

    assert names("") == (["a", "b", "c", "d"], "4")
    assert names("?limit=1") == (["d"], "4")  # one page, every match counted
    assert names("?status=completed") == (["b"], "1")  # read from Airflow before filtering
    assert names("?status=queued,completed") == (["a", "b", "c", "d"], "4")
    assert names("?status=queued&status=running") == (["a", "c", "d"], "3")
    assert names(f"?model_id={CAP}") == (["c", "d"], "2")
    assert names(f"?dataset_id={cap_data}") == (["b", "c"], "2")
    after = (utcnow() - timedelta(days=1)).replace(tzinfo=None).isoformat()
    assert names(f"?created_after={after}") == (["b", "c", "d"], "3")
    assert names("?metadata[team]=vision") == (["a", "b"], "2")
    assert names("?metadata[team]=vision&metadata[run]=2") == (["b"], "1")
    assert names(f"?metadata[team]=nlp&model_id={CLS}") == ([], "0")
    for bad, detail in (("status=done", "status: unknown status 'done'"),
                        ("metadata[a b]=1", "metadata[a b]: write metadata filters as metadata[key]=value"),
                        ("created_after=yesterday", "created_after: ")):
        resp = client.get(f"/v1/trainings?{bad}", headers=auth)
        assert resp.status_code == 400 and resp.json()["detail"].startswith(detail), resp.text


@pytest.mark.parametrize("metadata, detail", [
    ({f"k{i}": "v" for i in range(17)}, "metadata: Value error, at most 16 pairs, got 17"),
    ({"bad key": "v"}, "metadata: Value error, key 'bad key' must be 1-64 letters"),
    ({"k": "v" * 513}, "metadata: Value error, the value of 'k' is longer than 512 characters"),
    ({"k": 3}, "metadata.k: Input should be a valid string"),
])
def test_metadata_is_checked_before_anything_starts(client, auth, airflow, metadata, detail) -> None:
    resp = client.post("/v1/trainings", headers=auth, json={
        "model_id": CLS, "dataset_id": make_dataset(client, auth), "output_name": "m", "metadata": metadata})
    assert resp.status_code == 400 and resp.json()["detail"].startswith(detail), resp.text
    assert airflow.triggers == []


def test_clips_skipped_by_the_training_are_a_warning(client, auth, airflow, mlflow, s3) -> None:
    job_id, run = running_job(client, auth, airflow)
    assert client.post(f"/v1/trainings/{job_id}/stop", headers=auth).status_code == 202
    upload_partial_adapter(s3, job_id)
    task_stops_its_engine(airflow, run)
    s3.client().put_object(Bucket=s3.bucket, Key=s3_layout.training_result_key(job_id), Body=json.dumps({
        "status": "stopped", "checkpoints": [],
        "skipped_clips": {"clips/a.mp4": "a.mp4: cannot be decoded", "clips/b.mp4": "b.mp4: no frames"}}).encode())
    assert client.get(f"/v1/trainings/{job_id}", headers=auth).json()["status"] == "stopped"
    warnings = [e for e in events(client, auth, job_id) if e["type"] == "warning"]
    assert [(w["level"], w["message"]) for w in warnings] == [
        ("warning", "2 clip(s) could not be decoded during training and were skipped: clips/a.mp4 (a.mp4: cannot be "
                    "decoded); clips/b.mp4 (b.mp4: no frames)")]
    assert warnings[0]["data"]["count"] == 2


def test_clips_skipped_while_the_job_runs_are_warnings_at_once_each_clip_once(
        client, auth, airflow, mlflow, reconcile, s3) -> None:
    job_id = start(client, auth, make_dataset(client, auth), epochs=2)
    run = f"train-{job_id}"
    train_running(airflow, mlflow, run)
    mlflow.summary(progress=0.1)
    reconcile()

    def publish(skipped: dict, exited: bool = False) -> None:  # as the train task republishes it live
        s3.client().put_object(Bucket=s3.bucket, Key=s3_layout.training_result_key(job_id), Body=json.dumps({
            "status": "running", "mlflow_run_id": RUN_ID, "exited": exited, "checkpoints": [],
            "skipped_clips": skipped}).encode())

    def warnings() -> list[tuple]:
        return [(w["level"], w["message"], w["data"]) for w in events(client, auth, job_id) if w["type"] == "warning"]

    a, b, c = ("clips/a.mp4", "a.mp4: cannot be decoded"), ("clips/b.mp4", "b.mp4: no frames"), \
        ("clips/c.mp4", "c.mp4: no video stream")
    publish(dict([a]))
    reconcile()
    first = ("warning", "1 clip(s) could not be decoded during training and were skipped: clips/a.mp4 (a.mp4: "
             "cannot be decoded)", {"count": 1, "new_clips": dict([a])})
    assert warnings() == [first]  # while the job runs, from the pass alone
    assert client.get(f"/v1/trainings/{job_id}", headers=auth).json()["status"] == "running"
    reconcile()  # seen again: nothing more
    assert warnings() == [first]
    publish(dict([a, b, c]))
    reconcile()
    second = ("warning", "2 more clip(s) could not be decoded during training and were skipped (3 so far): "
              "clips/b.mp4 (b.mp4: no frames); clips/c.mp4 (c.mp4: no video stream)",
              {"count": 3, "new_clips": dict([b, c])})
    assert warnings() == [first, second]
    publish(dict([a, b]))  # an older copy read late (another reader's snapshot): names nothing again
    reconcile()
    assert warnings() == [first, second]

    # the job ends with the same clips skipped: settling records no warning again
    publish(dict([a, b, c]), exited=True)
    airflow.states[run] = "success"
    for task in job_spec.TASK_IDS:
        airflow.task(run, task, "success")
    reconcile()
    shown = events(client, auth, job_id)
    assert shown[-1]["data"].get("to_status") == "completed"
    assert warnings() == [first, second]


def publish_result(s3, job_id: str, checkpoints: list[dict], exited: bool = False) -> None:
    """The engine's result.json as the train task publishes it (live: `exited: false`)."""
    s3.client().put_object(Bucket=s3.bucket, Key=s3_layout.training_result_key(job_id), Body=json.dumps({
        "status": "running", "mlflow_run_id": RUN_ID, "exited": exited, "checkpoints": checkpoints}).encode())


def test_checkpoints_are_events_while_the_job_runs_in_step_order_with_the_epochs(
        client, auth, airflow, mlflow, reconcile, s3) -> None:
    job_id = start(client, auth, make_dataset(client, auth), epochs=3, eval_every_epochs=1)
    run = f"train-{job_id}"
    train_running(airflow, mlflow, run)
    reconcile()
    for step in range(1, 5):  # epoch 1 (4 steps), evaluated, then its checkpoint
        mlflow.log("epoch", step, step / 4)
    mlflow.log("epoch_accuracy", 4, 0.5)
    mlflow.summary(progress=4 / 12)
    ck4 = {"step": 4, "epoch": 1.0, "name": "step-0000004", "created_at": "2026-11-30T20:00:04+00:00",
           "uri": f"s3://{s3.bucket}/trainings/{job_id}/checkpoints/step-0000004/"}
    publish_result(s3, job_id, [ck4])
    reconcile()
    reconcile()  # seen twice: recorded once
    shown = events(client, auth, job_id)
    assert [(e["type"], e["data"].get("step")) for e in shown if e["type"] in ("epoch", "checkpoint")] == [
        ("epoch", 4), ("checkpoint", 4)]
    checkpoint = next(e for e in shown if e["type"] == "checkpoint")
    assert checkpoint["data"] == {"step": 4, "epoch": 1.0, "name": "step-0000004", "location": ck4["uri"]}
    assert checkpoint["message"] == f"Checkpoint at step 4 (epoch 1.0): {ck4['uri']}"

    # epoch 2 ended at step 8, its evaluation not logged yet; a checkpoint at step 10 (every N steps)
    # is already published: it waits for the epoch before it
    for step in range(5, 11):
        mlflow.log("epoch", step, step / 4)
    mlflow.summary(progress=10 / 12)
    ck10 = {"step": 10, "epoch": 2.5, "name": "step-0000010", "created_at": "2026-11-30T20:00:10+00:00",
            "uri": f"s3://{s3.bucket}/trainings/{job_id}/checkpoints/step-0000010/"}
    publish_result(s3, job_id, [ck4, ck10])
    reconcile()
    assert [e["data"]["step"] for e in events(client, auth, job_id) if e["type"] in ("epoch", "checkpoint")] == [4, 4]
    mlflow.down = True  # MLflow unreadable: nothing is placed blindly
    mlflow.log("epoch_accuracy", 8, 0.75)
    reconcile()
    assert [e["data"]["step"] for e in events(client, auth, job_id) if e["type"] in ("epoch", "checkpoint")] == [4, 4]
    mlflow.down = False
    mlflow.summary(progress=10 / 12)
    reconcile()
    kinds = [(e["type"], e["data"]["step"]) for e in events(client, auth, job_id) if e["type"] in ("epoch", "checkpoint")]
    assert kinds == [("epoch", 4), ("checkpoint", 4), ("epoch", 8), ("checkpoint", 10)]

    # the job ends: its final manifest lists the same checkpoints (the older one pruned): nothing twice
    for step in range(11, 13):
        mlflow.log("epoch", step, step / 4)
    mlflow.log("epoch_accuracy", 12, 1.0)
    mlflow.summary(progress=1.0)
    publish_result(s3, job_id, [ck10], exited=True)
    airflow.states[run] = "success"
    for task in job_spec.TASK_IDS:
        airflow.task(run, task, "success")
    reconcile()
    shown = events(client, auth, job_id)
    kinds = [(e["type"], e["data"].get("step") or e["data"].get("to_status")) for e in shown
             if e["type"] in ("epoch", "checkpoint") or e["data"].get("to_status") == "completed"]
    assert kinds == [("epoch", 4), ("checkpoint", 4), ("epoch", 8), ("checkpoint", 10), ("epoch", 12),
                     ("status", "completed")]


def test_a_resumed_run_relisting_its_checkpoints_adds_only_new_saves(client, auth, airflow, mlflow, reconcile,
                                                                     s3) -> None:
    job_id = start(client, auth, make_dataset(client, auth), epochs=3)
    run = f"train-{job_id}"
    train_running(airflow, mlflow, run)
    mlflow.summary(progress=0.1)
    reconcile()
    first = {"step": 4, "epoch": 1.0, "name": "step-0000004", "created_at": "2026-11-30T20:00:04+00:00"}
    publish_result(s3, job_id, [first])
    reconcile()
    again = {**first, "created_at": "2026-11-30T21:00:04+00:00"}  # a later run saved step 4 again
    publish_result(s3, job_id, [first, again])
    reconcile()
    reconcile()
    saves = [e["data"] for e in events(client, auth, job_id) if e["type"] == "checkpoint"]
    assert [(c["step"], c["name"]) for c in saves] == [(4, "step-0000004"), (4, "step-0000004")]
    assert "not uploaded to S3" in saves[0]["location"]
