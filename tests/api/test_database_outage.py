"""The service database unreachable (restarting, failed over, cut off): every route answers 503
with a `detail` and `Retry-After`, never a 500; a wrong statement stays a 500. Here the app's
sessions are pointed at a closed port after sign-up; the real restart of PostgreSQL under load
is tests/e2e/test_service_faults.py."""

from __future__ import annotations

import sqlite3

import psycopg2
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine
from sqlalchemy.exc import IntegrityError, OperationalError

from api.db import database_unreachable, make_sessionmaker
from devstack.ports import free_ports


def test_an_unreachable_database_is_503_with_a_detail(client: TestClient, auth: dict[str, str]) -> None:
    dead = create_engine(f"postgresql+psycopg2://postgres@127.0.0.1:{free_ports(1)[0]}/gone",
                         connect_args={"connect_timeout": 2})
    working = client.app.state.sessionmaker
    client.app.state.sessionmaker = make_sessionmaker(dead)
    try:
        for path in ("/v1/trainings", "/v1/datasets", "/v1/auth/me"):
            resp = client.get(path, headers=auth)
            assert resp.status_code == 503, (path, resp.status_code, resp.text)
            assert "database is unavailable" in resp.json()["detail"] and resp.headers["Retry-After"] == "5"
    finally:
        client.app.state.sessionmaker = working
    assert client.get("/v1/trainings", headers=auth).status_code == 200


def test_only_connection_failures_count_as_an_outage() -> None:
    try:
        psycopg2.connect(host="127.0.0.1", port=free_ports(1)[0], user="postgres", connect_timeout=2)
    except psycopg2.OperationalError as exc:
        refused = OperationalError("SELECT 1", {}, exc)
    else:
        pytest.fail("connected to a closed port")
    assert database_unreachable(refused)
    assert not database_unreachable(OperationalError("SELECT 1", {}, sqlite3.OperationalError("database is locked")))
    assert not database_unreachable(IntegrityError("INSERT", {}, Exception("duplicate key")))
    assert not database_unreachable(ValueError("no"))


def test_no_connection_free_in_time_is_503_busy_not_an_outage(postgres_url, s3) -> None:
    """Every pooled connection in use (QLORA_DATABASE_POOL_SIZE + QLORA_DATABASE_MAX_OVERFLOW)
    past QLORA_DATABASE_POOL_TIMEOUT_S: 503 saying the service is busy (the database is up),
    with Retry-After; the next request once one is free: 200."""
    from api.main import create_app
    from tests.api.conftest import make_settings, signup_and_login

    settings = make_settings(postgres_url, s3, database_pool_size=1, database_max_overflow=0,
                             database_pool_timeout_s=0.5)
    with TestClient(create_app(settings)) as client:
        auth = signup_and_login(client)
        held = client.app.state.engine.connect()  # the pool's only connection
        try:
            resp = client.get("/v1/trainings", headers=auth)
        finally:
            held.close()
        assert resp.status_code == 503, resp.text
        assert resp.json()["detail"].startswith("The service is busy: no database connection came free in time")
        assert resp.headers["Retry-After"] == "5"
        assert client.get("/v1/trainings", headers=auth).status_code == 200


def test_a_session_whose_database_went_away_mid_request_closes_quietly(postgres_url) -> None:
    """A request's session in a transaction when PostgreSQL drops its connection (a restart)
    after the request's last query: closing it after the answer must not raise (it did: uvicorn logged the error and reset the
    client's connection, seen as 'Connection reset by peer' in the database-restart fault test)."""
    from sqlalchemy import text

    from api.db import make_engine
    from api.deps import close_session

    engine = make_engine(postgres_url)
    session = make_sessionmaker(engine)()
    pid = session.execute(text("SELECT pg_backend_pid()")).scalar()  # a transaction is open now
    with engine.connect() as other:
        other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    close_session(session)  # its rollback raised OperationalError ("server closed the connection") before
    with make_sessionmaker(engine)() as fresh:  # the pool serves working connections after it
        assert fresh.execute(text("SELECT 1")).scalar() == 1
    engine.dispose()
