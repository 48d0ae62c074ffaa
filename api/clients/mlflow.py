"""MLflow reads of the trainings API (`MlflowClient`): a run's status, latest metrics, params.

Bounded: each request gives up after `mlflow_timeout_s` and is retried at most twice, so a
down tracking server degrades a status read (metrics missing) instead of hanging it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Protocol

from api.core.config import Settings

log = logging.getLogger(__name__)

#: MLflow metrics the API reports (system metrics are left in the MLflow UI)
SYSTEM_METRIC_PREFIX = "system/"
#: run ids per search request (the filter string stays short)
SEARCH_CHUNK = 100


class MlflowUnavailable(Exception):
    """The tracking server could not be read."""


@dataclass(frozen=True)
class RunSummary:
    run_id: str
    experiment_id: str
    status: str
    start_time_ms: int | None
    end_time_ms: int | None
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def progress(self) -> float | None:
        value = self.metrics.get("progress")
        return None if value is None else min(max(float(value), 0.0), 1.0)


@dataclass(frozen=True)
class MetricPoint:
    """One logged value of a metric: its step, value and time (ms since the epoch)."""

    step: int
    value: float
    timestamp: int


class MlflowApi(Protocol):
    def get_run(self, run_id: str) -> RunSummary | None: ...

    def get_runs(self, runs: dict[str, str]) -> dict[str, RunSummary]: ...

    def get_metric_history(self, run_id: str, key: str) -> list[MetricPoint]: ...

    def read_json_artifact(self, run_id: str, path: str) -> Any: ...


class MlflowReader:
    """Reads runs from the tracking server at `tracking_uri`."""

    def __init__(self, tracking_uri: str, timeout_s: float = 5.0, username: str | None = None,
                 password: str | None = None) -> None:
        # the API's MLflow account (a server with the basic-auth app): MLflow's client reads
        # its credentials from these variables on every request
        if username and password:
            os.environ["MLFLOW_TRACKING_USERNAME"] = username
            os.environ["MLFLOW_TRACKING_PASSWORD"] = password
        # MLflow reads these per request; bound them unless the operator chose otherwise
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(max(timeout_s, 1))))
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
        from mlflow.tracking import MlflowClient

        self.tracking_uri = tracking_uri
        self._client = MlflowClient(tracking_uri=tracking_uri)

    @classmethod
    def from_settings(cls, settings: Settings) -> MlflowReader | None:
        uri = settings.mlflow_tracking_uri
        return cls(uri, settings.mlflow_timeout_s, settings.mlflow_tracking_username,
                   settings.mlflow_tracking_password) if uri else None

    def get_run(self, run_id: str) -> RunSummary | None:
        from mlflow.exceptions import MlflowException

        try:
            return _summary(self._client.get_run(run_id))
        except MlflowException as exc:
            if "RESOURCE_DOES_NOT_EXIST" in str(getattr(exc, "error_code", "")):
                return None
            raise MlflowUnavailable(str(exc)) from exc
        except Exception as exc:  # connection errors surface as various types
            raise MlflowUnavailable(str(exc)) from exc

    def get_runs(self, runs: dict[str, str]) -> dict[str, RunSummary]:
        """Many runs (`{run_id: experiment_id}`) in one search request per 100 runs."""
        found: dict[str, RunSummary] = {}
        ids = sorted(runs)
        for start in range(0, len(ids), SEARCH_CHUNK):
            chunk = ids[start : start + SEARCH_CHUNK]
            experiments = sorted({runs[r] for r in chunk})
            quoted = ", ".join(f"'{r}'" for r in chunk)
            try:
                result = self._client.search_runs(
                    experiments, f"attributes.run_id IN ({quoted})", max_results=len(chunk)
                )
            except Exception as exc:
                raise MlflowUnavailable(str(exc)) from exc
            for run in result:
                summary = _summary(run)
                found[summary.run_id] = summary
        return found


    def get_metric_history(self, run_id: str, key: str) -> list[MetricPoint]:
        """Every value ever logged for `key` in the run, by step then time (MLflow pages the
        history itself); empty for an unknown key or run."""
        from mlflow.exceptions import MlflowException

        try:
            points = self._client.get_metric_history(run_id, key)
        except MlflowException as exc:
            if "RESOURCE_DOES_NOT_EXIST" in str(getattr(exc, "error_code", "")):
                return []
            raise MlflowUnavailable(str(exc)) from exc
        except Exception as exc:
            raise MlflowUnavailable(str(exc)) from exc
        return sorted((MetricPoint(int(m.step), float(m.value), int(m.timestamp)) for m in points),
                      key=lambda p: (p.step, p.timestamp))

    def read_json_artifact(self, run_id: str, path: str) -> Any:
        """A JSON artifact of the run (the evaluation report), or None when it has none."""
        return _read_json_artifact(self._client, run_id, path)


def _read_json_artifact(client: Any, run_id: str, path: str) -> Any:
    """The JSON artifact `path` of the run, or None when the run or the file does not exist."""
    import json
    import tempfile

    from mlflow.exceptions import MlflowException

    try:
        if not any(f.path == path for f in client.list_artifacts(run_id, path.rsplit("/", 1)[0] if "/" in path else None)):
            return None
        with tempfile.TemporaryDirectory(prefix="qlora-api-") as folder:
            local = client.download_artifacts(run_id, path, folder)
            with open(local, encoding="utf-8") as fh:
                return json.load(fh)
    except MlflowException as exc:
        if "RESOURCE_DOES_NOT_EXIST" in str(getattr(exc, "error_code", "")):
            return None
        raise MlflowUnavailable(str(exc)) from exc
    except ValueError as exc:
        raise MlflowUnavailable(f"the artifact {path} of run {run_id} is not JSON: {exc}") from exc
    except Exception as exc:  # connection errors surface as various types
        raise MlflowUnavailable(str(exc)) from exc


def _summary(run: Any) -> RunSummary:
    return RunSummary(
        run_id=run.info.run_id,
        experiment_id=run.info.experiment_id,
        status=run.info.status,
        start_time_ms=run.info.start_time,
        end_time_ms=run.info.end_time,
        metrics={k: v for k, v in run.data.metrics.items() if not k.startswith(SYSTEM_METRIC_PREFIX)},
        params=dict(run.data.params),
        tags={k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")},
    )
