"""The Airflow REST API v2 client: token caching and refresh, idempotent triggers, bulk reads, errors.

Airflow's HTTP side is an httpx MockTransport here; the end-to-end tests use the real server."""

from __future__ import annotations

import json

import httpx
import pytest

from api.clients.airflow import AirflowClient, AirflowError, AirflowUnavailable, DagNotFound
from devstack.ports import free_ports


class Recorder:
    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.tokens = 0
        self.valid_token = "t1"
        self.runs: dict[str, str] = {}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.url.path == "/auth/token":
            self.tokens += 1
            assert json.loads(request.content) == {"username": "admin", "password": "pw"}
            return httpx.Response(201, json={"access_token": self.valid_token})
        if request.headers.get("Authorization") != f"Bearer {self.valid_token}":
            return httpx.Response(401, json={"detail": "expired"})
        if request.method == "POST" and request.url.path == "/api/v2/dags/dv/dagRuns":
            body = json.loads(request.content)
            assert body["logical_date"] is None and "conf" in body
            if body["dag_run_id"] in self.runs:
                return httpx.Response(409, json={"detail": "exists"})
            self.runs[body["dag_run_id"]] = "queued"
            return httpx.Response(200, json={"dag_run_id": body["dag_run_id"], "state": "queued"})
        if request.method == "GET" and request.url.path == "/api/v2/dags/dv/dagRuns":
            terms = request.url.params["run_id_pattern"].split("|")
            runs = [{"dag_run_id": r, "dag_id": "dv", "state": s} for r, s in self.runs.items()
                    if any(t in r for t in terms)]
            return httpx.Response(200, json={"dag_runs": runs, "total_entries": len(runs)})
        if request.method == "GET" and request.url.path.startswith("/api/v2/dags/dv/dagRuns/"):
            run_id = request.url.path.rsplit("/", 1)[1]
            if run_id not in self.runs:  # Airflow's own words for a missing run
                return httpx.Response(404, json={"detail": f"The DagRun with dag_id: `dv` and run_id: `{run_id}` "
                                                           "was not found"})
            return httpx.Response(200, json={"dag_run_id": run_id, "dag_id": "dv", "state": self.runs[run_id]})
        if request.url.path.startswith("/api/v2/dags/missing/dagRuns"):
            return httpx.Response(404, json={"detail": "The Dag with ID: `missing` was not found"})
        return httpx.Response(500)


def make(recorder: Recorder) -> AirflowClient:
    return AirflowClient("http://airflow.test", "admin", "pw", transport=httpx.MockTransport(recorder))


def test_trigger_is_idempotent_and_token_cached() -> None:
    rec = Recorder()
    client = make(rec)
    assert client.trigger_dag_run("dv", "validate-1", {"dataset_id": "1", "s3_key": "k"}) is True
    assert client.trigger_dag_run("dv", "validate-1", {"dataset_id": "1", "s3_key": "k"}) is False
    assert rec.tokens == 1
    assert client.get_dag_run("dv", "validate-1").state == "queued"
    assert client.get_dag_run("dv", "validate-404") is None


def test_token_refreshed_on_401() -> None:
    rec = Recorder()
    client = make(rec)
    client.trigger_dag_run("dv", "validate-1", {})
    rec.valid_token = "t2"  # Airflow restarted / token expired
    rec.runs["validate-1"] = "success"
    assert client.get_dag_run("dv", "validate-1").state == "success"
    assert rec.tokens == 2


def test_list_runs_in_one_request() -> None:
    rec = Recorder()
    rec.runs = {"validate-a": "success", "validate-b": "running", "validate-ab": "failed"}
    client = make(rec)
    client.get_dag_run("dv", "validate-a")  # token
    before = len(rec.requests)
    runs = client.list_dag_runs("dv", ["validate-a", "validate-b", "validate-c"])
    assert len(rec.requests) == before + 1
    assert {r: run.state for r, run in runs.items()} == {"validate-a": "success", "validate-b": "running"}


def test_errors_are_typed() -> None:
    rec = Recorder()
    client = make(rec)
    with pytest.raises(DagNotFound, match="`missing` was not found"):
        client.trigger_dag_run("missing", "r", {})
    with pytest.raises(AirflowUnavailable, match="500"):
        client.get_dag_run("other", "r")
    port = free_ports(1)[0]
    down = AirflowClient(f"http://127.0.0.1:{port}", "admin", "pw", timeout_s=2)
    with pytest.raises(AirflowUnavailable, match="cannot reach Airflow"):
        down.trigger_dag_run("dv", "r", {})


def test_a_missing_dag_is_never_read_as_missing_runs() -> None:
    """A DAG Airflow does not know (not parsed yet, renamed) says nothing about its runs: every
    read raises `DagNotFound` (an `AirflowUnavailable`, so callers wait) instead of "no run"."""
    client = make(Recorder())
    for read in (lambda: client.list_dag_runs("missing", ["train-1"]),
                 lambda: client.get_dag_run("missing", "train-1"),
                 lambda: client.set_dag_run_state("missing", "train-1", "failed"),
                 lambda: client.list_active_runs("missing"),
                 lambda: client.trigger_dag_run("missing", "train-1", {})):
        with pytest.raises(DagNotFound) as caught:
            read()
        assert isinstance(caught.value, AirflowUnavailable)
        assert "not loaded in Airflow yet" in caught.value.detail
    assert client.get_dag_run("dv", "train-404") is None  # a missing run of a known DAG stays None


def test_a_slow_airflow_is_a_timeout_and_a_closed_port_is_unavailable() -> None:
    """A server that takes the request and never answers (Airflow up but slow) raises
    `AirflowTimeout`, which the job start treats as 'maybe triggered'; a port nobody listens on
    is a plain `AirflowUnavailable` (503, the job undone). Real sockets, no mock transport."""
    import socket

    from api.clients.airflow import AirflowTimeout, AirflowUnavailable

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel accepts the connections; nobody ever answers
        slow = AirflowClient(f"http://127.0.0.1:{silent.getsockname()[1]}", "admin", "pw", 0.5)
        with pytest.raises(AirflowTimeout, match="in time"):
            slow.trigger_dag_run("dv", "train-1", {})
        slow.close()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]  # bound but not listening: connection refused
        closed = AirflowClient(f"http://127.0.0.1:{closed_port}", "admin", "pw", 0.5)
        with pytest.raises(AirflowUnavailable) as refused:
            closed.trigger_dag_run("dv", "train-1", {})
        assert not isinstance(refused.value, AirflowTimeout)
        closed.close()
