"""The job detail while Airflow is slow (`api/services/trainings/reads.py::read_detail`): its
status comes from the live state the list shares, and what only Airflow has (task instances, so
the stage; the log tail) is read within `detail_airflow_timeout_s`, else shown as last stored and
named in `stale`. bench.load measured the detail at p50 10 s under load: it waited for the 10 s
Airflow timeout on every read of an unsettled job.

Airflow here is a real HTTP server (real sockets, the API's real `AirflowClient`) that answers the
run reads at once and can be told to hang on the per-job reads; PostgreSQL and S3 are real."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from tests.api.conftest import make_settings
from tests.api.test_trainings import make_dataset, start

DETAIL_TIMEOUT_S = 0.5
AIRFLOW_TIMEOUT_S = 20.0  # the client's own timeout: what the detail waited for before
TAIL = [f"[engine] step {i}/10 loss 0.{9 - i}" for i in range(4)]


class SlowAirflow(ThreadingHTTPServer):
    """The parts of Airflow's REST API the trainings API calls. Every run is `running` with its
    train task running; `hang` makes task instances, logs and XCom wait until `release` (or
    AIRFLOW_TIMEOUT_S), as the api-server did under bench.load."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.runs: dict[str, str] = {}
        self.hang = False
        self.delay_s = 0.0  # every per-job read answers after this long
        self.per_job_reads = 0  # per-job reads answered (task instances, logs, XCom)
        self.hang_runs: set[str] = set()  # per-job reads of these runs hang like `hang`
        self.release = threading.Event()
        self.hung: list[str] = []
        self.url = f"http://127.0.0.1:{self.server_address[1]}"

    def answer(self, method: str, path: str, query: str, body: dict[str, Any]) -> tuple[int, Any]:
        if path == "/auth/token":
            return 201, {"access_token": "t"}
        runs = re.fullmatch(r"/api/v2/dags/qlora_training/dagRuns(?:/([^/]+)(/.*)?)?", path)
        if runs is None:
            return 404, {"detail": "not here"}
        run_id, rest = runs.group(1), runs.group(2) or ""
        if run_id is None and method == "POST":
            self.runs[body["dag_run_id"]] = "running"
            return 200, {"dag_run_id": body["dag_run_id"], "state": "queued"}
        if run_id is None:
            return 200, {"dag_runs": [{"dag_run_id": r, "state": s, "start_date": "2026-12-01T00:00:00Z"}
                                      for r, s in self.runs.items() if r in query]}
        if run_id not in self.runs:
            return 404, {"detail": f"The DagRun with dag_id: `qlora_training` and run_id: `{run_id}` was not found"}
        if not rest:
            return 200, {"dag_run_id": run_id, "state": self.runs[run_id]}
        if self.hang or run_id in self.hang_runs:
            self.hung.append(rest)
            self.release.wait(AIRFLOW_TIMEOUT_S + 5)
        time.sleep(self.delay_s)
        self.per_job_reads += 1
        if rest == "/taskInstances":
            states = {"validate_inputs": "success", "prepare": "success", "train": "running"}
            return 200, {"task_instances": [{"task_id": t, "state": s, "try_number": 1,
                                             "start_date": "2026-12-01T00:00:01Z"} for t, s in states.items()]}
        if rest.startswith("/taskInstances/train/logs/"):
            return 200, {"content": [{"event": line} for line in TAIL]}
        return 404, {"detail": "no such XCom entry"}


class _Handler(BaseHTTPRequestHandler):
    server: SlowAirflow

    def _serve(self) -> None:
        path, _, query = self.path.partition("?")
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else {}
        code, payload = self.server.answer(self.command, path, query, body)
        data = json.dumps(payload).encode()
        try:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:  # the client gave up waiting
            pass

    do_GET = do_POST = do_PATCH = _serve

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def slow_airflow() -> Iterator[SlowAirflow]:
    server = SlowAirflow()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.release.set()
    server.shutdown()
    server.server_close()


@pytest.fixture
def settings(postgres_url, s3, slow_airflow):
    return make_settings(postgres_url, s3, airflow_url=slow_airflow.url, airflow_timeout_s=AIRFLOW_TIMEOUT_S,
                         detail_airflow_timeout_s=DETAIL_TIMEOUT_S, live_state_ttl_s=0, max_active_jobs_per_user=100)


@pytest.fixture
def client(settings) -> Iterator[TestClient]:
    """The app with its real Airflow client (no fake): the timeouts are the real ones."""
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def test_the_detail_serves_the_stored_stage_and_log_tail_when_airflow_hangs(client, auth, slow_airflow) -> None:
    job_id = start(client, auth, make_dataset(client, auth))
    fresh = client.get(f"/v1/trainings/{job_id}", headers=auth)
    assert fresh.status_code == 200, fresh.text
    fresh = fresh.json()
    assert (fresh["status"], fresh["stage"], fresh["logs"]) == ("running", "training", "\n".join(TAIL))
    assert (fresh["stale"], fresh["stale_reason"]) == ([], None)

    slow_airflow.hang = True
    asked = time.monotonic()
    stale = client.get(f"/v1/trainings/{job_id}", headers=auth)
    waited = time.monotonic() - asked
    assert stale.status_code == 200, stale.text
    stale = stale.json()
    assert slow_airflow.hung == ["/taskInstances"]  # asked, gave up, read nothing more
    assert waited < AIRFLOW_TIMEOUT_S / 2, waited  # the short timeout, not the client's own
    # the status from the shared live state, the stage and the tail as last stored, said so
    assert (stale["status"], stale["stage"], stale["logs"]) == ("running", "training", "\n".join(TAIL))
    assert stale["stale"] == ["stage", "logs"]
    assert "did not answer within 0.5 s" in stale["stale_reason"]
    # the other fields are what the fresh read showed
    assert {k: v for k, v in stale.items() if k not in ("stale", "stale_reason", "updated_at")} == \
        {k: v for k, v in fresh.items() if k not in ("stale", "stale_reason", "updated_at")}

    slow_airflow.hang = False
    slow_airflow.release.set()
    again = client.get(f"/v1/trainings/{job_id}", headers=auth).json()
    assert (again["stage"], again["stale"], again["stale_reason"]) == ("training", [], None)


def test_a_job_airflow_has_no_stored_state_for_says_so(client, auth, slow_airflow) -> None:
    """Never read fresh (Airflow hung from the start): no tail to show, and the detail says the
    logs are unavailable instead of showing an empty log as if nothing had run."""
    job_id = start(client, auth, make_dataset(client, auth))
    slow_airflow.hang = True
    detail = client.get(f"/v1/trainings/{job_id}", headers=auth).json()
    assert detail["status"] == "running" and detail["stage"] is None
    assert detail["stale"] == ["stage", "logs"] and detail["logs"].startswith("(logs unavailable")


def test_the_detail_reads_share_one_time_budget(client, auth, slow_airflow) -> None:
    """Each read answers within the timeout, but not all of them together: the detail stops
    asking once its budget is spent instead of adding the reads' times up."""
    job_id = start(client, auth, make_dataset(client, auth))
    assert client.get(f"/v1/trainings/{job_id}", headers=auth).json()["stale"] == []
    slow_airflow.delay_s = DETAIL_TIMEOUT_S * 0.7  # task instances, then the log: 1.4 budgets
    detail = client.get(f"/v1/trainings/{job_id}", headers=auth).json()
    assert "logs" in detail["stale"] and detail["logs"] == "\n".join(TAIL), detail


def _timing(resp) -> dict[str, float]:
    parts = {}
    for entry in resp.headers["Server-Timing"].split(","):
        name, _, dur = entry.strip().partition(";dur=")
        parts[name] = float(dur)
    return parts


def test_the_server_timing_header_says_where_the_detail_spent_its_time(client, auth, slow_airflow) -> None:
    """`Server-Timing`: the time of Airflow's reads (each delayed here), the database's and the
    whole time in the API, so an operator sees which service a slow detail waited for."""
    job_id = start(client, auth, make_dataset(client, auth))
    slow_airflow.delay_s = 0.1  # each per-job read: task instances, the MLflow run id (XCom), the log
    slow_airflow.per_job_reads = 0
    resp = client.get(f"/v1/trainings/{job_id}", headers=auth)
    assert resp.status_code == 200, resp.text
    parts = _timing(resp)
    assert set(parts) >= {"db", "live", "airflow", "app"}, parts
    assert slow_airflow.per_job_reads >= 2  # within the 0.5 s budget: at least task instances and XCom
    assert parts["airflow"] >= slow_airflow.per_job_reads * 100, parts  # each delayed read counted there
    assert parts["app"] >= parts["airflow"] + parts["db"] > parts["airflow"], parts
    assert "mlflow" not in parts  # no MLflow run known yet: MLflow was not asked
    listed = client.get("/v1/trainings", headers=auth)  # every answer carries the header
    assert _timing(listed)["app"] > 0 and "airflow" not in _timing(listed)



def test_a_reconcile_pass_waiting_on_airflow_does_not_hold_up_the_detail(client, auth, slow_airflow) -> None:
    """The background pass settles two jobs whose runs failed: the first at once, then Airflow
    hangs on the second's task instances. Committed job by job, the first job's row is not
    locked while the pass waits, so its detail answers at once (settled) instead of waiting
    for the pass (PostgreSQL row locks: the detail of a job it does not see settled writes it)."""
    from datetime import timedelta

    from api.main import reconcile_once
    from api.models import TrainingJob
    from api.models.base import utcnow

    first, second = (start(client, auth, make_dataset(client, auth)) for _ in range(2))
    with client.app.state.sessionmaker() as session:  # both ended in a pass before, unsettled yet
        for n, job_id in enumerate((first, second)):
            job = session.get(TrainingJob, job_id)
            job.status, job.updated_at = "failed", utcnow() - timedelta(minutes=2 - n)
            slow_airflow.runs[f"train-{job_id}"] = "failed"
        session.commit()
    slow_airflow.hang_runs.add(f"train-{second}")
    passing = threading.Thread(target=reconcile_once, args=(client.app,), daemon=True)
    passing.start()
    deadline = time.monotonic() + 10
    while "/taskInstances" not in slow_airflow.hung:  # the pass settled `first`, now waits on `second`
        assert time.monotonic() < deadline and passing.is_alive(), slow_airflow.hung
        time.sleep(0.05)
    asked = time.monotonic()
    detail = client.get(f"/v1/trainings/{first}", headers=auth)
    waited = time.monotonic() - asked
    slow_airflow.hang_runs.clear()
    slow_airflow.release.set()
    passing.join(AIRFLOW_TIMEOUT_S + 10)
    assert detail.status_code == 200, detail.text
    assert (detail.json()["status"], detail.json()["stale"]) == ("failed", []), detail.json()
    assert waited < AIRFLOW_TIMEOUT_S / 2, f"the detail waited {waited:.1f} s for the reconcile pass"
