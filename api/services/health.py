"""`GET /v1/health`: each dependency checked now, at once, each within a short timeout.

| check | up when |
|---|---|
| `database` | `SELECT 1` answers |
| `s3` | `HeadBucket` on the service bucket answers |
| `airflow` | Airflow's `/api/v2/monitor/health` answers and its metadata database is healthy |
| `airflow_scheduler` | that report says the scheduler is healthy (a heartbeat within Airflow's `scheduler_health_check_threshold`, 30 s by default) |
| `airflow_dag_processor` | the same for the DAG processor (when Airflow reports one) |
| `mlflow` | the tracking server's `/health` answers (not checked when no `MLFLOW_TRACKING_URI`) |

A job cannot advance while any of them is down, so the route answers 503 naming them.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from sqlalchemy import text

#: seconds each check may take
CHECK_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class Check:
    status: str  # "ok" | "down" | "not_configured"
    detail: str = ""
    latency_ms: float = 0.0

    def json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status, "latency_ms": round(self.latency_ms, 1)}
        if self.detail:
            out["detail"] = self.detail
        return out


def _timed(fn) -> Check:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    try:
        status, detail = fn()
    except Exception as exc:  # noqa: BLE001 - any failure is "down", with its reason
        status, detail = "down", f"{type(exc).__name__}: {str(exc)[:300]}"
    return Check(status, detail, (time.perf_counter() - started) * 1000)


def check_database(engine) -> Check:  # type: ignore[no-untyped-def]
    def run() -> tuple[str, str]:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return "ok", ""
    return _timed(run)


def check_s3(s3) -> Check:  # type: ignore[no-untyped-def]
    def run() -> tuple[str, str]:
        s3.check()
        return "ok", ""
    return _timed(run)


def _age(stamp: str | None) -> str:
    if not stamp:
        return "no heartbeat recorded"
    try:
        when = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return f"last heartbeat {stamp}"
    return f"last heartbeat {stamp} ({(datetime.now(UTC) - when).total_seconds():.0f} s ago)"


def check_airflow(airflow_url: str) -> dict[str, Check]:
    """Airflow's own health report: the API server, its metadata database, the scheduler's and
    the DAG processor's heartbeats."""
    started = time.perf_counter()
    try:
        resp = httpx.get(f"{airflow_url.rstrip('/')}/api/v2/monitor/health", timeout=CHECK_TIMEOUT_S)
        resp.raise_for_status()
        report = resp.json()
    except Exception as exc:  # noqa: BLE001
        down = Check("down", f"Airflow's health report cannot be read: {type(exc).__name__}: {str(exc)[:200]}",
                     (time.perf_counter() - started) * 1000)
        unknown = Check("down", "unknown: Airflow's health report cannot be read")
        return {"airflow": down, "airflow_scheduler": unknown}
    latency = (time.perf_counter() - started) * 1000

    def part(name: str) -> dict[str, Any]:
        value = report.get(name)
        return value if isinstance(value, dict) else {}

    database = part("metadatabase").get("status")
    checks = {"airflow": Check("ok", "", latency) if database == "healthy" else
              Check("down", f"Airflow's metadata database is {database or 'not reported'}", latency)}
    scheduler = part("scheduler")
    beat = _age(scheduler.get("latest_scheduler_heartbeat"))
    checks["airflow_scheduler"] = (Check("ok", beat) if scheduler.get("status") == "healthy"
                                   else Check("down", f"the scheduler is {scheduler.get('status') or 'not running'}: "
                                                      f"{beat}; queued and running jobs do not advance"))
    processor = part("dag_processor")
    if processor.get("status") is not None:
        beat = _age(processor.get("latest_dag_processor_heartbeat"))
        checks["airflow_dag_processor"] = (
            Check("ok", beat) if processor.get("status") == "healthy"
            else Check("down", f"the DAG processor is {processor.get('status')}: {beat}"))
    return checks


def check_mlflow(tracking_uri: str | None) -> Check:
    if not tracking_uri or not tracking_uri.startswith(("http://", "https://")):
        return Check("not_configured", "MLFLOW_TRACKING_URI is not an http(s) server")

    def run() -> tuple[str, str]:
        resp = httpx.get(f"{tracking_uri.rstrip('/')}/health", timeout=CHECK_TIMEOUT_S)
        if resp.status_code >= 500:
            return "down", f"the tracking server answered {resp.status_code}"
        return "ok", ""
    return _timed(run)


async def _bounded(fn, *args, fallback):  # type: ignore[no-untyped-def]
    """`fn(*args)` in a thread; past the timeout (plus slack) `fallback(reason)` is the answer."""
    limit = CHECK_TIMEOUT_S + 1
    try:
        return await asyncio.wait_for(asyncio.to_thread(fn, *args), timeout=limit)
    except TimeoutError:
        return fallback(f"no answer within {limit:g} s")


async def check_all(app) -> dict[str, Check]:  # type: ignore[no-untyped-def]
    """Every check at once (threads), each bounded by its timeout."""
    settings = app.state.settings

    def down(reason: str) -> Check:
        return Check("down", reason)

    database, s3, airflow, mlflow = await asyncio.gather(
        _bounded(check_database, app.state.engine, fallback=down),
        _bounded(check_s3, app.state.s3, fallback=down),
        _bounded(check_airflow, settings.airflow_url,
                 fallback=lambda why: {"airflow": down(why), "airflow_scheduler": down("unknown: " + why)}),
        _bounded(check_mlflow, settings.mlflow_tracking_uri, fallback=down),
    )
    return {"database": database, "s3": s3, **airflow, "mlflow": mlflow}


def summary(checks: dict[str, Check]) -> tuple[int, dict[str, Any]]:
    """The status code and body: 200 `{"status": "ok", "checks"}` or 503 with a `detail`
    naming what is down."""
    body: dict[str, Any] = {"checks": {name: check.json() for name, check in checks.items()}}
    down = [name for name, check in checks.items() if check.status == "down"]
    if not down:
        return 200, {"status": "ok", **body}
    reasons = "; ".join(f"{name} ({checks[name].detail})" if checks[name].detail else name for name in down)
    return 503, {"status": "unhealthy", "down": down, "detail": f"Unhealthy: {reasons}", **body}
