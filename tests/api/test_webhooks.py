"""`/v1/webhooks` and the outbox sender, on real PostgreSQL and SeaweedFS with a real HTTP
receiver on loopback; Airflow and MLflow are fakes (tests/e2e/test_follow_job.py runs them all)."""

from __future__ import annotations

import json
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlalchemy import select, update

from api.core.config import Settings
from api.main import reconcile_once
from api.models import Dataset, WebhookDelivery
from api.models.base import new_id, utcnow
from api.services.webhooks import signing, targets
from api.services.webhooks.outbox import WebhookSender, retry_delay_s
from tests.api.conftest import make_settings
from tests.api.test_trainings import (  # noqa: F401  (fixtures)
    FakeTrainingAirflow,
    airflow,
    make_dataset,
    mlflow,
    start,
    user_id,
)
from training import job_spec
from training import s3 as s3_layout  # the S3 key layout


class Receiver:
    """A webhook receiver on loopback: records every request; `answers` are the statuses of the
    next requests (then 204); `delay_s` makes it slow."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], str]] = []
        self.answers: list[int] = []
        self.delay_s = 0.0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length", 0))).decode()
                receiver.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                time.sleep(receiver.delay_s)
                self.send_response(receiver.answers.pop(0) if receiver.answers else 204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://localhost:{self.server.server_address[1]}/hooks?x=1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def bodies(self) -> list[dict]:
        return [json.loads(body) for _, body in self.received]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def settings(fresh_postgres_url, s3) -> Settings:
    """A database of its own (the sender sends every user's due deliveries), loopback receivers
    allowed (as `make up` does), retries 1 s apart, no background sender."""
    return make_settings(fresh_postgres_url, s3, live_state_ttl_s=0, webhook_allow_private=True, webhook_retry_base_s=1,
                         webhook_poll_interval_s=0, webhook_timeout_s=2)


@pytest.fixture
def sender(client, settings):
    made = WebhookSender(client.app.state.sessionmaker, settings)
    yield made
    made.close()


def create(client, auth, url: str, events=("training.completed", "dataset.ready")):
    return client.post("/v1/webhooks", headers=auth, json={"url": url, "events": list(events), "description": "ci"})


def make_due(client) -> None:
    """Moves every pending retry to now (instead of waiting for the backoff)."""
    with client.app.state.sessionmaker() as session:
        session.execute(update(WebhookDelivery).where(WebhookDelivery.status == "pending")
                        .values(next_attempt_at=utcnow() - timedelta(seconds=1)))
        session.commit()


def validated_dataset(client, auth, airflow, s3, valid: bool = True) -> str:
    """A dataset whose validation run just ended (the reconcile pass settles it)."""
    dataset_id = new_id()
    with client.app.state.sessionmaker() as session:
        session.add(Dataset(id=dataset_id, owner_id=user_id(client, auth), name="squares", file_name="s.zip",
                            s3_key=s3_layout.dataset_upload_key(dataset_id, "s.zip"), stage="validating",
                            status="processing", airflow_run_id=f"validate-{dataset_id}"))
        session.commit()
    report = {"valid": valid, "errors": [] if valid else ["row 3: no such clip"], "file_count": 3,
              "tasks": ["video_classification"]}
    s3.client().put_object(Bucket=s3.bucket, Key=s3_layout.dataset_report_key(dataset_id),
                           Body=json.dumps(report).encode())
    airflow.states[f"validate-{dataset_id}"] = "success"
    return dataset_id


# --- the endpoints ----------------------------------------------------------------------------

def test_create_list_delete_and_the_secret_shown_once(client, auth, other_auth, receiver) -> None:
    resp = create(client, auth, receiver.url)
    assert resp.status_code == 201, resp.text
    hook = resp.json()
    assert hook["secret"].startswith("whsec_") and len(signing._key(hook["secret"])) == 24
    assert (hook["url"], hook["events"], hook["description"]) == (receiver.url, ["training.completed", "dataset.ready"],
                                                                  "ci")
    listed = client.get("/v1/webhooks", headers=auth)
    assert listed.headers["X-Total-Count"] == "1"
    assert listed.json() == [{k: v for k, v in hook.items() if k != "secret"}]
    assert client.get("/v1/webhooks", headers=other_auth).json() == []
    for method, path in (("delete", ""), ("get", "/deliveries")):
        resp = getattr(client, method)(f"/v1/webhooks/{hook['id']}{path}", headers=other_auth)
        assert resp.status_code == 404 and resp.json() == {"detail": "Webhook not found"}
    assert client.get(f"/v1/webhooks/{hook['id']}/deliveries", headers=auth).json() == []
    assert client.delete(f"/v1/webhooks/{hook['id']}", headers=auth).status_code == 204
    assert client.get("/v1/webhooks", headers=auth).json() == []
    assert client.delete(f"/v1/webhooks/{hook['id']}", headers=auth).status_code == 404
    assert client.get("/v1/webhooks").status_code == 401


@pytest.mark.parametrize("url, detail", [
    ("ftp://93.184.216.34/x", "url: must start with http:// or https://"),
    ("http:///x", "url: has no host"),
    ("https://user:pw@93.184.216.34/", "url: must not contain credentials"),
    ("http://127.0.0.1:8000/x", "url: host '127.0.0.1' resolves to 127.0.0.1, a loopback address"),
    ("http://localhost/x", "url: host 'localhost' resolves to "),
    ("http://[::1]/x", "url: host '::1' resolves to ::1, a loopback address"),
    ("http://10.1.2.3/x", "url: host '10.1.2.3' resolves to 10.1.2.3, a private address"),
    ("http://192.168.0.10/x", "url: host '192.168.0.10' resolves to 192.168.0.10, a private address"),
    ("http://169.254.169.254/latest/meta-data", "url: host '169.254.169.254' resolves to 169.254.169.254, a link-local"),
    ("http://[::ffff:10.0.0.1]/x", "a private address"),
    ("http://100.64.0.1/x", "a non-public address"),
    ("http://0.0.0.0/x", "url: host '0.0.0.0' resolves to 0.0.0.0"),
    ("http://no-such-host.invalid/x", "url: cannot resolve host 'no-such-host.invalid'"),
])
def test_private_and_malformed_urls_are_refused(postgres_url, s3, airflow, url, detail) -> None:
    from fastapi.testclient import TestClient

    from api.deps import get_airflow
    from api.main import create_app
    from tests.api.conftest import signup_and_login

    app = create_app(make_settings(postgres_url, s3))  # the default: private targets refused
    app.dependency_overrides[get_airflow] = lambda: airflow
    with TestClient(app) as client:
        auth = signup_and_login(client)
        resp = create(client, auth, url)
        assert resp.status_code == 400 and detail in resp.json()["detail"], resp.text
        assert client.get("/v1/webhooks", headers=auth).json() == []
        public = create(client, auth, "https://93.184.216.34:8443/hooks")  # a public address: accepted
        assert public.status_code == 201, public.text
        for body, what in (({"url": "https://93.184.216.34", "events": []}, "events: List should have at least 1"),
                           ({"url": "https://93.184.216.34", "events": ["job.done"]}, "events.0: Input should be"),
                           ({"events": ["dataset.ready"]}, "url: is required")):
            resp = client.post("/v1/webhooks", headers=auth, json=body)
            assert resp.status_code == 400 and resp.json()["detail"].startswith(what), resp.text


def test_the_standard_webhooks_test_vector() -> None:
    """The example of the Standard Webhooks specification's reference libraries."""
    secret, msg_id, stamp = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330
    body = '{"test": 2432232314}'
    assert signing.signature(secret, msg_id, stamp, body) == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    headers = signing.headers(secret, msg_id, body)
    assert signing.verify(secret, headers, body)
    assert not signing.verify(secret, headers, body + " ")
    assert not signing.verify(signing.new_secret(), headers, body)
    assert not signing.verify(secret, {**headers, "webhook-timestamp": str(stamp)}, body)  # too old


def test_the_backoff_keeps_retrying_for_more_than_24_hours() -> None:
    settings = Settings()
    delays, waited = [], 0.0
    while waited < settings.webhook_retry_window_s:  # the sender retries while the window is open
        delays.append(retry_delay_s(len(delays) + 1, settings, jitter=0))
        waited += delays[-1]
    assert delays[:4] == [10, 20, 40, 80] and max(delays) == 4 * 3600
    assert 24 * 3600 <= waited < 30 * 3600 and len(delays) + 1 == 17  # attempts in all (25.7 h)
    assert 10 <= retry_delay_s(1, settings) <= 11  # jitter: at most 10% more


def test_a_delivery_is_given_up_only_after_the_window(client, auth, airflow, mlflow, s3, sender, receiver) -> None:
    create(client, auth, receiver.url)
    client.app.state.airflow = airflow
    validated_dataset(client, auth, airflow, s3)
    reconcile_once(client.app)
    receiver.answers = [500, 500]
    with client.app.state.sessionmaker() as session:  # the event happened 23 h 59 min ago
        session.execute(update(WebhookDelivery).values(created_at=utcnow() - timedelta(hours=23, minutes=59)))
        session.commit()
    assert sender.run_once() == 1
    with client.app.state.sessionmaker() as session:
        delivery = session.scalars(select(WebhookDelivery)).one()
        assert (delivery.status, delivery.last_error) == ("pending", "answered 500")
        session.execute(update(WebhookDelivery).values(created_at=utcnow() - timedelta(hours=24, seconds=1)))
        session.commit()
    make_due(client)
    assert sender.run_once() == 1
    with client.app.state.sessionmaker() as session:
        delivery = session.scalars(select(WebhookDelivery)).one()
        assert (delivery.status, delivery.next_attempt_at, delivery.attempts) == ("failed", None, 2)
    make_due(client)
    assert sender.run_once() == 0 and len(receiver.received) == 2


# --- deliveries -------------------------------------------------------------------------------

def test_dataset_ready_then_training_completed_signed_and_retried(client, auth, airflow, mlflow, s3, sender,
                                                                  receiver) -> None:
    hook = create(client, auth, receiver.url).json()
    other = create(client, auth, receiver.url.replace("x=1", "x=2"), events=["training.failed"]).json()
    client.app.state.airflow = airflow
    dataset_id = validated_dataset(client, auth, airflow, s3)
    reconcile_once(client.app)  # the dataset is settled ready: its message is in the outbox
    assert sender.run_once() == 1
    (headers, body), = receiver.received
    assert signing.verify(hook["secret"], headers, body)
    assert not signing.verify(other["secret"], headers, body)
    message = json.loads(body)
    assert message["type"] == "dataset.ready" and message["data"] == client.get(
        f"/v1/datasets/{dataset_id}", headers=auth).json()
    assert headers["webhook-id"].startswith("msg_") and headers["content-type"] == "application/json"
    assert headers["host"] == receiver.url.split("/")[2]

    # a completed job: the receiver answers 500 once, the retry delivers the same message
    job_id = start(client, auth, make_dataset(client, auth))
    run = f"train-{job_id}"
    airflow.states[run] = "success"
    for task in job_spec.TASK_IDS:
        airflow.task(run, task, "success")
    receiver.answers = [500]
    reconcile_once(client.app)
    assert sender.run_once() == 1 and sender.run_once() == 0  # not due again yet (backoff)
    make_due(client)
    assert sender.run_once() == 1
    (first_h, first_b), (again_h, again_b) = receiver.received[1:]
    assert first_b == again_b and first_h["webhook-id"] == again_h["webhook-id"]
    assert signing.verify(hook["secret"], again_h, again_b)
    message = json.loads(again_b)
    assert message["type"] == "training.completed"
    assert message["data"] == client.get(f"/v1/trainings/{job_id}", headers=auth).json()
    assert [b["type"] for b in receiver.bodies()] == ["dataset.ready", "training.completed", "training.completed"]

    deliveries = client.get(f"/v1/webhooks/{hook['id']}/deliveries", headers=auth)
    assert deliveries.headers["X-Total-Count"] == "2"
    newest = deliveries.json()[0]
    assert (newest["event"], newest["subject_id"], newest["status"]) == ("training.completed", job_id, "delivered")
    assert [(a["attempt"], a["status_code"], a["error"]) for a in newest["attempts"]] == [(1, 500, None),
                                                                                        (2, 204, None)]
    assert newest["attempts"][0]["next_retry_at"] is not None and newest["attempts"][1]["next_retry_at"] is None
    assert all(a["duration_ms"] >= 0 for a in newest["attempts"]) and newest["delivered_at"]
    assert client.get(f"/v1/webhooks/{other['id']}/deliveries", headers=auth).json() == []  # not subscribed

    # settled once: another pass or a read adds no second message
    reconcile_once(client.app)
    client.get(f"/v1/trainings/{job_id}", headers=auth)
    assert sender.run_once() == 0 and len(receiver.received) == 3


def test_a_failed_dataset_and_a_failed_job(client, auth, airflow, mlflow, s3, sender, receiver) -> None:
    create(client, auth, receiver.url, events=["dataset.error", "training.failed", "training.stopped"])
    client.app.state.airflow = airflow
    dataset_id = validated_dataset(client, auth, airflow, s3, valid=False)
    job_id = start(client, auth, make_dataset(client, auth))
    airflow.states[f"train-{job_id}"] = "failed"
    airflow.task(f"train-{job_id}", "validate_inputs", "failed")
    reconcile_once(client.app)
    while sender.run_once():
        pass
    got = {b["type"]: b["data"] for b in receiver.bodies()}
    assert got["dataset.error"]["id"] == dataset_id
    assert got["dataset.error"]["status"] == "error"
    assert got["training.failed"]["job_id"] == job_id and got["training.failed"]["error"].startswith(
        "task validate_inputs (validating) failed")


def test_the_address_is_checked_again_at_delivery(client, auth, airflow, mlflow, s3, settings, receiver) -> None:
    """A name that resolved to a public address at creation and to loopback now (DNS rebinding)
    is not sent to: the attempt records why, and is retried later."""
    create(client, auth, receiver.url)
    client.app.state.airflow = airflow
    validated_dataset(client, auth, airflow, s3)
    reconcile_once(client.app)
    strict = WebhookSender(client.app.state.sessionmaker, settings.model_copy(update={"webhook_allow_private": False}))
    try:
        assert strict.run_once() == 1
    finally:
        strict.close()
    assert receiver.received == []
    with client.app.state.sessionmaker() as session:
        delivery = session.scalars(select(WebhookDelivery)).all()[-1]
        assert delivery.status == "pending" and "a loopback address" in delivery.last_error


def test_a_slow_receiver_times_out_without_holding_the_others(client, auth, airflow, mlflow, s3, sender,
                                                             receiver) -> None:
    fast = Receiver()
    try:
        create(client, auth, receiver.url)
        create(client, auth, fast.url)
        receiver.delay_s = 5  # beyond the 2 s timeout
        client.app.state.airflow = airflow
        validated_dataset(client, auth, airflow, s3)
        reconcile_once(client.app)
        started = time.monotonic()
        assert sender.run_once() == 2
        took = time.monotonic() - started
        assert took < 4, took  # both sent at once; the slow one cut at its timeout
        assert len(fast.received) == 1
        with client.app.state.sessionmaker() as session:
            errors = sorted(d.last_error or "" for d in session.scalars(select(WebhookDelivery)).all())
        assert errors[-1] == "timed out after 2 s"
    finally:
        receiver.delay_s = 0
        fast.close()


def test_targets_pin_the_checked_address() -> None:
    target = targets.resolve("https://localhost:8443/a/b?c=d", allow_private=True)
    assert target.pinned_url in ("https://127.0.0.1:8443/a/b?c=d", "https://[::1]:8443/a/b?c=d")
    assert (target.host_header, target.host, target.https) == ("localhost:8443", "localhost", True)
    assert targets.resolve("http://127.0.0.1/", allow_private=True).host_header == "127.0.0.1"


def test_the_local_stack_allows_loopback_receivers(tmp_path, monkeypatch) -> None:
    """`make up` sets QLORA_WEBHOOK_ALLOW_PRIVATE=true for its API (the default stays false)."""
    from devstack.stack import Stack

    monkeypatch.delenv("QLORA_WEBHOOK_ALLOW_PRIVATE", raising=False)
    stack = Stack(folder=tmp_path / "stack", executor="local")
    assert stack.api.process.env["QLORA_WEBHOOK_ALLOW_PRIVATE"] == "true"
    assert Settings(_env_file=None).webhook_allow_private is False
    assert Settings(**{"webhook_allow_private": stack.api.process.env["QLORA_WEBHOOK_ALLOW_PRIVATE"]}).webhook_allow_private


# --- the signing secrets at rest --------------------------------------------------------------

def test_the_secret_is_stored_encrypted_and_still_signs(client, auth, airflow, mlflow, s3, settings, sender,
                                                       receiver) -> None:
    from api.models import Webhook
    from api.services.webhooks import sealing

    hook = create(client, auth, receiver.url).json()
    with client.app.state.sessionmaker() as session:
        stored = session.get(Webhook, hook["id"]).secret
    assert stored.startswith("gAAAAA") and hook["secret"] not in stored and hook["secret"][6:] not in stored
    assert sealing.unseal(stored, settings) == hook["secret"]
    client.app.state.airflow = airflow
    validated_dataset(client, auth, airflow, s3)
    reconcile_once(client.app)
    assert sender.run_once() == 1
    (headers, body), = receiver.received
    assert signing.verify(hook["secret"], headers, body)

    # the key rotated (new one first, the old one still listed): old rows still sign
    rotated = settings.model_copy(update={"webhook_secret_key": "n" * 40 + "," + sealing.key_material(settings)[0]})
    assert sealing.unseal(stored, rotated) == hook["secret"]
    assert sealing.unseal(sealing.seal("whsec_abc", rotated), rotated) == "whsec_abc"
    # the key replaced without the old one: the attempt fails saying why, the message stays pending
    lost = settings.model_copy(update={"webhook_secret_key": "z" * 40})
    validated_dataset(client, auth, airflow, s3)
    reconcile_once(client.app)
    other = WebhookSender(client.app.state.sessionmaker, lost)
    try:
        assert other.run_once() == 1
    finally:
        other.close()
    assert len(receiver.received) == 1
    newest = client.get(f"/v1/webhooks/{hook['id']}/deliveries", headers=auth).json()[0]
    assert newest["status"] == "pending" and "cannot be decrypted with QLORA_WEBHOOK_SECRET_KEY" in newest["last_error"]
    make_due(client)
    assert sender.run_once() == 1 and signing.verify(hook["secret"], *receiver.received[1])  # the right key again


def test_the_migration_encrypts_the_secrets_stored_in_clear(fresh_postgres_url, s3) -> None:
    from alembic import command
    from alembic.config import Config
    from pathlib import Path
    from sqlalchemy import text

    import api.db
    from api.db import make_engine
    from api.services.webhooks import sealing

    settings = make_settings(fresh_postgres_url, s3, webhook_secret_key="k" * 40)
    engine = make_engine(fresh_postgres_url)
    config = Config(str(Path(api.db.__file__).with_name("alembic.ini")))

    def migrate(step, revision: str) -> None:
        with engine.begin() as connection:
            config.attributes.update(connection=connection, settings=settings)
            step(config, revision)

    migrate(command.upgrade, "0007")
    secret = signing.new_secret()
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO users (id, username, email, hashed_password, created_at) "
                                "VALUES ('u1', 'ana', 'ana@example.com', 'x', now())"))
        connection.execute(text("INSERT INTO webhooks (id, owner_id, url, events, description, secret, created_at) "
                                "VALUES ('w1', 'u1', 'https://93.184.216.34/h', '[\"dataset.ready\"]', '', :s, now())"),
                           {"s": secret})
    from api.db import upgrade_to_head

    upgrade_to_head(engine, settings)  # as the API does at start-up, with its settings (not the environment's)
    with engine.connect() as connection:
        stored = connection.execute(text("SELECT secret FROM webhooks WHERE id = 'w1'")).scalar_one()
    assert stored != secret and secret not in stored and sealing.unseal(stored, settings) == secret
    migrate(command.downgrade, "0007")  # and back: in clear again
    with engine.connect() as connection:
        assert connection.execute(text("SELECT secret FROM webhooks WHERE id = 'w1'")).scalar_one() == secret
    engine.dispose()


def test_an_upload_never_completed_ends_in_error_and_sends_dataset_error(client, auth, initiate, airflow, s3, sender,
                                                                        receiver) -> None:
    from api.models.dataset import Dataset as DatasetRow

    create(client, auth, receiver.url, events=["dataset.error"])
    stale, late = initiate(), initiate()

    def age(dataset_id: str) -> None:
        with client.app.state.sessionmaker() as session:
            session.execute(update(DatasetRow).where(DatasetRow.id == dataset_id)
                            .values(created_at=utcnow() - timedelta(seconds=601)))
            session.commit()

    age(stale["dataset_id"])
    client.app.state.airflow = airflow
    reconcile_once(client.app)  # the background pass expires it...
    reconcile_once(client.app)  # ...once
    age(late["dataset_id"])  # this one is found expired by its owner's late completion
    resp = client.post("/v1/datasets/upload-complete", headers=auth,
                       json={"dataset_id": late["dataset_id"], "s3_key": late["s3_key"]})
    assert resp.status_code == 400 and "expired" in resp.json()["detail"]
    while sender.run_once():
        pass
    got = sorted((b["type"], b["data"]["id"], b["data"]["status"], b["data"]["stage"]) for b in receiver.bodies())
    assert got == sorted(("dataset.error", d["dataset_id"], "error", "expired") for d in (stale, late))
    assert all("not completed in time" in b["data"]["error"] for b in receiver.bodies())
    detail = client.get(f"/v1/datasets/{stale['dataset_id']}", headers=auth).json()
    assert next(b["data"] for b in receiver.bodies() if b["data"]["id"] == stale["dataset_id"]) == detail


def test_a_message_claimed_by_a_sender_that_died_is_sent_again(client, auth, airflow, mlflow, s3, sender,
                                                               receiver) -> None:
    """The API dies after claiming a message and before its answer is recorded: the claim expires
    (after the timeout plus a slack) and another process sends the same message."""
    hook = create(client, auth, receiver.url).json()
    client.app.state.airflow = airflow
    validated_dataset(client, auth, airflow, s3)
    reconcile_once(client.app)
    dead = WebhookSender(client.app.state.sessionmaker, sender.settings)
    claimed = dead._claim()  # ...and the process is killed here: nothing sent, nothing recorded
    dead.close()
    assert len(claimed) == 1 and sender.run_once() == 0  # claimed: not sent twice at once
    with client.app.state.sessionmaker() as session:
        delivery = session.get(WebhookDelivery, claimed[0].id)
        assert delivery.status == "pending" and delivery.next_attempt_at > utcnow() + timedelta(seconds=20)
    make_due(client)  # the claim's lease ran out
    assert sender.run_once() == 1
    (headers, body), = receiver.received
    assert headers["webhook-id"] == claimed[0].id and signing.verify(hook["secret"], headers, body)
    newest = client.get(f"/v1/webhooks/{hook['id']}/deliveries", headers=auth).json()[0]
    assert newest["status"] == "delivered" and [a["attempt"] for a in newest["attempts"]] == [2]
