"""PostgreSQL 15 starts for the test session (as the `postgres` user when run as root)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

pytestmark = pytest.mark.stack


def test_postgres_accepts_connections_and_keeps_rows(postgres_url):
    assert postgres_url.startswith("postgresql+psycopg2://")
    engine = sa.create_engine(postgres_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE IF NOT EXISTS probe (id serial PRIMARY KEY, name text)"))
            conn.execute(sa.text("INSERT INTO probe (name) VALUES ('a')"))
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT current_setting('server_version_num')::int / 10000")).scalar() == 15
            assert conn.execute(sa.text("SELECT count(*) FROM probe WHERE name = 'a'")).scalar() >= 1
    finally:
        engine.dispose()


def test_fresh_database_is_empty(fresh_postgres_url, postgres_url):
    assert fresh_postgres_url != postgres_url
    engine = sa.create_engine(fresh_postgres_url)
    try:
        assert sa.inspect(engine).get_table_names() == []
    finally:
        engine.dispose()
