"""Abuse limits: login/signup rate limits per client address and per username (429 with
Retry-After), bounded password hashing, 413 for bodies over 1 MiB, no start without an explicit
JWT secret outside development, and usernames/emails unique without regard to case in the
database itself (real PostgreSQL)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.exc import IntegrityError

from api.core import security
from api.core.limits import SlidingWindow
from api.deps import get_airflow
from api.main import create_app
from tests.api.conftest import make_settings, new_username


@pytest.fixture
def limited(postgres_url, s3, airflow):
    """An app with small limits: 5 attempts per address, 3 per username, per 60 s."""
    settings = make_settings(postgres_url, s3, auth_rate_limit_per_address=5, auth_rate_limit_per_username=3)
    app = create_app(settings)
    app.dependency_overrides[get_airflow] = lambda: airflow
    with TestClient(app) as client:
        yield client


def _signup(client: TestClient, username: str, **headers):
    return client.post("/v1/auth/signup", json={"username": username, "email": f"{username}@example.com",
                                                "password": "long-enough-pw"})


def test_failed_logins_per_username_get_429_with_retry_after(limited: TestClient) -> None:
    username = new_username()
    assert _signup(limited, username).status_code == 201
    for _ in range(3):
        wrong = limited.post("/v1/auth/login", json={"username": username, "password": "wrong-password"})
        assert wrong.status_code == 401
    # the 4th attempt is refused before any password is checked, even with the right password
    refused = limited.post("/v1/auth/login", json={"username": username.upper(), "password": "long-enough-pw"})
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert refused.json()["detail"].startswith("Too many failed logins for this username (3 per 60 s); retry in ")


def test_successful_logins_do_not_count_against_the_username(limited: TestClient) -> None:
    username = new_username()
    assert _signup(limited, username).status_code == 201
    for _ in range(3):
        assert limited.post("/v1/auth/login", json={"username": username, "password": "long-enough-pw"}).status_code == 200


def test_attempts_per_address_get_429(limited: TestClient) -> None:
    answers = [_signup(limited, new_username()).status_code for _ in range(5)]
    assert answers == [201] * 5
    refused = limited.post("/v1/auth/login", json={"username": new_username(), "password": "whatever-pw"})
    assert refused.status_code == 429
    assert "from your address (5 per 60 s)" in refused.json()["detail"]
    assert int(refused.headers["Retry-After"]) >= 1
    # other routes are not limited
    assert limited.get("/v1/health").status_code in (200, 503)


def test_sliding_window_frees_a_slot_when_the_oldest_attempt_leaves_it() -> None:
    now = [1000.0]
    window = SlidingWindow(2, 60, clock=lambda: now[0])
    window.add("k")
    now[0] += 10
    window.add("k")
    assert window.retry_after("k") == pytest.approx(50)
    now[0] += 50
    assert window.retry_after("k") is None
    assert window.retry_after("other") is None


def test_password_hashing_runs_at_most_concurrency_at_once(limited: TestClient) -> None:
    security.hash_slots.configure(2, 30)
    security.hash_slots.busy_peak = 0
    threads = [threading.Thread(target=security.hash_password, args=(f"password-{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert security.hash_slots.busy_peak == 2


def test_no_hashing_slot_in_time_is_503_with_retry_after(limited: TestClient) -> None:
    security.hash_slots.configure(1, 0.2)
    slot = security.hash_slots.slot()
    slot.__enter__()  # a long hash holds the only slot
    try:
        resp = limited.post("/v1/auth/login", json={"username": new_username(), "password": "long-enough-pw"})
    finally:
        slot.__exit__(None, None, None)
        security.hash_slots.configure(2, 10)
    assert resp.status_code == 503
    assert resp.headers["Retry-After"] == "5"
    assert resp.json()["detail"] == "The service is busy checking passwords; retry in a few seconds"


def test_bodies_over_1_mib_are_413(client: TestClient, auth) -> None:
    big = b'{"file_name": "' + b"a" * (1024**2) + b'"}'
    resp = client.post("/v1/datasets/upload-initiate", content=big, headers={**auth, "content-type": "application/json"})
    assert resp.status_code == 413
    assert resp.json()["detail"].startswith(f"Request body too large (this one is {len(big)} bytes): the API takes "
                                            f"at most {1024**2} bytes per request")

    def chunks():  # no Content-Length: counted as it streams in
        for _ in range(5):
            yield b" " * (300 * 1024)
    streamed = client.post("/v1/auth/login", content=chunks(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413
    assert streamed.json()["detail"].startswith("Request body too large: the API takes at most")
    # just under the limit is parsed as usual
    ok = client.post("/v1/auth/login", content=b" " * (1024**2 - 100) + b"{}", headers={"content-type": "application/json"})
    assert ok.status_code == 422


def test_production_does_not_start_without_an_explicit_jwt_secret(tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "QLORA_JWT_SECRET"}
    env |= {"QLORA_ENV": "production", "QLORA_DATABASE_URL": f"sqlite:///{tmp_path / 'api.db'}"}
    proc = subprocess.run([sys.executable, "-m", "uvicorn", "api.main:app", "--port", "0"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert ("cannot start the API: QLORA_JWT_SECRET is not set: outside development (QLORA_ENV=production) the API "
            "does not start without an explicit secret") in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "api.db").exists()


def test_usernames_and_emails_are_unique_without_case_in_the_database(client: TestClient, postgres_url) -> None:
    """Even a writer that skips the API's check (or two racing signups) cannot store both."""
    username = new_username()
    assert _signup(client, username).status_code == 201
    engine = create_engine(postgres_url)
    try:
        for name, email in ((username.upper(), f"other-{username}@example.com"),
                            (f"x{username}", f"{username}@EXAMPLE.COM")):
            with pytest.raises(IntegrityError), engine.begin() as conn:
                conn.execute(text("INSERT INTO users (id, username, email, hashed_password, created_at) "
                                  "VALUES (:id, :u, :e, 'x', now())"), {"id": os.urandom(8).hex(), "u": name, "e": email})
    finally:
        engine.dispose()
