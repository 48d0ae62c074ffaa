"""Session fixtures that start REAL services (PostgreSQL 15, SeaweedFS S3, MLflow, Airflow,
the API under uvicorn) on free loopback ports in temp folders.

Each is lazy: a service starts only when a test asks for it, once per session, and is
stopped by pid at the end of the session. The classes are those of `devstack` (`make up`)."""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from devstack.ports import free_ports
from devstack.postgres import Postgres
from devstack.seaweedfs import S3Settings, SeaweedFS

REPO = Path(__file__).resolve().parents[1]


# -- PostgreSQL ----------------------------------------------------------------------------
@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Postgres]:
    # Not under pytest's tmp folder: /tmp/pytest-of-root is 0700 and PostgreSQL runs as `postgres`.
    folder = Path(tempfile.mkdtemp(prefix="qlora-pg-"))
    folder.chmod(0o755)
    server = Postgres(folder / "pg", free_ports(1)[0])
    server.start()
    yield server
    server.stop()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url(postgres_server: Postgres) -> str:
    """A database made for this test session (SQLAlchemy URL, `postgresql+psycopg2://...`)."""
    return postgres_server.create_database("qlora_test")


@pytest.fixture
def fresh_postgres_url(postgres_server: Postgres) -> str:
    """A new, empty database for one test."""
    return postgres_server.create_database(f"t_{uuid.uuid4().hex[:12]}")


# -- S3 (SeaweedFS) ------------------------------------------------------------------------
@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Settings]:
    """A real S3 server that verifies signatures: `.endpoint_url`, `.access_key`,
    `.secret_key`, `.region`, `.bucket` (created) and `.client()` (boto3)."""
    ports = free_ports(10)
    server = SeaweedFS(tmp_path_factory.mktemp("seaweedfs"), s3_port=ports[0], master_port=ports[1],
                       volume_port=ports[2], filer_port=ports[3], admin_port=ports[4],
                       grpc_ports=tuple(ports[5:]), access_key="test-" + secrets.token_hex(6),
                       secret_key=secrets.token_urlsafe(24), bucket="qlora-test")
    server.start()
    try:
        server.wait_ready()
        yield server.settings
    finally:
        server.stop()


@pytest.fixture
def s3_env(s3: S3Settings, monkeypatch: pytest.MonkeyPatch) -> S3Settings:
    """Points in-process code (boto3's standard chain, QLORA_S3_BUCKET) at the test S3 server."""
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    return s3
