"""Following a job end to end on the real stack (API under uvicorn on PostgreSQL, SeaweedFS,
Airflow running `qlora_training`, MLflow), without polling its detail: a webhook receiver on
loopback hears `dataset.ready` then `training.completed` (signed; a 500 answer is retried),
the events read from `queued` to `completed` with the epochs and the checkpoint between them
(recorded while the job ran; the lag of each event is printed), the metric history equals
MLflow's, the whole log pages back; an API killed while a job ends still delivers after its
restart; a private URL is refused by an API that does not allow them."""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from api.clients.airflow import AirflowClient
from api.services.webhooks import signing
from devstack.api_server import APIServer
from devstack.seed import seed_tiny_models
from tests.e2e.journey import login, own_api, ready_dataset, sigkill, start_job, watch
from training import job_spec

pytestmark = [pytest.mark.e2e, pytest.mark.stack, pytest.mark.timeout(900)]

MODEL = "flamingo-tiny-classification"


class Receiver:
    """Records each POST with the time it arrived; answers the statuses in `answers` first
    (by event type), then 204."""

    def __init__(self) -> None:
        self.received: list[tuple[float, dict[str, str], str]] = []
        self.answers: dict[str, list[int]] = {}
        this = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length", 0))).decode()
                this.received.append((time.time(), {k.lower(): v for k, v in self.headers.items()}, body))
                queue = this.answers.get(json.loads(body)["type"], [])
                self.send_response(queue.pop(0) if queue else 204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/qlora-hooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def messages(self) -> list[tuple[float, dict[str, str], dict]]:
        return [(at, headers, json.loads(body)) for at, headers, body in self.received]

    def wait_for(self, count: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.received) < count:
            assert time.monotonic() < deadline, [m[2]["type"] for m in self.messages()]
            time.sleep(0.1)


@pytest.fixture
def follow_api(postgres_server, s3, airflow, mlflow_uri, tmp_path):
    """An API of this test's own (it is killed and restarted): loopback webhooks allowed, the
    reconcile pass every second, retries 2 s apart."""
    with own_api(tmp_path / "api", database_url=postgres_server.create_database("qlora_follow", exist_ok=True),
                 s3=s3, airflow=airflow, mlflow_uri=mlflow_uri,
                 settings={"QLORA_RECONCILE_INTERVAL_S": "1", "QLORA_WEBHOOK_ALLOW_PRIVATE": "true",
                           "QLORA_WEBHOOK_RETRY_BASE_S": "2", "QLORA_WEBHOOK_POLL_INTERVAL_S": "0.2"}) as server:
        yield server


def checkpoint_saved_at(s3, job_id: str) -> str:
    """When the engine saved the job's first checkpoint, from the result.json the train task published."""
    from training import s3 as s3_layout

    body = s3.client().get_object(Bucket=s3.bucket, Key=s3_layout.training_result_key(job_id))["Body"].read()
    return json.loads(body)["checkpoints"][0]["created_at"]


def crash_and_restart(server: APIServer, until) -> float:
    """SIGKILLs the API, waits for `until()`, starts it again; returns seconds it was down."""
    sigkill(server)
    down = time.monotonic()
    deadline = down + 240
    while not until():
        assert time.monotonic() < deadline, "the job never ended while the API was down"
        time.sleep(0.5)
    server.start()
    server.wait_ready()
    return time.monotonic() - down


def test_follow_a_job_events_metrics_logs_and_signed_webhooks(follow_api, airflow, mlflow_uri, s3, tmp_path):
    lines = seed_tiny_models(s3, tmp_path / "seed.log")
    assert not any("failed" in line for line in lines), lines
    receiver = Receiver()
    receiver.answers["training.completed"] = [500]
    base = follow_api.url + "/v1"
    with httpx.Client(base_url=base, timeout=60) as api:
        login(api)
        hook = api.post("/webhooks", json={"url": receiver.url, "events": ["dataset.ready", "training.completed"]})
        assert hook.status_code == 201, hook.text
        secret = hook.json()["secret"]
        assert "secret" not in api.get("/webhooks").json()[0]

        dataset_id = ready_dataset(api, tmp_path)
        receiver.wait_for(1, 30)
        job_id = start_job(api, dataset_id, MODEL, "follow", epochs=2, eval_every_epochs=1)
        # nobody reads the job: the webhook says when it ended (500 first, then the retry)
        receiver.wait_for(3, 300)
        messages = receiver.messages()
        assert [m[2]["type"] for m in messages] == ["dataset.ready", "training.completed", "training.completed"]
        for _, headers, body in receiver.received:
            assert signing.verify(secret, headers, body), headers
        assert messages[0][2]["data"]["id"] == dataset_id
        first, retry = messages[1], messages[2]
        assert first[1]["webhook-id"] == retry[1]["webhook-id"] and retry[0] - first[0] >= 1.5
        detail = api.get(f"/trainings/{job_id}").json()
        assert retry[2]["data"] == detail and detail["status"] == "completed"
        completed_at = datetime.fromisoformat(detail["completed_at"]).timestamp()
        delay_first, delay_delivered = first[0] - completed_at, retry[0] - completed_at
        print(f"\nwebhook delay after the run ended: first attempt {delay_first:.2f} s, "
              f"delivered (after one 500 and a 2 s backoff) {delay_delivered:.2f} s")
        deliveries = api.get(f"/webhooks/{hook.json()['id']}/deliveries").json()
        assert [(a["status_code"], a["next_retry_at"] is None) for a in deliveries[0]["attempts"]] == [
            (500, False), (204, True)]

        # events: queued -> completed in order, with both epochs and their eval metrics
        events = api.get(f"/trainings/{job_id}/events").json()["data"]
        kinds = [(e["type"], e["data"].get("to_status"), e["data"].get("to_stage"), e["data"].get("epoch"))
                 for e in events]
        print("events:", [e["message"] for e in events])
        assert kinds[0] == ("status", "queued", None, None) and kinds[-1][:2] == ("status", "completed")
        assert kinds[-1][2] == "finished"
        statuses = [k[1] for k in kinds if k[0] == "status"]
        assert statuses == sorted(statuses, key=["queued", "running", "completed"].index)
        epochs = [e for e in events if e["type"] == "epoch"]
        assert [e["data"]["epoch"] for e in epochs] == [1, 2]
        assert all("accuracy" in e["data"]["metrics"] for e in epochs)
        stages = [k[2] for k in kinds if k[0] == "status" and k[2]]
        assert "training" in stages and stages.index("training") < kinds.index(("epoch", None, None, 1))
        assert [e["id"] for e in events] == sorted(e["id"] for e in events)
        # the checkpoint saved after epoch 1's evaluation: between the epochs, recorded while the job ran
        checkpoints = [e for e in events if e["type"] == "checkpoint"]
        assert [c["data"]["step"] for c in checkpoints] == [epochs[0]["data"]["step"]], checkpoints
        assert checkpoints[0]["data"]["location"].startswith("s3://")
        order = [e["id"] for e in (epochs[0], checkpoints[0], epochs[1])]
        assert order == sorted(order) and events[-1]["id"] > order[-1]
        assert datetime.fromisoformat(checkpoints[0]["created_at"]).timestamp() < completed_at

        # metric history, paged, equals MLflow's
        from mlflow.tracking import MlflowClient

        mlflow = MlflowClient(tracking_uri=mlflow_uri)
        got: dict[str, list] = {"loss": [], "learning_rate": [], "epoch_accuracy": []}
        after = -1
        while True:
            resp = api.get(f"/trainings/{job_id}/metrics", params={"keys": ",".join(got), "after_step": after,
                                                                   "limit": 3})
            assert resp.status_code == 200, resp.text
            for key, points in resp.json().items():
                got[key] += points
            if resp.headers["X-Has-More"] == "false":
                break
            after = int(resp.headers["X-Next-After-Step"])
        for key, points in got.items():
            truth = sorted(mlflow.get_metric_history(detail["mlflow_run_id"], key), key=lambda m: (m.step, m.timestamp))
            assert [(p["step"], p["value"]) for p in points] == [(m.step, m.value) for m in truth], key
            assert points, key

        # the whole log, paged, is the train task's log as Airflow serves it
        text, offset = "", 0
        while True:
            resp = api.get(f"/trainings/{job_id}/logs", params={"offset": offset, "limit": 10})
            assert resp.status_code == 200, resp.text
            text += resp.text
            if resp.headers["X-Log-Complete"] == "true":
                break
            offset = int(resp.headers["X-Next-Offset"])
        client = AirflowClient(airflow.url, airflow.username, airflow.password)
        try:
            run = job_spec.dag_run_id(job_id)
            tis = client.list_task_instances("qlora_training", run)
            tries = tis["train"].try_number
            full = client.get_task_log("qlora_training", run, "train", tries)
        finally:
            client.close()
        # event lag: the change in Airflow (or the engine's save) -> its event (reconcile pass every 1 s)
        def recorded(match) -> float:
            return datetime.fromisoformat(next(e for e in events if match(e))["created_at"]).timestamp()

        first_start = min(t.start_date for t in tis.values() if t.start_date).timestamp()
        last_end = max(t.end_date for t in tis.values() if t.end_date).timestamp()
        lags = {
            "first task started -> running": recorded(lambda e: e["data"].get("to_status") == "running")
            - first_start,
            "train task started -> stage training": recorded(lambda e: e["data"].get("to_stage") == "training")
            - tis["train"].start_date.timestamp(),
            "checkpoint saved (engine clock, 1 s resolution) -> checkpoint": recorded(lambda e: e["type"] == "checkpoint")
            - datetime.fromisoformat(checkpoint_saved_at(s3, job_id)).timestamp(),
            # completed once every task succeeded (the run's own success may come later)
            "last task ended -> completed": recorded(lambda e: e["data"].get("to_status") == "completed") - last_end,
        }
        print("event lag (QLORA_RECONCILE_INTERVAL_S=1): " + "; ".join(f"{k} {v:.2f} s" for k, v in lags.items()))
        assert all(v > -1.5 for v in lags.values()), lags  # recorded after the fact (1 s: the engine's stamp)
        assert text == "".join(line + "\n" for line in full) and len(full) > 10
        assert detail["logs"] and detail["logs"].splitlines()[-1] in text

        # the API dies while a job ends: after its restart the job is settled and delivered
        job_b = start_job(api, dataset_id, MODEL, "follow-b", epochs=2)
        watch(api, job_b, lambda j: j["status"] == "running", 240)
        client = AirflowClient(airflow.url, airflow.username, airflow.password)
        try:
            down_s = crash_and_restart(follow_api, lambda: getattr(
                client.get_dag_run("qlora_training", job_spec.dag_run_id(job_b)), "state", None) == "success")
        finally:
            client.close()
        restarted = time.monotonic()
        receiver.wait_for(4, 120)
        print(f"API down {down_s:.1f} s; training.completed delivered {time.monotonic() - restarted:.1f} s after "
              "the restart")
        last = receiver.messages()[3]
        assert last[2]["type"] == "training.completed" and last[2]["data"]["job_id"] == job_b
        assert signing.verify(secret, last[1], receiver.received[3][2])
        after_b = api.get(f"/trainings/{job_b}/events").json()["data"]
        assert after_b[-1]["data"]["to_status"] == "completed"
    receiver.server.shutdown()


def test_a_private_url_is_refused(api_server):
    """The API's default (QLORA_WEBHOOK_ALLOW_PRIVATE unset) refuses loopback and private targets."""
    with httpx.Client(base_url=api_server.base_url.rstrip("/") + "/v1", timeout=30) as api:
        login(api)
        for url in ("http://127.0.0.1:8080/hook", "http://169.254.169.254/latest", "http://10.0.0.7/x"):
            resp = api.post("/webhooks", json={"url": url, "events": ["training.completed"]})
            assert resp.status_code == 400 and "webhooks go to public addresses only" in resp.json()["detail"]
        assert api.get("/webhooks").json() == []
