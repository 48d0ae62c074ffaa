"""Thin httpx client for Airflow's REST API v2: trigger DAG runs and read their state."""

from __future__ import annotations

import copy
import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import httpx

from api.core.config import Settings

log = logging.getLogger(__name__)

#: run states after which nothing changes any more
TERMINAL_STATES = frozenset({"success", "failed"})
#: how many run ids one list request filters on (Airflow caps page size at 100 by default)
LIST_CHUNK = 100


class AirflowError(Exception):
    """Airflow answered with an error the API cannot work around."""


class AirflowUnavailable(AirflowError):
    """Airflow could not be reached (connection refused, timeout, 5xx, authentication)."""


class AirflowTimeout(AirflowUnavailable):
    """Airflow took the request but did not answer in time (a read or write timeout): it is up
    but slow, and may have done what was asked."""


class DagNotFound(AirflowUnavailable):
    """Airflow does not know the DAG itself (not parsed yet, renamed, a fresh metadata
    database): a state of Airflow to wait out, never evidence that a run is gone."""

    def __init__(self, dag_id: str, why: str = "") -> None:
        self.dag_id = dag_id
        self.detail = (f"The pipeline (Airflow DAG {dag_id}) is not loaded in Airflow yet (not parsed, or "
                       "renamed); retry in a minute")
        super().__init__(f"{self.detail}{': ' + why if why else ''}")


@dataclass(frozen=True)
class DagRun:
    dag_id: str
    run_id: str
    state: str
    start_date: datetime | None = None
    end_date: datetime | None = None

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES


@dataclass(frozen=True)
class TaskInstance:
    task_id: str
    state: str | None
    try_number: int = 0
    start_date: datetime | None = None
    end_date: datetime | None = None


class AirflowApi(Protocol):
    """What the API needs from Airflow (tests substitute a fake with the same methods)."""

    def trigger_dag_run(self, dag_id: str, run_id: str, conf: dict[str, Any]) -> bool: ...

    def get_dag_run(self, dag_id: str, run_id: str) -> DagRun | None: ...

    def list_dag_runs(self, dag_id: str, run_ids: list[str]) -> dict[str, DagRun]: ...


class TrainingAirflowApi(AirflowApi, Protocol):
    """What the trainings API needs on top: task instances, logs, XCom, and failing a run."""

    def list_task_instances(self, dag_id: str, run_id: str) -> dict[str, TaskInstance]: ...

    def get_task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int) -> list[str]: ...

    def get_xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value") -> Any: ...

    def set_dag_run_state(self, dag_id: str, run_id: str, state: str) -> DagRun | None: ...

    def list_active_runs(self, dag_id: str, limit: int = 500) -> list[DagRun]: ...

    def with_timeout(self, timeout_s: float) -> TrainingAirflowApi: ...


class AirflowClient:
    """Authenticates with `POST /auth/token`, caches the token and refreshes it on a 401."""

    def __init__(
        self,
        base_url: str,
        username: str,
        password: str,
        timeout_s: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._http = httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout_s, transport=transport)
        self._username = username
        self._password = password
        self._token: list[str | None] = [None]  # shared with the `with_timeout` views
        self._lock = threading.Lock()
        self._timeout: httpx.Timeout | Any = httpx.USE_CLIENT_DEFAULT

    @classmethod
    def from_settings(cls, settings: Settings) -> AirflowClient:
        return cls(
            settings.airflow_url, settings.airflow_username, settings.airflow_password, settings.airflow_timeout_s
        )

    def close(self) -> None:
        self._http.close()

    def with_timeout(self, timeout_s: float) -> AirflowClient:
        """This client (the same connections and token) with requests that give up after
        `timeout_s` (connect, each read, a free connection): the detail's per-job reads."""
        view = copy.copy(self)
        view._timeout = httpx.Timeout(timeout_s)
        return view

    # --- transport -------------------------------------------------------------------------
    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._http.request(method, path, timeout=self._timeout, **kwargs)
        except (httpx.ReadTimeout, httpx.WriteTimeout) as exc:
            raise AirflowTimeout(f"Airflow at {self._http.base_url} did not answer {method} {path} in time") from exc
        except httpx.TimeoutException as exc:
            raise AirflowUnavailable(f"Airflow at {self._http.base_url} timed out") from exc
        except httpx.TransportError as exc:
            raise AirflowUnavailable(f"cannot reach Airflow at {self._http.base_url}: {exc}") from exc

    def _fetch_token(self) -> str:
        resp = self._send("POST", "/auth/token", json={"username": self._username, "password": self._password})
        if resp.status_code >= 400:
            raise AirflowUnavailable(f"Airflow refused the API's credentials ({resp.status_code})")
        token = resp.json().get("access_token")
        if not token:
            raise AirflowUnavailable("Airflow returned no access token")
        return token

    def _token_value(self, refresh: bool = False) -> str:
        with self._lock:
            if refresh or self._token[0] is None:
                self._token[0] = self._fetch_token()
            return self._token[0]

    def _request(
        self, method: str, path: str, headers_extra: dict[str, str] | None = None, **kwargs: Any
    ) -> httpx.Response:
        token = self._token_value()
        headers = {"Authorization": f"Bearer {token}", **(headers_extra or {})}
        resp = self._send(method, path, headers=headers, **kwargs)
        if resp.status_code == 401:
            token = self._token_value(refresh=True)
            headers["Authorization"] = f"Bearer {token}"
            resp = self._send(method, path, headers=headers, **kwargs)
        if resp.status_code >= 500:
            raise AirflowUnavailable(f"Airflow answered {resp.status_code} on {method} {path}")
        if resp.status_code in (401, 403):
            raise AirflowUnavailable(f"Airflow refused {method} {path} ({resp.status_code})")
        return resp

    # --- API --------------------------------------------------------------------------------
    def trigger_dag_run(self, dag_id: str, run_id: str, conf: dict[str, Any]) -> bool:
        """Triggers one run; True if created, False if a run with this id already exists."""
        resp = self._request(
            "POST",
            f"/api/v2/dags/{dag_id}/dagRuns",
            json={"dag_run_id": run_id, "logical_date": None, "conf": conf},
        )
        if resp.status_code == 409:
            return False
        if resp.status_code == 404:
            raise DagNotFound(dag_id, _detail(resp))
        if resp.status_code >= 400:
            raise AirflowError(f"Airflow refused to trigger {dag_id} ({resp.status_code}): {_detail(resp)}")
        return True

    def get_dag_run(self, dag_id: str, run_id: str) -> DagRun | None:
        resp = self._request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")
        if resp.status_code == 404:
            _raise_unless_run_missing(resp, dag_id)
            return None
        if resp.status_code >= 400:
            raise AirflowError(f"Airflow refused to read run {run_id} ({resp.status_code}): {_detail(resp)}")
        return _dag_run(resp.json(), dag_id)

    def list_dag_runs(self, dag_id: str, run_ids: list[str]) -> dict[str, DagRun]:
        """State of many runs of one DAG in one request per 100 ids (missing ids: no run)."""
        wanted = set(run_ids)
        found: dict[str, DagRun] = {}
        ordered = sorted(wanted)
        for start in range(0, len(ordered), LIST_CHUNK):
            chunk = ordered[start : start + LIST_CHUNK]
            resp = self._request(
                "GET",
                f"/api/v2/dags/{dag_id}/dagRuns",
                params={"run_id_pattern": "|".join(chunk), "limit": LIST_CHUNK},
            )
            if resp.status_code == 404:  # the DAG itself: its runs are not known to be gone
                raise DagNotFound(dag_id, _detail(resp))
            if resp.status_code >= 400:
                raise AirflowError(f"Airflow refused to list runs of {dag_id} ({resp.status_code}): {_detail(resp)}")
            for item in resp.json().get("dag_runs", []):
                run = _dag_run(item, dag_id)
                if run.run_id in wanted:
                    found[run.run_id] = run
        return found

    def list_active_runs(self, dag_id: str, limit: int = 500) -> list[DagRun]:
        """The queued and running runs of a DAG (at most `limit`, oldest first)."""
        out: list[DagRun] = []
        while len(out) < limit:
            resp = self._request(
                "GET", f"/api/v2/dags/{dag_id}/dagRuns",
                params={"state": ["queued", "running"], "limit": LIST_CHUNK, "offset": len(out),
                        "order_by": "id"},
            )
            if resp.status_code == 404:
                raise DagNotFound(dag_id, _detail(resp))
            if resp.status_code >= 400:
                raise AirflowError(f"Airflow refused to list runs of {dag_id} ({resp.status_code}): {_detail(resp)}")
            page = [_dag_run(item, dag_id) for item in resp.json().get("dag_runs", [])]
            out += page
            if len(page) < LIST_CHUNK:
                break
        return out[:limit]

    def list_task_instances(self, dag_id: str, run_id: str) -> dict[str, TaskInstance]:
        """Task instances of one run by task id (empty if the run is unknown)."""
        resp = self._request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 100})
        if resp.status_code == 404:
            return {}
        if resp.status_code >= 400:
            raise AirflowError(f"Airflow refused to list task instances of {run_id} ({resp.status_code}): {_detail(resp)}")
        out: dict[str, TaskInstance] = {}
        for item in resp.json().get("task_instances", []):
            out[item["task_id"]] = TaskInstance(
                task_id=item["task_id"],
                state=item.get("state"),
                try_number=int(item.get("try_number") or 0),
                start_date=_time(item.get("start_date")),
                end_date=_time(item.get("end_date")),
            )
        return out

    def get_task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int) -> list[str]:
        """The log of one try of a task as text lines (structured entries rendered)."""
        resp = self._request(
            "GET",
            f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{max(try_number, 1)}",
            params={"full_content": "true"},
            headers_extra={"Accept": "application/json"},
        )
        if resp.status_code == 404:
            return []
        if resp.status_code >= 400:
            raise AirflowError(f"Airflow refused the log of {run_id}/{task_id} ({resp.status_code}): {_detail(resp)}")
        content = resp.json().get("content", [])
        if isinstance(content, str):
            return content.splitlines()
        return [line for entry in content for line in render_log_entry(entry)]

    def get_xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value") -> Any:
        """An XCom value (deserialized), or None when there is none yet."""
        resp = self._request(
            "GET",
            f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}",
            params={"deserialize": "true", "stringify": "false"},
        )
        if resp.status_code == 404:
            return None
        if resp.status_code >= 400:
            raise AirflowError(f"Airflow refused XCom {task_id}.{key} of {run_id} ({resp.status_code}): {_detail(resp)}")
        return resp.json().get("value")

    def set_dag_run_state(self, dag_id: str, run_id: str, state: str) -> DagRun | None:
        """Marks a run `failed`/`success` (Airflow then kills its running tasks); None if unknown."""
        resp = self._request("PATCH", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}", json={"state": state})
        if resp.status_code == 404:
            _raise_unless_run_missing(resp, dag_id)
            return None
        if resp.status_code >= 400:
            raise AirflowError(f"Airflow refused to set run {run_id} {state} ({resp.status_code}): {_detail(resp)}")
        return _dag_run(resp.json(), dag_id)


def render_log_entry(entry: Any) -> list[str]:
    """One structured log entry of Airflow 3 (`{timestamp, event, level, logger, error_detail}`)
    as text lines."""
    if not isinstance(entry, dict):
        return [str(entry)]
    event = str(entry.get("event", ""))
    level = str(entry.get("level") or "").upper()
    stamp = str(entry.get("timestamp") or "")[:23].replace("T", " ")
    prefix = " ".join(p for p in (stamp, level) if p)
    lines = [f"{prefix} {event}".strip() if prefix else event]
    for error in entry.get("error_detail") or []:
        if isinstance(error, dict):
            lines.append(f"{error.get('exc_type', 'Error')}: {error.get('exc_value', '')}")
    return lines


def _dag_run(item: dict[str, Any], dag_id: str) -> DagRun:
    return DagRun(
        dag_id=item.get("dag_id", dag_id),
        run_id=item["dag_run_id"],
        state=str(item.get("state")),
        start_date=_time(item.get("start_date")),
        end_date=_time(item.get("end_date")),
    )


def _time(value: Any) -> datetime | None:
    """Airflow's ISO timestamps, timezone-aware (UTC when one comes without a zone)."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _raise_unless_run_missing(resp: httpx.Response, dag_id: str) -> None:
    """A 404 on a run's path means the run is missing only when Airflow says so (`The DagRun
    with ... was not found`); any other 404 is about the DAG: `DagNotFound`."""
    if "dagrun" not in _detail(resp).lower().replace(" ", ""):
        raise DagNotFound(dag_id, _detail(resp))


def _detail(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:300]
    return str(body.get("detail", body))[:300] if isinstance(body, dict) else str(body)[:300]
