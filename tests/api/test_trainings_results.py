"""`GET /v1/trainings/{job_id}/adapter|checkpoints` on real PostgreSQL and SeaweedFS (Airflow and
MLflow faked): the pre-signed URLs are fetched without credentials and the bytes checked against
the SHA-256 the listing gives; nothing is offered before it is fully in S3; owner only."""

from __future__ import annotations

import hashlib
import json
import urllib.request
from datetime import datetime, timedelta, timezone

import pytest

from api.models.base import new_id
from tests.api.test_trainings import FakeMlflow, FakeTrainingAirflow, make_dataset, running_job, start
from tests.api.conftest import make_settings
from api.deps import get_mlflow
from training import s3 as s3_layout

ADAPTER = {"adapter_config.json": b'{"r": 4}', "adapter_model.safetensors": b"\x00weights" * 1000,
           "label_map.json": b'{"label2id": {"blue": 0, "red": 1}}'}
CHECKPOINT = {"state.pt": b"optimizer" * 50, "trainable.safetensors": b"lora" * 300}


@pytest.fixture
def settings(postgres_url, s3):
    return make_settings(postgres_url, s3, live_state_ttl_s=0, presigned_url_expiry_s=600)


@pytest.fixture
def airflow() -> FakeTrainingAirflow:
    return FakeTrainingAirflow()


@pytest.fixture
def mlflow(client) -> FakeMlflow:
    fake = FakeMlflow()
    client.app.dependency_overrides[get_mlflow] = lambda: fake
    return fake


def _entries(files: dict[str, bytes]) -> list[dict]:
    return [{"name": n, "size_bytes": len(b), "sha256": hashlib.sha256(b).hexdigest()} for n, b in sorted(files.items())]


def _put(s3, prefix: str, files: dict[str, bytes]) -> None:
    for name, body in files.items():
        s3.client().put_object(Bucket=s3.bucket, Key=prefix + name, Body=body)


def _publish(s3, job_id: str, **result) -> None:
    s3.client().put_object(Bucket=s3.bucket, Key=s3_layout.training_result_key(job_id),
                           Body=json.dumps(result).encode())


def _adapter_result(s3, job_id: str, status: str) -> dict:
    _put(s3, s3_layout.adapter_prefix(job_id), ADAPTER)
    return {"status": status, "output_uri": s3_layout.s3_uri(s3.bucket, s3_layout.adapter_prefix(job_id)),
            "adapter_files": sorted(ADAPTER), "adapter_manifest": _entries(ADAPTER), "exited": True}


def _checkpoint(s3, job_id: str, step: int, *, upload: bool = True, **extra) -> dict:
    name = f"step-{step:07d}"
    prefix = f"{s3_layout.checkpoints_prefix(job_id)}{name}/"
    if upload:
        _put(s3, prefix, CHECKPOINT)
    return {"step": step, "epoch": step / 6, "name": name, "created_at": "2026-11-25T10:00:00+00:00",
            "metrics": {"train_loss": 0.5, "eval_accuracy": 0.75}, "uri": s3_layout.s3_uri(s3.bucket, prefix),
            "files": _entries(CHECKPOINT), **extra}


def _complete(airflow, job_id: str) -> None:
    run = f"train-{job_id}"
    airflow.states[run] = "success"
    for task in ("validate_inputs", "prepare", "train", "evaluate", "register", "finalize"):
        airflow.task(run, task, "success")


def _stopped(airflow, run: str) -> None:
    """What the train task does on a stop once its engine exited: it fails, and the run with it."""
    airflow.task(run, "train", "failed")
    for task in ("evaluate", "register", "finalize"):
        airflow.task(run, task, "upstream_failed")
    airflow.states[run] = "failed"


def _fetch_all(files: list[dict], expected: dict[str, bytes]) -> None:
    """Every URL works without credentials and gives the bytes of the listed size and SHA-256."""
    assert [f["name"] for f in files] == sorted(expected)
    for f in files:
        assert "X-Amz-Signature=" in f["download_url"]
        with urllib.request.urlopen(f["download_url"], timeout=10) as resp:  # no credentials at all
            body = resp.read()
        assert (len(body), hashlib.sha256(body).hexdigest()) == (f["size_bytes"], f["sha256"])
        assert body == expected[f["name"]]


def test_a_completed_jobs_adapter_downloads_and_matches_its_sha256(client, auth, other_auth, airflow, mlflow,
                                                                   s3) -> None:
    job_id = start(client, auth, make_dataset(client, auth))
    _complete(airflow, job_id)
    _publish(s3, job_id, **_adapter_result(s3, job_id, "completed"),
             checkpoints=[_checkpoint(s3, job_id, 6), _checkpoint(s3, job_id, 12)])
    _put(s3, s3_layout.adapter_prefix(job_id), {"metrics.json": b"{}"})  # the evaluation's: not an adapter file
    before = datetime.now(timezone.utc)
    resp = client.get(f"/v1/trainings/{job_id}/adapter", headers=auth)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert (body["job_id"], body["partial"]) == (job_id, False)
    expires = datetime.fromisoformat(body["expires_at"].replace("Z", "+00:00"))
    assert before + timedelta(seconds=590) < expires < before + timedelta(seconds=620)
    _fetch_all(body["files"], ADAPTER)

    checkpoints = client.get(f"/v1/trainings/{job_id}/checkpoints", headers=auth).json()
    assert [(c["step"], c["epoch"], c["metrics"]) for c in checkpoints] == [
        (6, 1.0, {"train_loss": 0.5, "eval_accuracy": 0.75}), (12, 2.0, {"train_loss": 0.5, "eval_accuracy": 0.75})]
    for checkpoint in checkpoints:
        _fetch_all(checkpoint["files"], CHECKPOINT)

    # another user's job does not exist for them
    for path in ("adapter", "checkpoints"):
        resp = client.get(f"/v1/trainings/{job_id}/{path}", headers=other_auth)
        assert resp.json() == {"detail": "Training job not found"} and resp.status_code == 404
    assert client.get(f"/v1/trainings/{new_id()}/adapter", headers=auth).status_code == 404


def test_nothing_to_download_is_409_with_the_reason(client, auth, airflow, mlflow, s3) -> None:
    job_id, run = running_job(client, auth, airflow)
    resp = client.get(f"/v1/trainings/{job_id}/adapter", headers=auth)
    assert resp.status_code == 409
    assert resp.json()["detail"] == (f"Job {job_id} is running: its adapter can be downloaded once the job "
                                     "completed (or once stopped, when it saved a partial adapter)")

    # completed, but the upload is torn (a file shorter than the engine recorded): not offered
    _complete(airflow, job_id)
    result = _adapter_result(s3, job_id, "completed")
    s3.client().put_object(Bucket=s3.bucket, Key=s3_layout.adapter_prefix(job_id) + "adapter_model.safetensors",
                           Body=b"\x00weights")
    _publish(s3, job_id, **result)
    resp = client.get(f"/v1/trainings/{job_id}/adapter", headers=auth)
    assert resp.status_code == 409 and "not (yet) fully in storage" in resp.json()["detail"]

    # failed
    failed = start(client, auth, make_dataset(client, auth))
    airflow.states[f"train-{failed}"] = "failed"
    airflow.task(f"train-{failed}", "train", "failed")
    resp = client.get(f"/v1/trainings/{failed}/adapter", headers=auth)
    assert resp.status_code == 409 and resp.json()["detail"].startswith(f"Job {failed} failed: it has no adapter")


def test_checkpoints_are_listed_while_the_job_runs_and_a_stop_gives_the_partial_adapter(client, auth, airflow,
                                                                                      mlflow, s3) -> None:
    job_id, run = running_job(client, auth, airflow)
    assert client.get(f"/v1/trainings/{job_id}/checkpoints", headers=auth).json() == []
    # the train task publishes the manifest as the engine saves checkpoints (exited: false)
    _publish(s3, job_id, status="running", exited=False, checkpoints=[
        _checkpoint(s3, job_id, 6),
        _checkpoint(s3, job_id, 12, upload=False),  # listed before its upload finished: left out
        {"step": 3, "epoch": 0.5, "name": "step-0000003"}])  # never uploaded (no uri): left out
    listed = client.get(f"/v1/trainings/{job_id}/checkpoints", headers=auth).json()
    assert [c["step"] for c in listed] == [6]
    _fetch_all(listed[0]["files"], CHECKPOINT)

    # stop: the engine saved its partial adapter, the live manifest says stopped but the process
    # has not exited (exited: false): still stopping, nothing to download yet
    assert client.post(f"/v1/trainings/{job_id}/stop", headers=auth).status_code == 202
    _stopped(airflow, run)
    result = _adapter_result(s3, job_id, "stopped")
    _publish(s3, job_id, **{**result, "exited": False}, checkpoints=[_checkpoint(s3, job_id, 6)])
    assert client.get(f"/v1/trainings/{job_id}", headers=auth).json()["stage"] == "stopping"
    assert client.get(f"/v1/trainings/{job_id}/adapter", headers=auth).status_code == 409
    _publish(s3, job_id, **result, checkpoints=[_checkpoint(s3, job_id, 6)])  # exited
    body = client.get(f"/v1/trainings/{job_id}/adapter", headers=auth).json()
    assert body["partial"] is True
    _fetch_all(body["files"], ADAPTER)

    # stopped before anything was saved
    other, other_run = running_job(client, auth, airflow)
    assert client.post(f"/v1/trainings/{other}/stop", headers=auth).status_code == 202
    _stopped(airflow, other_run)
    _publish(s3, other, status="failed", exited=True)
    assert client.get(f"/v1/trainings/{other}", headers=auth).json()["status"] == "stopped"
    resp = client.get(f"/v1/trainings/{other}/adapter", headers=auth)
    assert resp.status_code == 409
    assert resp.json()["detail"] == f"Job {other} was stopped before it saved a partial adapter: nothing to download"


# --- resume ------------------------------------------------------------------------------------

def _events(client, auth, job_id: str) -> list[dict]:
    body = client.get(f"/v1/trainings/{job_id}/events", headers=auth).json()
    return body["data"]


def test_a_stopped_job_resumes_from_its_last_checkpoint_in_a_new_run(client, auth, other_auth, airflow, mlflow,
                                                                     s3) -> None:
    job_id, run = running_job(client, auth, airflow)
    resp = client.post(f"/v1/trainings/{job_id}/resume", headers=auth)
    assert resp.status_code == 400
    assert resp.json()["detail"] == (f"Job {job_id} cannot be resumed: it is still running; stop it first, or wait "
                                     "for it to end. Only stopped or failed jobs with an uploaded checkpoint can be "
                                     "resumed")

    assert client.post(f"/v1/trainings/{job_id}/stop", headers=auth).status_code == 202
    _stopped(airflow, run)
    _publish(s3, job_id, **_adapter_result(s3, job_id, "stopped"),
             checkpoints=[_checkpoint(s3, job_id, 6), _checkpoint(s3, job_id, 9)])
    stopped = client.get(f"/v1/trainings/{job_id}", headers=auth).json()
    assert stopped["status"] == "stopped" and stopped["previous_runs"] == []
    # another user's job does not exist for them
    assert client.post(f"/v1/trainings/{job_id}/resume", headers=other_auth).status_code == 404

    triggers = len(airflow.triggers)
    resp = client.post(f"/v1/trainings/{job_id}/resume", headers=auth)
    assert resp.status_code == 202, resp.text
    new_run = f"train-{job_id}-resume-1"
    assert resp.json() == {"message": f"Job {job_id} resumes from the checkpoint at step 9", "job_id": job_id,
                           "status": "queued", "resumed_from_step": 9, "airflow_run_id": new_run}
    # one new run of the same job with the same conf (the same resolved parameters)
    assert [(r, c) for _, r, c in airflow.triggers[triggers:]] == [(new_run, airflow.triggers[0][2])]
    detail = client.get(f"/v1/trainings/{job_id}", headers=auth).json()
    assert (detail["status"], detail["stop_requested"], detail["error"], detail["completed_at"],
            detail["output_path"]) == ("queued", False, None, None, None)
    assert detail["airflow_run_url"].endswith(f"/runs/{new_run}")
    assert [(r["run_id"], r["status"], r["resumed_from_step"]) for r in detail["previous_runs"]] == [
        (run, "stopped", 9)]
    # a second request while it is queued is refused; nothing is triggered
    resp = client.post(f"/v1/trainings/{job_id}/resume", headers=auth)
    assert resp.status_code == 400 and "it is still queued" in resp.json()["detail"]
    assert len(airflow.triggers) == triggers + 1

    # the new run goes through the states again: new events, in order, after the stop's
    airflow.states[new_run] = "running"
    airflow.task(new_run, "train", "running")
    assert client.get(f"/v1/trainings/{job_id}", headers=auth).json()["status"] == "running"
    airflow.states[new_run] = "success"
    for task in ("validate_inputs", "prepare", "train", "evaluate", "register", "finalize"):
        airflow.task(new_run, task, "success")
    airflow.xcoms[(new_run, "finalize", "return_value")] = {
        "output_path": "s3://qlora/x/", "registered_model": {"name": "someone~squares-v1", "version": "3"}}
    done = client.get(f"/v1/trainings/{job_id}", headers=auth).json()
    assert done["status"] == "completed"
    assert done["registered_model"]["name"] == "someone~squares-v1" and done["registered_model"]["version"] == "3"
    assert done["registered_model"]["uri"] == "models:/someone~squares-v1/3"
    statuses = [(e["data"].get("from_status"), e["data"].get("to_status")) for e in _events(client, auth, job_id)
                if e["type"] == "status"]
    # the first run's queued -> running is recorded again for the new run
    assert statuses[:2] == [(None, "queued"), ("queued", "running")], statuses
    assert statuses[-4:] == [("running", "stopped"), ("stopped", "queued"), ("queued", "running"),
                             ("running", "completed")], statuses
    resp = client.post(f"/v1/trainings/{job_id}/resume", headers=auth)
    assert resp.status_code == 400 and "it completed: there is nothing left to train" in resp.json()["detail"]


def test_a_job_without_an_uploaded_checkpoint_cannot_be_resumed(client, auth, airflow, mlflow, s3) -> None:
    failed = start(client, auth, make_dataset(client, auth))
    airflow.states[f"train-{failed}"] = "failed"
    airflow.task(f"train-{failed}", "train", "failed")
    _publish(s3, failed, status="failed", exited=True,
             checkpoints=[_checkpoint(s3, failed, 4, upload=False)])  # never reached S3
    triggers = len(airflow.triggers)
    resp = client.post(f"/v1/trainings/{failed}/resume", headers=auth)
    assert resp.status_code == 400
    assert resp.json()["detail"] == (f"Job {failed} cannot be resumed: it has no uploaded checkpoint (it ended "
                                     "before its first one); start a new job instead")
    assert len(airflow.triggers) == triggers
    # with one, a failed job resumes too; Airflow down: 503 and the job unchanged
    _publish(s3, failed, status="failed", exited=True, checkpoints=[_checkpoint(s3, failed, 4)])
    airflow.down = True
    assert client.post(f"/v1/trainings/{failed}/resume", headers=auth).status_code == 503
    airflow.down = False
    assert client.get(f"/v1/trainings/{failed}", headers=auth).json()["status"] == "failed"
    resp = client.post(f"/v1/trainings/{failed}/resume", headers=auth)
    assert resp.status_code == 202 and resp.json()["resumed_from_step"] == 4


# --- evaluation --------------------------------------------------------------------------------

REPORT = {"task": "video_classification", "split": "validation", "held_out_examples": 8,
          "adapter": {"eval_loss": 0.1, "eval_examples": 8, "accuracy": 1.0, "macro_f1": 1.0,
                      "per_class": [{"label": "blue", "precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 4},
                                    {"label": "red", "precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 4}],
                      "confusion_matrix": {"labels": ["blue", "red"], "matrix": [[4, 0], [0, 4]]},
                      "samples": [{"file_name": "a.mp4", "label": "blue", "predicted": "blue"}]},
          "base": {"eval_loss": 0.7, "eval_examples": 8, "accuracy": 0.5, "macro_f1": 0.33,
                   "per_class": [{"label": "blue", "precision": 0.5, "recall": 1.0, "f1": 0.67, "support": 4},
                                 {"label": "red", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 4}],
                   "confusion_matrix": {"labels": ["blue", "red"], "matrix": [[4, 0], [4, 0]]}}}


def test_the_evaluation_is_read_from_the_mlflow_run_and_409_before(client, auth, other_auth, airflow, mlflow) -> None:
    artifacts: dict[tuple[str, str], dict] = {}
    mlflow.read_json_artifact = lambda run_id, path: artifacts.get((run_id, path))
    job_id, run = running_job(client, auth, airflow)
    resp = client.get(f"/v1/trainings/{job_id}/evaluation", headers=auth)
    assert resp.status_code == 409
    assert resp.json()["detail"] == (f"Job {job_id} has no evaluation yet (running, stage training): the adapter is "
                                     "evaluated against the base model once its training completed")
    mlflow_run = "e" * 32
    airflow.xcoms[(run, "train", "mlflow_run_id")] = mlflow_run
    _complete(airflow, job_id)
    artifacts[(mlflow_run, "evaluation/evaluation.json")] = REPORT
    resp = client.get(f"/v1/trainings/{job_id}/evaluation", headers=auth)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert (body["job_id"], body["task"], body["held_out_examples"]) == (job_id, "video_classification", 8)
    assert body["adapter"]["metrics"] == {"eval_loss": 0.1, "eval_examples": 8.0, "accuracy": 1.0, "macro_f1": 1.0}
    assert body["base"]["confusion_matrix"] == {"labels": ["blue", "red"], "matrix": [[4, 0], [4, 0]]}
    assert [c["label"] for c in body["adapter"]["per_class"]] == ["blue", "red"] and body["samples"] == []
    assert client.get(f"/v1/trainings/{job_id}/evaluation", headers=other_auth).status_code == 404

    from api.clients.mlflow import MlflowUnavailable

    def down(run_id, path):
        raise MlflowUnavailable("connection refused")

    mlflow.read_json_artifact = down
    resp = client.get(f"/v1/trainings/{job_id}/evaluation", headers=auth)
    assert resp.status_code == 503 and "MLflow" in resp.json()["detail"]


def test_a_resumed_job_that_stops_again_is_a_new_event_and_webhook_message(client, auth, airflow, mlflow,
                                                                           s3) -> None:
    from sqlalchemy import select

    from api.models.webhook import Webhook, WebhookDelivery
    from tests.api.test_trainings import user_id

    with client.app.state.sessionmaker() as session:
        session.add(Webhook(owner_id=user_id(client, auth), url="https://hooks.example.com/q",
                            events=["training.stopped"], secret="whsec_" + "a" * 32))
        session.commit()
    job_id, run = running_job(client, auth, airflow)
    runs = [run, f"train-{job_id}-resume-1"]
    for n, current in enumerate(runs):
        if n:
            assert client.post(f"/v1/trainings/{job_id}/resume", headers=auth).status_code == 202
            airflow.states[current] = "running"
            airflow.task(current, "train", "running")
        assert client.post(f"/v1/trainings/{job_id}/stop", headers=auth).status_code == 202
        _stopped(airflow, current)
        _publish(s3, job_id, **_adapter_result(s3, job_id, "stopped"), checkpoints=[_checkpoint(s3, job_id, 3 + n)])
        assert client.get(f"/v1/trainings/{job_id}", headers=auth).json()["status"] == "stopped"
    with client.app.state.sessionmaker() as session:
        sent = session.scalars(select(WebhookDelivery).where(WebhookDelivery.subject_id == job_id)).all()
    assert [d.event for d in sent] == ["training.stopped", "training.stopped"]  # one per run that ended
    kinds = [(e["type"], e["data"].get("to_status")) for e in _events(client, auth, job_id)]
    assert kinds.count(("stop_requested", None)) == 2 and kinds.count(("status", "stopped")) == 2, kinds
