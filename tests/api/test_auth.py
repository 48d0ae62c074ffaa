"""Signup, login and every way a bearer token can be refused."""

from __future__ import annotations

import base64
import json
from datetime import timedelta

import jwt
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from api.core.config import DEV_JWT_SECRET, Settings
from api.core.security import create_access_token
from tests.api.conftest import new_username, signup_and_login


def _signup(client: TestClient, **overrides: str):
    username = new_username()
    body = {"username": username, "email": f"{username}@example.com", "password": "long-enough-pw", **overrides}
    return client.post("/v1/auth/signup", json=body)


def test_signup_then_login(client: TestClient) -> None:
    username = new_username()
    resp = client.post("/v1/auth/signup", json={"username": username, "email": f"{username}@Example.com",
                                                "password": "long-enough-pw"})
    assert resp.status_code == 201
    assert resp.json() == {"message": "User registered successfully"}

    resp = client.post("/v1/auth/login", json={"username": username, "password": "long-enough-pw"})
    assert resp.status_code == 200
    body = resp.json()
    assert body["token_type"] == "bearer"
    me = client.get("/v1/auth/me", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert me.status_code == 200
    assert me.json()["username"] == username
    assert me.json()["email"] == f"{username}@example.com"


def test_signup_rejects_existing_username_and_email(client: TestClient) -> None:
    username = new_username()
    assert _signup(client, username=username, email=f"{username}@example.com").status_code == 201
    again = _signup(client, username=username.upper())
    assert again.status_code == 400
    assert "already exists" in again.json()["detail"]
    same_email = _signup(client, email=f"{username.upper()}@EXAMPLE.com")
    assert same_email.status_code == 400
    assert "already exists" in same_email.json()["detail"]


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"email": "not-an-email"}, "email"),
        ({"password": "short"}, "password"),
        ({"username": "a"}, "username"),
        ({"username": "../etc"}, "username"),
        ({"username": "bad name"}, "username"),
    ],
)
def test_signup_invalid_input_is_400_with_readable_detail(client: TestClient, overrides, field) -> None:
    resp = _signup(client, **overrides)
    assert resp.status_code == 400
    detail = resp.json()["detail"]
    assert isinstance(detail, str) and detail.startswith(f"{field}:")


def test_signup_missing_field_and_broken_json(client: TestClient) -> None:
    resp = client.post("/v1/auth/signup", json={"username": new_username()})
    assert resp.status_code == 400
    assert "email: is required" in resp.json()["detail"]
    resp = client.post("/v1/auth/signup", content=b"{not json", headers={"Content-Type": "application/json"})
    assert resp.status_code == 400
    assert "not valid JSON" in resp.json()["detail"]


def test_login_failures_are_401(client: TestClient) -> None:
    username = new_username()
    assert _signup(client, username=username, email=f"{username}@example.com").status_code == 201
    wrong = client.post("/v1/auth/login", json={"username": username, "password": "wrong-password"})
    unknown = client.post("/v1/auth/login", json={"username": new_username(), "password": "long-enough-pw"})
    for resp in (wrong, unknown):
        assert resp.status_code == 401
        assert resp.json() == {"detail": "Incorrect username or password"}
    missing = client.post("/v1/auth/login", json={"username": username})
    assert missing.status_code == 422
    assert "password: is required" in missing.json()["detail"]


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _assert_401(client: TestClient, headers: dict[str, str], reason: str) -> None:
    resp = client.get("/v1/datasets", headers=headers)
    assert resp.status_code == 401, resp.text
    assert resp.headers["WWW-Authenticate"] == "Bearer"
    assert reason.lower() in resp.json()["detail"].lower()


def test_every_bad_token_is_401_with_detail(client: TestClient, settings: Settings, auth: dict[str, str]) -> None:
    good = auth["Authorization"].split()[1]
    user_id = jwt.decode(good, options={"verify_signature": False})["sub"]
    header, payload, signature = good.split(".")

    _assert_401(client, {}, "Not authenticated")
    _assert_401(client, {"Authorization": "Basic dXNlcjpwYXNz"}, "Not authenticated")
    _assert_401(client, {"Authorization": "Bearer"}, "Not authenticated")
    _assert_401(client, {"Authorization": "Bearer not.a.jwt"}, "malformed")
    expired = create_access_token(user_id, settings, expires_in=timedelta(seconds=-5))
    _assert_401(client, {"Authorization": f"Bearer {expired}"}, "expired")
    claims = jwt.decode(good, options={"verify_signature": False})
    tampered_payload = _b64({**claims, "sub": "someone-else"})
    _assert_401(client, {"Authorization": f"Bearer {header}.{tampered_payload}.{signature}"}, "signature")
    none_token = f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{payload}."
    _assert_401(client, {"Authorization": f"Bearer {none_token}"}, "algorithm")
    foreign = jwt.encode(claims, "another-secret-of-enough-length-123456", algorithm="HS256")
    _assert_401(client, {"Authorization": f"Bearer {foreign}"}, "signature")
    no_exp = jwt.encode({"sub": user_id, "iat": claims["iat"]}, settings.jwt_secret, algorithm="HS256")
    _assert_401(client, {"Authorization": f"Bearer {no_exp}"}, "'exp'")
    ghost = create_access_token("no-such-user", settings)
    _assert_401(client, {"Authorization": f"Bearer {ghost}"}, "no longer exists")
    # the untouched token still works
    assert client.get("/v1/datasets", headers=auth).status_code == 200


def test_production_refuses_the_development_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QLORA_ENV", "production")
    monkeypatch.delenv("QLORA_JWT_SECRET", raising=False)
    with pytest.raises(ValidationError, match="QLORA_JWT_SECRET is not set"):
        Settings()
    monkeypatch.setenv("QLORA_JWT_SECRET", DEV_JWT_SECRET)
    with pytest.raises(ValidationError, match="development secret"):
        Settings()
    monkeypatch.setenv("QLORA_JWT_SECRET", "short")
    with pytest.raises(ValidationError, match="at least 32"):
        Settings()
    monkeypatch.setenv("QLORA_JWT_SECRET", "x" * 48)
    monkeypatch.delenv("QLORA_WEBHOOK_SECRET_KEY", raising=False)
    with pytest.raises(ValidationError, match="QLORA_WEBHOOK_SECRET_KEY is not set"):
        Settings()  # the key of the webhook signing secrets at rest is required too
    monkeypatch.setenv("QLORA_WEBHOOK_SECRET_KEY", "x" * 48)
    with pytest.raises(ValidationError, match="must differ from QLORA_JWT_SECRET"):
        Settings()
    monkeypatch.setenv("QLORA_WEBHOOK_SECRET_KEY", "y" * 48 + ",short")
    with pytest.raises(ValidationError, match="at least 32 characters"):
        Settings()
    monkeypatch.setenv("QLORA_WEBHOOK_SECRET_KEY", "y" * 48)
    assert Settings().env == "production"


def test_production_server_does_not_start_with_dev_secret(tmp_path) -> None:
    import os
    import subprocess
    import sys

    env = {**os.environ, "QLORA_ENV": "production", "QLORA_JWT_SECRET": DEV_JWT_SECRET,
           "QLORA_DATABASE_URL": f"sqlite:///{tmp_path / 'api.db'}"}
    proc = subprocess.run([sys.executable, "-c", "import uvicorn; uvicorn.run('api.main:app', port=0)"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "development secret" in proc.stderr
    assert not (tmp_path / "api.db").exists()


def test_two_users_tokens_are_distinct(client: TestClient) -> None:
    a, b = signup_and_login(client), signup_and_login(client)
    assert client.get("/v1/auth/me", headers=a).json()["id"] != client.get("/v1/auth/me", headers=b).json()["id"]
