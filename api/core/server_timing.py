"""Where a request's time went, in its `Server-Timing` response header (W3C Server Timing; browser
developer tools and `curl -i` show it): `app` is the whole time inside the API (waiting for a
worker thread included), the other entries the parts the code measured, each the sum of its
calls: `db` (SQL statements), and on the job detail `live` (the shared live state of runs),
`airflow` and `mlflow` (their reads). Example:

    Server-Timing: db;dur=3.1, live;dur=0.2, airflow;dur=41.7, mlflow;dur=12.9, app;dur=61.4

The parts are kept in a context variable the middleware sets per request; FastAPI runs sync
routes in a worker thread with a copy of that context, which shares the same dict."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from sqlalchemy import Engine, event
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_parts: ContextVar[dict[str, float] | None] = ContextVar("server_timing_parts", default=None)


def add(name: str, ms: float) -> None:
    """Adds `ms` to the part `name` of the current request (nothing outside a request)."""
    parts = _parts.get()
    if parts is not None:
        parts[name] = parts.get(name, 0.0) + ms


@contextmanager
def measured(name: str) -> Iterator[None]:
    """Adds the time the block takes (even when it raises) to the part `name`."""
    started = time.perf_counter()
    try:
        yield
    finally:
        add(name, (time.perf_counter() - started) * 1000)


def header(parts: dict[str, float], app_ms: float) -> str:
    return ", ".join(f"{name};dur={ms:.1f}" for name, ms in [*parts.items(), ("app", app_ms)])


def time_statements(engine: Engine) -> None:
    """Counts the time of each SQL statement of `engine` in the part `db`."""

    @event.listens_for(engine, "before_cursor_execute")
    def _before(conn, cursor, statement, parameters, context, executemany) -> None:  # type: ignore[no-untyped-def]
        conn.info["server_timing_started"] = time.perf_counter()  # one statement at a time per connection

    @event.listens_for(engine, "after_cursor_execute")
    def _after(conn, cursor, statement, parameters, context, executemany) -> None:  # type: ignore[no-untyped-def]
        started = conn.info.pop("server_timing_started", None)
        if started is not None:
            add("db", (time.perf_counter() - started) * 1000)


class ServerTiming:
    """ASGI middleware: gives each HTTP request its parts and writes the header when the
    response starts."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        parts: dict[str, float] = {}
        token = _parts.set(parts)
        started = time.perf_counter()

        async def timed_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).append(
                    "Server-Timing", header(parts, (time.perf_counter() - started) * 1000))
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        finally:
            _parts.reset(token)
