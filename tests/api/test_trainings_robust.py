"""Starting jobs safely, on real PostgreSQL: `Idempotency-Key` (the first answer again, or 409),
the active jobs quota (429 with `Retry-After`, also under parallel requests), the job committed
before its run is triggered (the reconcile pass triggers a job left without a run and ends a run
left without a job), an Airflow that does not know the DAG (503 and a retry, never a verdict on
the jobs), and `max_runtime_minutes` in the run's conf. Airflow is the recording fake of
`test_trainings.py`; `tests/e2e/test_fault_injection.py` does the crash on the real stack."""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from api.clients.airflow import AirflowTimeout, AirflowUnavailable, DagNotFound
from api.main import reconcile_once
from api.models import IdempotencyKey, TrainingJob
from api.models.base import utcnow
from tests.api.conftest import make_settings
from tests.api.test_trainings import FakeTrainingAirflow, body, job_rows, make_dataset, start  # noqa: F401
from tests.api.test_trainings import mlflow  # noqa: F401  (fixture)
from training import job_spec

QUOTA = 3


@pytest.fixture
def settings(postgres_url, s3):
    return make_settings(postgres_url, s3, live_state_ttl_s=0, max_active_jobs_per_user=QUOTA, trigger_grace_s=0,
                         max_runtime_minutes_default=60, max_runtime_minutes_max=120)


@pytest.fixture
def airflow() -> FakeTrainingAirflow:
    return FakeTrainingAirflow()


def post(client, auth, payload, key: str | None = None):
    headers = {**auth, **({"Idempotency-Key": key} if key else {})}
    return client.post("/v1/trainings", json=payload, headers=headers)


def jobs_of(client, auth) -> list[dict]:
    return client.get("/v1/trainings", headers=auth).json()


def reconcile(client, airflow) -> int:
    client.app.state.airflow, client.app.state.mlflow = airflow, None
    return reconcile_once(client.app)


# --- Idempotency-Key --------------------------------------------------------------------------

def test_the_same_key_and_body_answers_the_first_answer(client, auth, other_auth, airflow, mlflow) -> None:
    payload = body(make_dataset(client, auth))
    first = post(client, auth, payload, "key-1")
    assert first.status_code == 202 and "Idempotent-Replayed" not in first.headers
    again = post(client, auth, payload, "key-1")
    assert again.status_code == 202 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    assert len(airflow.triggers) == 1 and len(jobs_of(client, auth)) == 1
    # the same key is another user's own
    theirs = post(client, other_auth, body(make_dataset(client, other_auth)), "key-1")
    assert theirs.status_code == 202 and theirs.json()["job_id"] != first.json()["job_id"]
    # without a key, every request is a new job
    assert post(client, auth, payload).json()["job_id"] != first.json()["job_id"]


def test_the_same_key_with_another_body_is_409(client, auth, airflow, mlflow) -> None:
    dataset_id = make_dataset(client, auth)
    assert post(client, auth, body(dataset_id), "k-2").status_code == 202
    resp = post(client, auth, body(dataset_id, epochs=2), "k-2")
    assert resp.status_code == 409
    assert resp.json()["detail"].startswith("Idempotency-Key 'k-2' was already used at ")
    assert "use a new key for a new request" in resp.json()["detail"]
    assert len(airflow.triggers) == 1


def test_a_key_is_forgotten_after_24_hours(client, auth, airflow, mlflow) -> None:
    payload = body(make_dataset(client, auth))
    first = post(client, auth, payload, "old-key").json()["job_id"]
    with client.app.state.sessionmaker() as session:
        session.execute(update(IdempotencyKey).where(IdempotencyKey.key == "old-key")
                        .values(created_at=utcnow() - timedelta(hours=24, minutes=1)))
        session.commit()
    second = post(client, auth, payload, "old-key")
    assert second.status_code == 202 and "Idempotent-Replayed" not in second.headers
    assert second.json()["job_id"] != first


@pytest.mark.parametrize("key", [b"", b"has space", b"x" * 256, "caf\u00e9".encode()])
def test_a_bad_key_is_400(client, auth, airflow, key) -> None:
    resp = client.post("/v1/trainings", json=body(make_dataset(client, auth)), headers={**auth, "Idempotency-Key": key})
    assert resp.status_code == 400
    assert resp.json()["detail"].startswith("Idempotency-Key must be 1 to 255 printable ASCII characters")
    assert airflow.triggers == []


def test_parallel_requests_with_one_key_make_one_job(client, auth, airflow, mlflow) -> None:
    payload = body(make_dataset(client, auth))
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: post(client, auth, payload, "same-key"), range(8)))
    assert [r.status_code for r in answers] == [202] * 8
    assert len({r.json()["job_id"] for r in answers}) == 1
    assert sum(r.headers.get("Idempotent-Replayed") == "true" for r in answers) == 7
    assert len(airflow.triggers) == 1 and len(jobs_of(client, auth)) == 1


# --- the active jobs quota ------------------------------------------------------------------

def test_the_quota_answers_429_with_retry_after(client, auth, other_auth, airflow, mlflow) -> None:
    dataset_id = make_dataset(client, auth)
    early = post(client, auth, body(dataset_id, output_name="early"), "early-key").json()["job_id"]
    jobs = [early] + [start(client, auth, dataset_id, output_name=f"q{i}") for i in range(QUOTA - 1)]
    resp = post(client, auth, body(dataset_id, output_name="one-too-many"))
    assert resp.status_code == 429
    assert resp.headers["Retry-After"] == "60"
    assert resp.json()["detail"] == (
        f"You have {QUOTA} queued or running training jobs, the most allowed at once ({QUOTA}); wait for one to end "
        "(or stop one with POST /v1/trainings/{job_id}/stop), then retry")
    assert len(airflow.triggers) == QUOTA and len(jobs_of(client, auth)) == QUOTA
    # another user's quota is their own
    assert post(client, other_auth, body(make_dataset(client, other_auth))).status_code == 202
    # a job that ended in Airflow (not yet seen by the database) frees its place at once
    airflow.states[f"train-{jobs[0]}"] = "success"
    assert post(client, auth, body(dataset_id, output_name="now-fits")).status_code == 202
    # at the limit again: a retry of an accepted request still gets its answer, a new one 429
    replay = post(client, auth, body(dataset_id, output_name="early"), "early-key")
    assert replay.status_code == 202 and replay.json()["job_id"] == early
    assert post(client, auth, body(dataset_id, output_name="late"), "late-key").status_code == 429


def test_parallel_requests_cannot_slip_past_the_quota(client, auth, airflow, mlflow) -> None:
    """16 requests of one user at once on PostgreSQL: exactly QUOTA jobs, the rest 429."""
    dataset_id = make_dataset(client, auth)
    barrier = threading.Barrier(16)

    def one(i: int):
        barrier.wait()
        return post(client, auth, body(dataset_id, output_name=f"p{i}"))

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(one, range(16)))
    codes = sorted(r.status_code for r in answers)
    assert codes == [202] * QUOTA + [429] * (16 - QUOTA), codes
    with client.app.state.sessionmaker() as session:
        owner = session.scalar(select(TrainingJob.owner_id).where(TrainingJob.dataset_id == dataset_id).limit(1))
        count = session.scalar(select(func.count()).select_from(TrainingJob).where(TrainingJob.owner_id == owner))
    assert count == QUOTA and len(airflow.triggers) == QUOTA


# --- committed before triggered ---------------------------------------------------------------

def test_airflow_down_at_the_trigger_is_503_and_undoes_the_job_and_its_key(client, auth, airflow, mlflow) -> None:
    payload = body(make_dataset(client, auth))
    before = job_rows(client)
    airflow.down = True
    resp = post(client, auth, payload, "retry-me")
    assert resp.status_code == 503 and resp.headers["Retry-After"] == "30"
    assert resp.json()["detail"] == "The pipeline service (Airflow) is unavailable; retry later"
    assert job_rows(client) == before
    airflow.down = False
    retried = post(client, auth, payload, "retry-me")  # the key was forgotten with the job
    assert retried.status_code == 202 and "Idempotent-Replayed" not in retried.headers
    assert [j["job_id"] for j in jobs_of(client, auth)] == [retried.json()["job_id"]]


class NoDagAirflow(FakeTrainingAirflow):
    """Airflow before it parsed `qlora_training` (or after a rename): every call on the DAG is 404."""

    missing = True

    def _check(self) -> None:
        super()._check()
        if self.missing:
            raise DagNotFound(job_spec.DAG_ID, "The Dag with ID: `qlora_training` was not found")


def test_a_dag_airflow_does_not_know_is_503_with_retry_after(client, auth, mlflow) -> None:
    airflow = NoDagAirflow()
    from api.deps import get_airflow

    client.app.dependency_overrides[get_airflow] = lambda: airflow
    before = job_rows(client)
    resp = post(client, auth, body(make_dataset(client, auth)))
    assert resp.status_code == 503 and resp.headers["Retry-After"] == "60"
    assert resp.json()["detail"] == ("The pipeline (Airflow DAG qlora_training) is not loaded in Airflow yet (not "
                                     "parsed, or renamed); retry in a minute")
    assert job_rows(client) == before


def test_a_missing_dag_never_settles_active_jobs_failed(client, auth, airflow, mlflow) -> None:
    job_id = start(client, auth, make_dataset(client, auth))
    airflow.states[f"train-{job_id}"] = "running"
    airflow.task(f"train-{job_id}", "train", "running")
    with client.app.state.sessionmaker() as session:  # long past the lost-run grace
        session.execute(update(TrainingJob).where(TrainingJob.id == job_id)
                        .values(created_at=utcnow() - timedelta(hours=1)))
        session.commit()
    gone = NoDagAirflow()
    gone.states, gone.tis = airflow.states, airflow.tis
    from api.deps import get_airflow

    client.app.dependency_overrides[get_airflow] = lambda: gone
    reconcile(client, gone)
    assert client.get("/v1/trainings", headers=auth).json()[0]["status"] in ("queued", "running")
    detail = client.get(f"/v1/trainings/{job_id}", headers=auth)
    assert detail.status_code == 503 or detail.json()["status"] in ("queued", "running")
    stop = client.post(f"/v1/trainings/{job_id}/stop", headers=auth)
    assert stop.status_code == 503 and "not loaded in Airflow yet" in stop.json()["detail"]
    gone.missing = False  # parsed again: the job goes on as Airflow says
    reconcile(client, gone)
    assert client.get(f"/v1/trainings/{job_id}", headers=auth).json()["status"] == "running"


class DyingTrigger(FakeTrainingAirflow):
    """The API process 'dies' between its commit and its trigger: the trigger never happens."""

    def trigger_dag_run(self, dag_id, run_id, conf):
        if getattr(self, "dead", False):
            raise RuntimeError("SIGKILL (simulated: the process is gone before Airflow hears of the job)")
        return super().trigger_dag_run(dag_id, run_id, conf)


def test_a_job_left_without_its_run_is_triggered_once_by_reconcile(client, auth, mlflow) -> None:
    airflow = DyingTrigger()
    airflow.dead = True
    from api.deps import get_airflow

    client.app.dependency_overrides[get_airflow] = lambda: airflow
    with pytest.raises(RuntimeError, match="SIGKILL"):
        post(client, auth, body(make_dataset(client, auth)), "crash-key")
    (job,) = jobs_of(client, auth)  # committed before the trigger
    assert job["status"] == "queued" and airflow.triggers == []
    # a client retry with its key gets the same job, not a second one
    again = post(client, auth, body(client.get(f"/v1/trainings/{job['job_id']}", headers=auth)
                                    .json()["dataset_id"]), "crash-key")
    assert again.status_code == 202 and again.json()["job_id"] == job["job_id"]
    airflow.dead = False
    assert reconcile(client, airflow) >= 1
    reconcile(client, airflow)
    assert [t[1] for t in airflow.triggers] == [f"train-{job['job_id']}"]  # once
    conf = airflow.triggers[0][2]
    assert conf["job_id"] == job["job_id"] and conf["max_runtime_minutes"] == 60
    assert job_spec.validate_job_conf(conf, ["video_classification"]) == []
    # and it is never taken for a lost run while untriggered: it stayed queued
    assert client.get(f"/v1/trainings/{job['job_id']}", headers=auth).json()["status"] == "queued"


@pytest.mark.parametrize("went_through", [True, False], ids=["trigger-done", "trigger-lost"])
def test_a_trigger_airflow_takes_without_answering_in_time_keeps_the_job_queued(client, auth, airflow, mlflow,
                                                                             monkeypatch, went_through) -> None:
    """Airflow up but slow (bench.load: triggers answered in 10-130 s, 647 of 699 starts were 503):
    the start answers 202 and the reconcile pass triggers the run, or finds the one Airflow made."""
    trigger = airflow.trigger_dag_run

    def slow(dag_id, run_id, conf):
        if went_through:
            trigger(dag_id, run_id, conf)
        raise AirflowTimeout("did not answer POST /api/v2/dags/qlora_training/dagRuns in time (fake)")

    monkeypatch.setattr(airflow, "trigger_dag_run", slow)
    resp = post(client, auth, body(make_dataset(client, auth)), "slow-key")
    assert resp.status_code == 202, resp.text
    job_id = resp.json()["job_id"]
    (job,) = jobs_of(client, auth)
    assert (job["job_id"], job["status"]) == (job_id, "queued")
    monkeypatch.setattr(airflow, "trigger_dag_run", trigger)
    reconcile(client, airflow)
    reconcile(client, airflow)
    runs = [t[1] for t in airflow.triggers]
    assert runs == [f"train-{job_id}"] * (2 if went_through else 1)  # the second one found the run: created once
    assert len(airflow.states) == 1 and airflow.patches == []  # one run, never ended as an orphan
    assert [j["job_id"] for j in jobs_of(client, auth)] == [job_id]


def test_the_run_of_a_job_undone_after_its_trigger_is_ended_by_reconcile(client, auth, airflow, mlflow,
                                                                         monkeypatch) -> None:
    dataset_id = make_dataset(client, auth)
    mine = start(client, auth, dataset_id)
    airflow.states[f"train-{mine}"] = "running"
    trigger = airflow.trigger_dag_run

    def timed_out(dag_id, run_id, conf):  # Airflow creates the run, then its proxy answers 502
        trigger(dag_id, run_id, conf)
        raise AirflowUnavailable("Airflow answered 502 on POST /api/v2/dags/qlora_training/dagRuns (fake)")

    monkeypatch.setattr(airflow, "trigger_dag_run", timed_out)
    resp = post(client, auth, body(dataset_id))
    assert resp.status_code == 503  # the job was undone
    undone = airflow.triggers[-1][1]
    airflow.states[undone] = "running"
    assert undone.removeprefix("train-") not in {j["job_id"] for j in client.get("/v1/trainings", headers=auth).json()}
    foreign = f"train-{uuid.uuid4()}"
    airflow.states[foreign] = "running"  # another deployment's job sharing this Airflow: left alone
    airflow.states["manual__2026-11-30"] = "running"  # not the API's: left alone
    reconcile(client, airflow)
    assert airflow.patches == [(undone, "failed")]
    assert airflow.states[f"train-{mine}"] == "running" and airflow.states[foreign] == "running"


# --- max_runtime_minutes ------------------------------------------------------------------------

def test_max_runtime_minutes_flows_to_the_conf_within_the_ceiling(client, auth, airflow, mlflow) -> None:
    dataset_id = make_dataset(client, auth)
    start(client, auth, dataset_id)
    assert airflow.triggers[-1][2]["max_runtime_minutes"] == 60  # the setting's default
    resp = post(client, auth, {**body(dataset_id), "max_runtime_minutes": 90})
    assert resp.status_code == 202 and airflow.triggers[-1][2]["max_runtime_minutes"] == 90
    assert client.get(f"/v1/trainings/{resp.json()['job_id']}", headers=auth).json()["max_runtime_minutes"] == 90
    for bad in (0, 121, "soon"):
        resp = post(client, auth, {**body(dataset_id), "max_runtime_minutes": bad})
        assert resp.status_code == 400, resp.text
        detail = resp.json()["detail"]
        assert "max_runtime_minutes" in detail and (bad == "soon" or "from 1 to 120" in detail), detail
    assert len(airflow.triggers) == 2


def test_a_job_past_its_deadline_fails_with_the_reason_and_keeps_its_partial_adapter(client, auth, airflow, mlflow,
                                                                                     s3) -> None:
    from tests.api.test_trainings import upload_partial_adapter

    job_id = start(client, auth, make_dataset(client, auth))
    run = f"train-{job_id}"
    airflow.states[run] = "failed"
    for task in ("validate_inputs", "prepare"):
        airflow.task(run, task, "success")
    airflow.task(run, "train", "failed")
    airflow.task(run, "evaluate", "upstream_failed")
    output = upload_partial_adapter(s3, job_id)  # what the engine uploads when the task stops it at the deadline
    reason = f"the training ran past its max_runtime_minutes (60 min) and was stopped; partial adapter at {output}"
    airflow.logs[(run, "train")] = ["[engine] step 900/5000", "Task failed with exception",
                                    f"AirflowFailException: {reason}"]
    detail = client.get(f"/v1/trainings/{job_id}", headers=auth).json()
    assert (detail["status"], detail["error"]) == ("failed", f"task train (training) failed: {reason}")
    assert detail["output_path"] == output


# --- a stop while Airflow is too slow to read ---------------------------------------------------

@pytest.mark.parametrize("ending", ["train task stops", "training finished first"])
def test_a_stop_while_airflow_is_too_slow_to_read_is_left_to_the_train_task(client, auth, airflow, mlflow, s3,
                                                                            monkeypatch, ending) -> None:
    """bench.load: 80 of 100 stops were 503 while Airflow answered in 10-130 s. The request is
    recorded (202) and the train task reads it; nothing is marked failed in Airflow blind."""
    from tests.api.test_trainings import running_job, stop_request, task_stops_its_engine, upload_partial_adapter

    job_id, run = running_job(client, auth, airflow)
    read = airflow.get_dag_run

    def slow(dag_id, run_id):
        raise AirflowTimeout(f"did not answer GET /api/v2/dags/{dag_id}/dagRuns/{run_id} in time (fake)")

    monkeypatch.setattr(airflow, "get_dag_run", slow)
    resp = client.post(f"/v1/trainings/{job_id}/stop", headers=auth)
    assert resp.status_code == 202, resp.text
    assert stop_request(s3, job_id)["run_id"] == run and airflow.patches == []
    monkeypatch.setattr(airflow, "get_dag_run", read)
    if ending == "train task stops":
        output = upload_partial_adapter(s3, job_id)
        task_stops_its_engine(airflow, run)
        expected = ("stopped", output)
    else:
        for task in ("train", "evaluate", "register", "finalize"):
            airflow.task(run, task, "success")
        airflow.states[run] = "success"
        expected = ("completed", f"s3://{s3.bucket}/trainings/{job_id}/adapter/")
    detail = client.get(f"/v1/trainings/{job_id}", headers=auth).json()
    assert (detail["status"], detail["output_path"]) == expected and detail["stop_requested"] is True


# --- a stop while Airflow refuses, is unreachable, or times out marking the run failed ------------

class _Refused(AirflowUnavailable):
    pass


@pytest.mark.parametrize("failure", ["read refused", "PATCH timed out", "PATCH refused"])
def test_a_stop_airflow_does_not_take_is_recorded_and_left_to_the_train_task(client, auth, airflow, mlflow, s3,
                                                                            monkeypatch, failure) -> None:
    """bench.load after 3b0a679: 4 of 121 stops still answered 503 (Airflow's api-server refused
    or timed out on a read, or on the PATCH that ends a run not trained yet, after the stop was
    committed). The stop is recorded (202), `stop.json` written, and the job ends stopped."""
    from tests.api.test_trainings import stop_request, task_stops_its_engine

    job_id = start(client, auth, make_dataset(client, auth))
    run = f"train-{job_id}"
    airflow.states[run] = "running"
    airflow.task(run, "validate_inputs", "running")  # the training has not started: the run would be PATCHed
    errors = {"read refused": ("get_dag_run", _Refused("Airflow answered 503 on GET (fake)")),
              "PATCH timed out": ("set_dag_run_state", AirflowTimeout("did not answer PATCH in time (fake)")),
              "PATCH refused": ("set_dag_run_state", _Refused("cannot reach Airflow: connection refused (fake)"))}
    method, error = errors[failure]

    def refuse(*args, **kwargs):
        raise error

    monkeypatch.setattr(airflow, method, refuse)
    resp = client.post(f"/v1/trainings/{job_id}/stop", headers=auth)
    assert resp.status_code == 202, resp.text
    assert stop_request(s3, job_id)["run_id"] == run and airflow.patches == []
    monkeypatch.undo()
    assert client.get(f"/v1/trainings/{job_id}", headers=auth).json()["stop_requested"] is True
    # the train task finds the request before it starts its engine and fails (publishing no result:
    # the job ends stopped once the kill deadline, QLORA_STOP_KILL_DEADLINE_S, is past)
    task_stops_its_engine(airflow, run)
    with client.app.state.sessionmaker() as session:
        session.execute(update(TrainingJob).where(TrainingJob.id == job_id)
                        .values(stop_requested_at=utcnow() - timedelta(minutes=5)))
        session.commit()
    detail = client.get(f"/v1/trainings/{job_id}", headers=auth).json()
    assert (detail["status"], detail["output_path"], detail["error"]) == ("stopped", None, None)


def test_a_stop_that_cannot_reach_the_training_says_what_to_retry(client, auth, airflow, mlflow, s3,
                                                                  monkeypatch) -> None:
    """Airflow does not answer and S3 is down too: 503 saying the stop is recorded and to retry it;
    the retry (S3 back) delivers it."""
    from api.clients.s3 import S3Storage, S3Unavailable
    from tests.api.test_trainings import running_job, stop_request

    job_id, run = running_job(client, auth, airflow)

    def slow(*args, **kwargs):
        raise AirflowTimeout("did not answer GET in time (fake)")

    def s3_down(self, key, value):
        raise S3Unavailable("cannot write (fake)")

    monkeypatch.setattr(airflow, "get_dag_run", slow)
    monkeypatch.setattr(S3Storage, "put_json", s3_down)
    resp = client.post(f"/v1/trainings/{job_id}/stop", headers=auth)
    assert resp.status_code == 503 and resp.headers["Retry-After"] == "5"
    assert resp.json()["detail"] == (
        f"The stop of job {job_id} is recorded, but it cannot reach the training now: the storage service (S3) is "
        f"unavailable and the pipeline service (Airflow) did not answer. Retry POST /v1/trainings/{job_id}/stop in "
        "a few seconds (asking again repeats the request)")
    assert stop_request(s3, job_id) is None
    monkeypatch.undo()
    assert client.post(f"/v1/trainings/{job_id}/stop", headers=auth).status_code == 202
    assert stop_request(s3, job_id)["run_id"] == run


def test_reconcile_ends_the_run_of_a_stop_recorded_while_airflow_did_not_answer(client, auth, airflow, mlflow, s3,
                                                                               monkeypatch) -> None:
    """bench.load: stops recorded while Airflow was slow left their runs going (validate, prepare,
    waiting for the gpu pool) until the train task read the request: 81 of 105 jobs were still
    active 120 s after. The reconcile pass ends such a run once Airflow answers, as the stop
    would have; a run whose training is under way is left to its train task (stop.json)."""
    from tests.api.test_trainings import running_job

    early = start(client, auth, make_dataset(client, auth))
    run = f"train-{early}"
    airflow.states[run] = "running"
    airflow.task(run, "validate_inputs", "running")
    training, training_run = running_job(client, auth, airflow)

    def slow(*args, **kwargs):
        raise AirflowTimeout("did not answer GET in time (fake)")

    monkeypatch.setattr(airflow, "get_dag_run", slow)
    for job_id in (early, training):
        assert client.post(f"/v1/trainings/{job_id}/stop", headers=auth).status_code == 202
    monkeypatch.undo()
    assert airflow.patches == []
    reconcile(client, airflow)
    assert airflow.patches == [(run, "failed")]  # not the one that trains
    reconcile(client, airflow)
    detail = client.get(f"/v1/trainings/{early}", headers=auth).json()
    assert (detail["status"], detail["stop_requested"]) == ("stopped", True)
    assert client.get(f"/v1/trainings/{training}", headers=auth).json()["status"] == "running"
