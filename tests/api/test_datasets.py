"""The dataset lifecycle on real PostgreSQL and SeaweedFS (Airflow is a fake that records triggers)."""

from __future__ import annotations

import json
from datetime import timedelta

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from api.models import Dataset, TrainingJob
from api.models.base import utcnow
from devstack.seaweedfs import S3Settings
from tests.api.conftest import FakeAirflow
from training import s3 as s3_layout  # the S3 key layout

ZIP_BYTES = b"PK\x03\x04" + b"\x00" * 1000


def put(url: str, body: bytes = ZIP_BYTES) -> httpx.Response:
    return httpx.put(url, content=body, timeout=30)


def keys_under(s3: S3Settings, prefix: str) -> list[str]:
    resp = s3.client().list_objects_v2(Bucket=s3.bucket, Prefix=prefix)
    return sorted(obj["Key"] for obj in resp.get("Contents", []))


def write_report(s3: S3Settings, dataset_id: str, **fields) -> None:
    report = {"dataset_id": dataset_id, "valid": True, "errors": [], "file_count": 21, "total_size_bytes": 54321,
              "clip_count": 20, "tasks": ["video_classification"], "labels": {"left": 10, "right": 10},
              "captions": None, "splits": {"train": 16, "validation": 4},
              "video": {"frames": {"min": 16, "max": 16, "mean": 16.0}}, "expectations": [], **fields}
    s3.client().put_object(Bucket=s3.bucket, Key=s3_layout.dataset_report_key(dataset_id),
                           Body=json.dumps(report).encode())


def complete(client: TestClient, auth, started: dict) -> httpx.Response:
    return client.post("/v1/datasets/upload-complete",
                       json={"dataset_id": started["dataset_id"], "s3_key": started["s3_key"]}, headers=auth)


def test_presigned_put_then_complete_triggers_validation(client, auth, initiate, airflow: FakeAirflow, s3) -> None:
    started = initiate("My Videos.zip")
    dataset_id = started["dataset_id"]
    assert started["s3_key"] == s3_layout.dataset_upload_key(dataset_id, "My_Videos.zip")
    listed = client.get(f"/v1/datasets/{dataset_id}", headers=auth).json()
    assert (listed["status"], listed["stage"]) == ("processing", "awaiting_upload")

    assert put(started["upload_url"]).status_code == 200
    resp = complete(client, auth, started)
    assert resp.status_code == 200
    assert resp.json() == {"message": "Dataset processing initiated", "dataset_id": dataset_id}
    etag = s3.client().head_object(Bucket=s3.bucket, Key=started["s3_key"])["ETag"]
    assert airflow.triggers == [  # the run is told exactly which object to process
        ("dataset_validation", f"validate-{dataset_id}",
         {"dataset_id": dataset_id, "s3_key": started["s3_key"], "size_bytes": len(ZIP_BYTES), "etag": etag})
    ]
    detail = client.get(f"/v1/datasets/{dataset_id}", headers=auth).json()
    assert (detail["status"], detail["stage"]) == ("processing", "validating")
    assert detail["upload_size_bytes"] == len(ZIP_BYTES)
    assert detail["upload_etag"] == etag
    assert detail["s3_path"] == f"s3://{s3.bucket}/{started['s3_key']}"

    # idempotent: a second call answers 200 and triggers nothing
    again = complete(client, auth, started)
    assert again.status_code == 200
    assert len(airflow.triggers) == 1


def test_presigned_url_is_signed(initiate) -> None:
    started = initiate()
    tampered = started["upload_url"].replace("X-Amz-Signature=", "X-Amz-Signature=0")
    assert put(tampered).status_code == 403
    unsigned = started["upload_url"].split("?")[0]
    assert put(unsigned).status_code == 403


def test_complete_rejects_mismatch_missing_and_too_large(client, auth, initiate, airflow, s3) -> None:
    started = initiate()
    mismatch = client.post("/v1/datasets/upload-complete",
                           json={"dataset_id": started["dataset_id"], "s3_key": "datasets/other/evil.zip"}, headers=auth)
    assert mismatch.status_code == 400
    assert "s3_key does not match" in mismatch.json()["detail"]

    missing = complete(client, auth, started)
    assert missing.status_code == 400
    assert "No object at s3_key" in missing.json()["detail"]

    assert put(started["upload_url"], b"x" * (64 * 1024 + 1)).status_code == 200
    too_large = complete(client, auth, started)
    assert too_large.status_code == 400
    assert "limit is 65536 bytes" in too_large.json()["detail"]
    assert keys_under(s3, s3_layout.dataset_prefix(started["dataset_id"])) == []
    assert airflow.triggers == []

    # the dataset stays completable with a file within the limit
    assert put(started["upload_url"]).status_code == 200
    assert complete(client, auth, started).status_code == 200
    assert len(airflow.triggers) == 1


def test_complete_bad_bodies(client, auth) -> None:
    resp = client.post("/v1/datasets/upload-complete", json={"dataset_id": "x"}, headers=auth)
    assert resp.status_code == 400
    assert "s3_key: is required" in resp.json()["detail"]
    resp = client.post("/v1/datasets/upload-complete", json={"dataset_id": "nope", "s3_key": "k"}, headers=auth)
    assert resp.status_code == 404


def test_airflow_down_gives_503_and_upload_stays_completable(client, auth, initiate, airflow: FakeAirflow) -> None:
    started = initiate()
    assert put(started["upload_url"]).status_code == 200
    airflow.down = True
    resp = complete(client, auth, started)
    assert resp.status_code == 503
    assert "Airflow" in resp.json()["detail"]
    detail = client.get(f"/v1/datasets/{started['dataset_id']}", headers=auth).json()
    assert detail["stage"] == "awaiting_upload"
    airflow.down = False
    assert complete(client, auth, started).status_code == 200
    assert [t[1] for t in airflow.triggers] == [f"validate-{started['dataset_id']}"]


def test_real_airflow_client_unreachable_gives_503(postgres_url, s3, auth) -> None:
    from api.main import create_app
    from tests.api.conftest import make_settings, signup_and_login

    app = create_app(make_settings(postgres_url, s3, airflow_url="http://127.0.0.1:9", airflow_timeout_s=2))
    with TestClient(app) as client:
        headers = signup_and_login(client)
        body = {"file_name": "a.zip", "file_type": "application/zip", "dataset_name": "a"}
        started = client.post("/v1/datasets/upload-initiate", json=body, headers=headers).json()
        assert put(started["upload_url"]).status_code == 200
        resp = complete(client, headers, started)
        assert resp.status_code == 503
        assert resp.json() == {"detail": "The pipeline service (Airflow) is unavailable; retry later"}
        # reads still work while Airflow is down
        assert client.get("/v1/datasets", headers=headers).status_code == 200


def test_reconcile_to_ready_from_report(client, auth, initiate, airflow: FakeAirflow, s3) -> None:
    started = initiate()
    dataset_id = started["dataset_id"]
    put(started["upload_url"])
    complete(client, auth, started)
    run_id = f"validate-{dataset_id}"

    airflow.states[run_id] = "running"
    assert client.get(f"/v1/datasets/{dataset_id}", headers=auth).json()["stage"] == "validating"

    clip = {"file_name": "clips/a.mov", "codec": "hevc", "pix_fmt": "yuv420p10le", "container": "mov", "width": 1080,
            "height": 1920, "duration_s": 12.5, "fps": 29.97, "frames": 375, "rotation": 270, "has_audio": True}
    write_report(s3, dataset_id, clips=[clip])
    airflow.states[run_id] = "success"
    detail = client.get(f"/v1/datasets/{dataset_id}", headers=auth).json()
    assert (detail["status"], detail["stage"], detail["error"]) == ("ready", "ready", None)
    assert detail["stats"]["clips"] == [clip]  # per-clip stats of the validation report
    assert (detail["file_count"], detail["total_size_bytes"]) == (21, 54321)
    assert detail["stats"]["labels"] == {"left": 10, "right": 10}
    assert detail["stats"]["tasks"] == ["video_classification"]
    assert detail["files_path"] == f"s3://{s3.bucket}/{s3_layout.dataset_files_prefix(dataset_id)}"


def test_reconcile_to_error_names_the_report_errors(client, auth, initiate, airflow, s3) -> None:
    started = initiate()
    dataset_id = started["dataset_id"]
    put(started["upload_url"])
    complete(client, auth, started)
    errors = ["metadata.csv row 3: file_name 'clips/missing.mp4' does not exist",
              "clips/bad.mp4: not a decodable video"]
    write_report(s3, dataset_id, valid=False, errors=errors + [f"clips/c{i}.mp4: too short" for i in range(18)],
                 error_count=45, file_count=2)
    airflow.states[f"validate-{dataset_id}"] = "failed"
    detail = client.get(f"/v1/datasets/{dataset_id}", headers=auth).json()
    assert (detail["status"], detail["stage"]) == ("error", "failed")
    assert "row 3" in detail["error"] and "clips/missing.mp4" in detail["error"] and "clips/bad.mp4" in detail["error"]
    assert "(and 35 more)" in detail["error"]
    assert detail["stats"]["errors"][:2] == errors and detail["stats"]["error_count"] == 45


def test_run_failed_without_report_is_error_with_reason(client, auth, initiate, airflow) -> None:
    started = initiate()
    dataset_id = started["dataset_id"]
    put(started["upload_url"])
    complete(client, auth, started)
    airflow.states[f"validate-{dataset_id}"] = "failed"
    detail = client.get(f"/v1/datasets/{dataset_id}", headers=auth).json()
    assert detail["status"] == "error"
    assert "without a validation report" in detail["error"]
    assert f"validate-{dataset_id}" in detail["error"]


def test_list_reconciles_in_one_airflow_call(client, auth, initiate, airflow: FakeAirflow, s3) -> None:
    ids = []
    for _ in range(3):
        started = initiate()
        put(started["upload_url"])
        assert complete(client, auth, started).status_code == 200
        ids.append(started["dataset_id"])
    initiate()  # one still awaiting upload
    for dataset_id in ids[:2]:
        write_report(s3, dataset_id)
        airflow.states[f"validate-{dataset_id}"] = "success"
    airflow.list_calls = 0
    listed = client.get("/v1/datasets", headers=auth).json()
    assert airflow.list_calls == 1
    stages = {d["id"]: d["stage"] for d in listed}
    assert [stages[i] for i in ids] == ["ready", "ready", "validating"]
    assert len(listed) == 4
    assert set(listed[0]) >= {"id", "name", "description", "s3_path", "status", "created_at", "stage", "error"}
    # nothing to reconcile: no Airflow call at all
    airflow.list_calls = 0
    airflow.states[f"validate-{ids[2]}"] = "success"
    write_report(s3, ids[2])
    client.get("/v1/datasets", headers=auth)
    client.get("/v1/datasets", headers=auth)
    assert airflow.list_calls == 1


def test_list_pages_with_limit_and_offset(client, auth, initiate) -> None:
    ids = [initiate(dataset_name=f"page {i}")["dataset_id"] for i in range(5)][::-1]  # newest first

    def page(query: str) -> list[str]:
        resp = client.get(f"/v1/datasets{query}", headers=auth)
        assert resp.status_code == 200, resp.text
        return [d["id"] for d in resp.json()]

    assert page("") == ids
    assert page("?limit=2") == ids[:2]
    assert page("?limit=2&offset=2") == ids[2:4]
    assert page("?offset=5") == []
    assert page("?offset=1000000000") == []  # the largest offset
    for bad, field in (("limit=0", "limit"), ("limit=1001", "limit"), ("offset=-1", "offset"),
                       ("offset=25328633764896853132190941184", "offset")):
        resp = client.get(f"/v1/datasets?{bad}", headers=auth)
        assert resp.status_code == 400 and resp.json()["detail"].startswith(f"{field}: "), resp.text


def test_background_loop_reconciles(postgres_url, s3) -> None:
    import time

    from api.main import create_app
    from tests.api.conftest import make_settings, signup_and_login

    fake = FakeAirflow()
    app = create_app(make_settings(postgres_url, s3, reconcile_interval_s=0.2), airflow=fake)
    with TestClient(app) as client:
        headers = signup_and_login(client)
        body = {"file_name": "a.zip", "file_type": "application/zip", "dataset_name": "a"}
        started = client.post("/v1/datasets/upload-initiate", json=body, headers=headers).json()
        put(started["upload_url"])
        assert complete(client, headers, started).status_code == 200
        write_report(s3, started["dataset_id"])
        fake.states[f"validate-{started['dataset_id']}"] = "success"
        with app.state.sessionmaker() as session:
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                if session.get(Dataset, started["dataset_id"], populate_existing=True).stage == "ready":
                    break
                time.sleep(0.2)
            assert session.get(Dataset, started["dataset_id"], populate_existing=True).stage == "ready"


def test_never_completed_uploads_expire_and_lose_their_objects(client, auth, initiate, s3) -> None:
    from api.db import exclusive_pass
    from api.main import reconcile_once

    stale, fresh = initiate(), initiate()
    assert put(stale["upload_url"]).status_code == 200  # uploaded but never completed
    with client.app.state.sessionmaker() as session:
        session.execute(update(Dataset).where(Dataset.id == stale["dataset_id"])
                        .values(created_at=utcnow() - timedelta(seconds=601)))
        session.commit()
    # another API process (uvicorn worker, replica) is reconciling: this one skips the pass
    with exclusive_pass(client.app.state.engine) as other:
        assert other
        assert reconcile_once(client.app) == 0
        assert keys_under(s3, s3_layout.dataset_prefix(stale["dataset_id"]))  # untouched
    assert reconcile_once(client.app) >= 1
    assert keys_under(s3, s3_layout.dataset_prefix(stale["dataset_id"])) == []
    detail = client.get(f"/v1/datasets/{stale['dataset_id']}", headers=auth).json()
    assert (detail["status"], detail["stage"]) == ("error", "expired")
    assert "not completed in time" in detail["error"]
    assert client.get(f"/v1/datasets/{fresh['dataset_id']}", headers=auth).json()["stage"] == "awaiting_upload"
    late = complete(client, auth, stale)
    assert late.status_code == 400
    assert "expired" in late.json()["detail"]


def test_delete_removes_every_object_and_the_row(client, auth, initiate, airflow, s3) -> None:
    started = initiate()
    dataset_id = started["dataset_id"]
    put(started["upload_url"])
    complete(client, auth, started)
    s3c = s3.client()
    for i in range(1005):  # more than one page of listing / one delete batch
        s3c.put_object(Bucket=s3.bucket, Key=f"{s3_layout.dataset_files_prefix(dataset_id)}clip_{i}.mp4", Body=b"v")
    write_report(s3, dataset_id)
    airflow.states[f"validate-{dataset_id}"] = "success"
    other = initiate()
    put(other["upload_url"])

    resp = client.delete(f"/v1/datasets/{dataset_id}", headers=auth)
    assert resp.status_code == 204
    assert resp.content == b""
    assert keys_under(s3, s3_layout.dataset_prefix(dataset_id)) == []
    assert client.get(f"/v1/datasets/{dataset_id}", headers=auth).status_code == 404
    assert keys_under(s3, s3_layout.dataset_prefix(other["dataset_id"])) == [other["s3_key"]]
    assert client.delete(f"/v1/datasets/{dataset_id}", headers=auth).status_code == 404


def test_delete_is_409_while_a_training_uses_it(client, auth, initiate) -> None:
    started = initiate()
    user_id = client.get("/v1/auth/me", headers=auth).json()["id"]
    with client.app.state.sessionmaker() as session:
        job = TrainingJob(owner_id=user_id, model_id="flamingo-tiny-captioning", dataset_id=started["dataset_id"],
                          status="running")
        session.add(job)
        session.commit()
        resp = client.delete(f"/v1/datasets/{started['dataset_id']}", headers=auth)
        assert resp.status_code == 409
        assert "training" in resp.json()["detail"]
        job.status = "completed"
        session.commit()
    assert client.delete(f"/v1/datasets/{started['dataset_id']}", headers=auth).status_code == 204


def test_other_users_dataset_is_404(client, auth, other_auth, initiate) -> None:
    started = initiate()
    put(started["upload_url"])
    dataset_id = started["dataset_id"]
    assert client.get(f"/v1/datasets/{dataset_id}", headers=other_auth).status_code == 404
    assert client.get("/v1/datasets", headers=other_auth).json() == []
    assert complete(client, other_auth, started).status_code == 404
    assert client.delete(f"/v1/datasets/{dataset_id}", headers=other_auth).status_code == 404
    assert client.get(f"/v1/datasets/{dataset_id}", headers=auth).status_code == 200


@pytest.mark.parametrize(
    ("file_name", "expected"),
    [
        ("../../etc/passwd.zip", "passwd.zip"),
        ("/abs/path/data.zip", "data.zip"),
        ("C:\\Users\\me\\My Data.ZIP", "My_Data.zip"),
        ("evil\x00\x1f\n.zip", "evil.zip"),
        ("..hidden.zip", "hidden.zip"),
        ("vidéos été.zip", "vid_os_t.zip"),
        ("clips.tar.zip", "clips.tar.zip"),
        ("a" * 300 + ".zip", "a" * 124 + ".zip"),
    ],
)
def test_file_names_are_sanitized(client, auth, initiate, file_name, expected) -> None:
    started = initiate(file_name)
    key = started["s3_key"]
    name = key.removeprefix(s3_layout.dataset_prefix(started["dataset_id"]))
    assert name == expected
    assert "/" not in name and ".." not in name and not name.startswith(".")
    assert all(c.isascii() and (c.isalnum() or c in "._-") for c in name)
    assert len(name) <= 128


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"file_name": "clips.tar.gz"}, "Unsupported archive type"),
        ({"file_name": "clips.mp4"}, "supported: .zip"),
        ({"file_name": "../../"}, "Unsupported archive type"),
        ({"file_name": ".zip"}, "no usable characters"),
        ({"file_name": "\x00\x01.zip"}, "no usable characters"),
        ({"file_type": "video/mp4"}, "Unsupported file_type"),
        ({"dataset_name": "   "}, "dataset_name must not be blank"),
        ({"dataset_name": ""}, "dataset_name:"),
        ({"dataset_name": "n" * 201}, "dataset_name:"),
        ({"file_name": ""}, "file_name:"),
    ],
)
def test_initiate_rejects_bad_input_with_400(client, auth, body, fragment) -> None:
    full = {"file_name": "clips.zip", "file_type": "application/zip", "dataset_name": "d", **body}
    resp = client.post("/v1/datasets/upload-initiate", json=full, headers=auth)
    assert resp.status_code == 400, resp.text
    assert fragment in resp.json()["detail"]


def test_initiate_accepts_the_zip_mime_types(client, auth) -> None:
    for mime in ("application/zip", "application/x-zip-compressed", "application/octet-stream",
                 "Application/ZIP; charset=binary"):
        body = {"file_name": "c.zip", "file_type": mime, "dataset_name": "d"}
        assert client.post("/v1/datasets/upload-initiate", json=body, headers=auth).status_code == 200


def test_initiate_leaves_no_row_when_s3_fails(client, auth, monkeypatch) -> None:
    from api.clients.s3 import S3Unavailable

    def broken(*_args, **_kwargs):
        raise S3Unavailable("presign failed")

    monkeypatch.setattr(client.app.state.s3, "presign_put", broken)
    body = {"file_name": "c.zip", "file_type": "application/zip", "dataset_name": "d"}
    resp = client.post("/v1/datasets/upload-initiate", json=body, headers=auth)
    assert resp.status_code == 503
    assert resp.json() == {"detail": "Storage (S3) is unavailable; retry later"}
    assert client.get("/v1/datasets", headers=auth).json() == []


def test_public_endpoint_is_used_for_upload_urls(postgres_url, s3) -> None:
    from api.main import create_app
    from tests.api.conftest import make_settings, signup_and_login

    app = create_app(make_settings(postgres_url, s3, public_s3_endpoint_url="http://s3.example.test:9000"))
    with TestClient(app) as client:
        headers = signup_and_login(client)
        body = {"file_name": "c.zip", "file_type": "application/zip", "dataset_name": "d"}
        started = client.post("/v1/datasets/upload-initiate", json=body, headers=headers).json()
    assert started["upload_url"].startswith("http://s3.example.test:9000/")
