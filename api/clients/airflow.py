"""Thin httpx client for Airflow's REST API v2: trigger DAG runs and read their state."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
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


@dataclass(frozen=True)
class DagRun:
    dag_id: str
    run_id: str
    state: str

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES


class AirflowApi(Protocol):
    """What the API needs from Airflow (tests substitute a fake with the same methods)."""

    def trigger_dag_run(self, dag_id: str, run_id: str, conf: dict[str, Any]) -> bool: ...

    def get_dag_run(self, dag_id: str, run_id: str) -> DagRun | None: ...

    def list_dag_runs(self, dag_id: str, run_ids: list[str]) -> dict[str, DagRun]: ...


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
        self._token: str | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> AirflowClient:
        return cls(
            settings.airflow_url, settings.airflow_username, settings.airflow_password, settings.airflow_timeout_s
        )

    def close(self) -> None:
        self._http.close()

    # --- transport -------------------------------------------------------------------------
    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._http.request(method, path, **kwargs)
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
            if refresh or self._token is None:
                self._token = self._fetch_token()
            return self._token

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        token = self._token_value()
        resp = self._send(method, path, headers={"Authorization": f"Bearer {token}"}, **kwargs)
        if resp.status_code == 401:
            token = self._token_value(refresh=True)
            resp = self._send(method, path, headers={"Authorization": f"Bearer {token}"}, **kwargs)
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
        if resp.status_code >= 400:
            raise AirflowError(f"Airflow refused to trigger {dag_id} ({resp.status_code}): {_detail(resp)}")
        return True

    def get_dag_run(self, dag_id: str, run_id: str) -> DagRun | None:
        resp = self._request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")
        if resp.status_code == 404:
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
            if resp.status_code == 404:
                continue
            if resp.status_code >= 400:
                raise AirflowError(f"Airflow refused to list runs of {dag_id} ({resp.status_code}): {_detail(resp)}")
            for item in resp.json().get("dag_runs", []):
                run = _dag_run(item, dag_id)
                if run.run_id in wanted:
                    found[run.run_id] = run
        return found


def _dag_run(item: dict[str, Any], dag_id: str) -> DagRun:
    return DagRun(dag_id=item.get("dag_id", dag_id), run_id=item["dag_run_id"], state=str(item.get("state")))


def _detail(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:300]
    return str(body.get("detail", body))[:300] if isinstance(body, dict) else str(body)[:300]
