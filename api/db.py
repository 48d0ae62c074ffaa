"""SQLAlchemy 2 engine and session factory (SQLite by default, PostgreSQL in production)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

if TYPE_CHECKING:
    from api.core.config import Settings


def make_engine(database_url: str, pool_size: int = 10, max_overflow: int = 20, pool_timeout_s: float = 30.0) -> Engine:
    """The engine; the pool settings are PostgreSQL's (`Settings.database_pool_*`)."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=pool_size, max_overflow=max_overflow,
                         pool_timeout=pool_timeout_s)


def database_unreachable(exc: BaseException) -> bool:
    """`exc` says the database cannot be reached now (down, restarting, the connection cut, no
    connection free), rather than that the statement was wrong: callers answer 503 and retry."""
    from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    if isinstance(exc, PoolTimeout):
        return True
    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated or isinstance(exc, InterfaceError):
        return True
    if isinstance(exc, OperationalError):
        if type(exc.orig).__module__.startswith("sqlite3"):
            return False  # e.g. "database is locked": one process's file, not an outage
        # PostgreSQL SQLSTATE class 08 (connection exception), 57P0x (shut down by the admin, a
        # crash, cannot connect now), 53300 (too many connections); psycopg2 gives no code when
        # it could not connect at all
        code = getattr(exc.orig, "pgcode", None)
        return code is None or code.startswith(("08", "57P")) or code == "53300"
    return False


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)


def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    with factory() as session:
        yield session


#: PostgreSQL advisory lock keys: migrations, and the background reconcile pass
MIGRATION_LOCK = 724113
RECONCILE_LOCK = 724114


@contextlib.contextmanager
def exclusive_pass(engine: Engine, key: int = RECONCILE_LOCK) -> Iterator[bool]:
    """Yields True in the one API process (of several uvicorn workers or replicas sharing a
    PostgreSQL database) that got the lock now; the others get False and skip this pass.
    SQLite (one process) always gets True."""
    if engine.dialect.name != "postgresql":
        yield True
        return
    with engine.connect() as connection:
        got = bool(connection.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": key}).scalar())
        connection.commit()
        try:
            yield got
        finally:
            if got:
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                connection.commit()


def upgrade_to_head(engine: Engine, settings: Settings | None = None) -> None:
    """Applies the Alembic migrations (api/migrations) up to head; `settings` (the API's) reach
    the migrations that need them (0008: the key of the webhook secrets), else they read the
    environment's."""
    from alembic import command
    from alembic.config import Config

    config = Config(str(Path(__file__).with_name("alembic.ini")))
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            # several API processes starting at once migrate one after the other
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        config.attributes["connection"] = connection
        config.attributes["settings"] = settings
        command.upgrade(config, "head")
