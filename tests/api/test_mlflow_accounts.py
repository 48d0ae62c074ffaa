"""MLflow per tenant, against the REAL tracking server with MLflow's `basic-auth` app (as `make up`
runs it): users sign up through the API, then sign in to MLflow's REST API with the same
credentials. A user reads their own runs and nothing of anyone else's, deletes nothing, and
requests without credentials get 401. Runs are logged the way the train task logs them, with the
workers' own account."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient

from api.clients.mlflow_accounts import MlflowAccounts, ReservedUsername, parse_accounts
from api.core.config import Settings
from api.deps import get_airflow
from api.main import create_app
from devstack.mlflow_server import API_ACCOUNT, WORKER_ACCOUNT
from tests.api.conftest import FakeAirflow, make_settings
from training import job_spec

PASSWORD = "correct horse battery"
API2 = "/api/2.0/mlflow"


@pytest.fixture
def app_client(postgres_url, s3, mlflow_server, monkeypatch) -> Iterator[TestClient]:
    # the API's MLflow client takes its account from the settings into the process environment
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", API_ACCOUNT)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", mlflow_server.auth.accounts[API_ACCOUNT])
    settings = make_settings(postgres_url, s3, mlflow_tracking_uri=mlflow_server.url,
                             mlflow_tracking_username=API_ACCOUNT,
                             mlflow_tracking_password=mlflow_server.auth.accounts[API_ACCOUNT])
    app = create_app(settings)
    app.dependency_overrides[get_airflow] = FakeAirflow
    with TestClient(app) as client:
        yield client


def _signup(client: TestClient, username: str | None = None, password: str = PASSWORD) -> str:
    username = username or f"u{uuid.uuid4().hex[:10]}"
    resp = client.post("/v1/auth/signup", json={"username": username, "email": f"{username}@example.com",
                                                "password": password})
    assert resp.status_code == 201, resp.text
    return username


def _login(client: TestClient, username: str, password: str = PASSWORD) -> None:
    assert client.post("/v1/auth/login", json={"username": username, "password": password}).status_code == 200


class Mlflow:
    """MLflow's REST API as one account sees it."""

    def __init__(self, url: str, auth: tuple[str, str] | None) -> None:
        self.http = httpx.Client(base_url=url, auth=auth, timeout=30)

    def get(self, route: str, **params) -> httpx.Response:
        return self.http.get(route, params=params)

    def post(self, route: str, **body) -> httpx.Response:
        return self.http.post(route, json=body)

    def experiment_id(self, name: str) -> str:
        resp = self.get(f"{API2}/experiments/get-by-name", experiment_name=name)
        assert resp.status_code == 200, resp.text
        return resp.json()["experiment"]["experiment_id"]


def _log_run(worker: Mlflow, username: str) -> tuple[str, str]:
    """What the train task does for `username`'s job: a run in their experiment, a metric, an
    artifact (proxied to S3). Returns (experiment id, run id)."""
    experiment_id = worker.experiment_id(job_spec.mlflow_experiment_name(username))
    run = worker.post(f"{API2}/runs/create", experiment_id=experiment_id, run_name="job").json()["run"]["info"]
    assert worker.post(f"{API2}/runs/log-metric", run_id=run["run_id"], key="train_loss", value=0.5,
                       timestamp=0, step=1).status_code == 200
    put = worker.http.put(f"/api/2.0/mlflow-artifacts/artifacts/{experiment_id}/{run['run_id']}/artifacts/adapter/a.txt",
                          content=b"weights of " + username.encode())
    assert put.status_code == 200, put.text
    return experiment_id, run["run_id"]


def test_users_read_their_own_runs_only_and_delete_nothing(app_client, mlflow_server):
    alice, bob = _signup(app_client), _signup(app_client)
    worker = Mlflow(mlflow_server.url, (WORKER_ACCOUNT, mlflow_server.auth.accounts[WORKER_ACCOUNT]))
    a_exp, a_run = _log_run(worker, alice)
    b_exp, b_run = _log_run(worker, bob)
    a = Mlflow(mlflow_server.url, (alice, PASSWORD))

    # their own: the experiment, the run with its metric, the artifact
    me = a.get(f"{API2}/users/current").json()["user"]
    assert (me["username"], me["is_admin"]) == (alice, False)
    assert a.experiment_id(job_spec.mlflow_experiment_name(alice)) == a_exp
    got = a.get(f"{API2}/runs/get", run_id=a_run)
    assert got.status_code == 200 and got.json()["run"]["data"]["metrics"][0]["value"] == 0.5
    found = a.post(f"{API2}/runs/search", experiment_ids=[a_exp, b_exp]).json()["runs"]
    assert [r["info"]["run_id"] for r in found] == [a_run]  # bob's run is filtered out
    art = a.get(f"/api/2.0/mlflow-artifacts/artifacts/{a_exp}/{a_run}/artifacts/adapter/a.txt")
    assert art.status_code == 200 and art.content == b"weights of " + alice.encode()
    visible = a.post(f"{API2}/experiments/search", max_results=1000).json().get("experiments", [])
    assert {e["name"] for e in visible} == {job_spec.mlflow_experiment_name(alice)}

    # bob's: 403 on his experiment, runs, metrics and artifacts, however asked
    for resp in (a.get(f"{API2}/experiments/get", experiment_id=b_exp),
                 a.get(f"{API2}/experiments/get-by-name", experiment_name=job_spec.mlflow_experiment_name(bob)),
                 a.get(f"{API2}/runs/get", run_id=b_run),
                 a.get(f"{API2}/metrics/get-history", run_id=b_run, metric_key="train_loss"),
                 a.get(f"{API2}/artifacts/list", run_id=b_run),
                 a.get(f"/api/2.0/mlflow-artifacts/artifacts/{b_exp}/{b_run}/artifacts/adapter/a.txt"),
                 a.get("/get-artifact", path="adapter/a.txt", run_uuid=b_run)):
        assert resp.status_code == 403, (resp.request.url, resp.status_code, resp.text[:200])

    # deletes and writes: refused on their own and on bob's
    for resp in (a.post(f"{API2}/runs/delete", run_id=a_run), a.post(f"{API2}/runs/delete", run_id=b_run),
                 a.post(f"{API2}/experiments/delete", experiment_id=a_exp),
                 a.post(f"{API2}/experiments/delete", experiment_id=b_exp),
                 a.http.delete(f"/api/2.0/mlflow-artifacts/artifacts/{a_exp}/{a_run}/artifacts/adapter/a.txt"),
                 a.post(f"{API2}/runs/log-metric", run_id=a_run, key="x", value=1.0, timestamp=0),
                 a.post(f"{API2}/runs/set-tag", run_id=b_run, key="x", value="y")):
        assert resp.status_code == 403, (resp.request.url, resp.status_code, resp.text[:200])
    assert worker.get(f"{API2}/runs/get", run_id=a_run).json()["run"]["info"]["lifecycle_stage"] == "active"
    assert worker.get(f"/api/2.0/mlflow-artifacts/artifacts/{a_exp}/{a_run}/artifacts/adapter/a.txt").status_code == 200

    # no credentials, a wrong password, another user's password: 401 (the UI too)
    for auth in (None, (alice, "wrong password!"), (alice, PASSWORD + "x")):
        anonymous = Mlflow(mlflow_server.url, auth)
        assert anonymous.get(f"{API2}/runs/get", run_id=a_run).status_code == 401
        assert anonymous.get("/").status_code == 401
    assert httpx.get(f"{mlflow_server.url}/", auth=(alice, PASSWORD)).status_code == 200  # the UI, signed in


def test_signup_refuses_service_account_names_and_takes_no_squatted_experiment(app_client, mlflow_server):
    resp = app_client.post("/v1/auth/signup", json={"username": WORKER_ACCOUNT, "email": "w@example.com",
                                                     "password": PASSWORD})
    assert resp.status_code == 400 and "reserved" in resp.json()["detail"]
    worker_password = mlflow_server.auth.accounts[WORKER_ACCOUNT]
    assert Mlflow(mlflow_server.url, (WORKER_ACCOUNT, worker_password)).get(f"{API2}/users/current").status_code == 200

    # users cannot create experiments (mlflow/qlora_mlflow_auth.py); one made before that rule, or
    # by an operator, under carol's name before carol signs up is not given to her
    mallory, carol = _signup(app_client), f"u{uuid.uuid4().hex[:10]}"
    m = Mlflow(mlflow_server.url, (mallory, PASSWORD))
    assert m.post(f"{API2}/experiments/create", name=job_spec.mlflow_experiment_name(carol)).status_code == 403
    admin = Mlflow(mlflow_server.url, (mlflow_server.auth.admin_username, mlflow_server.auth.admin_password))
    created = admin.post(f"{API2}/experiments/create", name=job_spec.mlflow_experiment_name(carol))
    assert created.status_code == 200, created.text
    grant = admin.post("/api/3.0/mlflow/users/permissions/grant", username=mallory, resource_type="experiment",
                       resource_id=created.json()["experiment_id"], permission="MANAGE")
    assert grant.status_code == 200, grant.text  # as MLflow hands its creator
    _signup(app_client, carol)
    worker = Mlflow(mlflow_server.url, (WORKER_ACCOUNT, worker_password))
    carol_exp, carol_run = _log_run(worker, carol)
    assert carol_exp != created.json()["experiment_id"]  # a fresh experiment, not mallory's
    assert m.get(f"{API2}/runs/get", run_id=carol_run).status_code == 403
    assert Mlflow(mlflow_server.url, (carol, PASSWORD)).get(f"{API2}/runs/get", run_id=carol_run).status_code == 200


def test_every_login_checks_the_account_without_an_error(app_client, mlflow_server, caplog):
    """The READ grants exist after signup: granting them again at each login is no failure."""
    erin = _signup(app_client)
    keeper = app_client.app.state.mlflow_accounts
    first = keeper.sync_user(erin, PASSWORD)
    assert keeper.sync_user(erin, PASSWORD) == first
    keeper.grant_registered_model(erin, "out")
    keeper.grant_registered_model(erin, "out")
    with caplog.at_level("WARNING", logger="api.services.mlflow_users"):
        _login(app_client, erin)
    assert "not checked at login" not in caplog.text


def test_login_repairs_an_account_that_drifted(app_client, mlflow_server):
    """A user whose MLflow account is missing (signed up while MLflow was down, or before MLflow
    had auth) or holds another password gets it back, with READ on their runs, at login."""
    admin = Mlflow(mlflow_server.url, (mlflow_server.auth.admin_username, mlflow_server.auth.admin_password))
    dave = _signup(app_client)
    worker = Mlflow(mlflow_server.url, (WORKER_ACCOUNT, mlflow_server.auth.accounts[WORKER_ACCOUNT]))
    _, run = _log_run(worker, dave)
    assert admin.http.request("DELETE", f"{API2}/users/delete", json={"username": dave}).status_code == 200
    d = Mlflow(mlflow_server.url, (dave, PASSWORD))
    assert d.get(f"{API2}/runs/get", run_id=run).status_code == 401
    _login(app_client, dave)
    assert d.get(f"{API2}/runs/get", run_id=run).status_code == 200

    assert admin.http.patch(f"{API2}/users/update-password",
                            json={"username": dave, "password": "some other password"}).status_code == 200
    assert d.get(f"{API2}/runs/get", run_id=run).status_code == 401
    _login(app_client, dave)
    assert d.get(f"{API2}/runs/get", run_id=run).status_code == 200


# -- without a server: what the account keeper refuses to do ------------------------------------
def _recording_keeper(users: dict[str, bool]) -> tuple[MlflowAccounts, list[tuple[str, str]]]:
    """A keeper whose MLflow knows `users` ({name: is_admin}) and accepts no user's password;
    returns it and the (method, path) of every request it sent."""
    sent: list[tuple[str, str]] = []

    def handle(request: httpx.Request) -> httpx.Response:
        sent.append((request.method, request.url.path))
        if request.url.path.endswith("/users/get"):
            name = request.url.params["username"]
            if name not in users:
                return httpx.Response(404, json={"error_code": "RESOURCE_DOES_NOT_EXIST"})
            return httpx.Response(200, json={"user": {"username": name, "is_admin": users[name]}})
        if request.url.path.endswith("/users/current"):
            return httpx.Response(401, text="You are not authenticated")
        return httpx.Response(200, json={})

    return MlflowAccounts("http://mlflow", "qlora-api", "pw", transport=httpx.MockTransport(handle)), sent


def test_an_admin_account_is_never_given_to_a_user():
    """A service user named like an MLflow admin (signed up before MLflow had auth, say) logs in:
    the admin's password is not touched, nothing is granted."""
    keeper, sent = _recording_keeper({WORKER_ACCOUNT: True})
    with pytest.raises(ReservedUsername):
        keeper.sync_user(WORKER_ACCOUNT, "the user's own password")
    assert not [r for r in sent if r[0] in ("PATCH", "POST")], sent
    with pytest.raises(ReservedUsername):
        keeper.provision_new_user(WORKER_ACCOUNT, "the user's own password")
    assert not [r for r in sent if r[0] in ("PATCH", "POST")], sent


def test_service_accounts_setting_is_parsed_or_refused(monkeypatch):
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):  # a stack fixture may have set them
        monkeypatch.delenv(name, raising=False)
    assert parse_accounts("qlora-api:a:b:c, qlora-worker:pw2") == {"qlora-api": "a:b:c", "qlora-worker": "pw2"}
    with pytest.raises(ValueError, match="name:password"):
        parse_accounts("qlora-api")
    assert MlflowAccounts.from_settings(Settings(mlflow_tracking_uri="http://m")) is None  # no credentials
    assert MlflowAccounts.from_settings(Settings(mlflow_tracking_uri="sqlite:///x.db", mlflow_tracking_username="a",
                                                 mlflow_tracking_password="b")) is None  # no server
