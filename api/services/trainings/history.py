"""A job's history beyond its detail: the per-step series of its MLflow metrics, and the whole
log of its train task, both paged."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from api.clients.airflow import TaskInstance
from api.clients.mlflow import MlflowUnavailable
from api.clients.mlflow import SYSTEM_METRIC_PREFIX
from api.models import TrainingJob
from api.services.errors import ServiceError
from api.services.trainings.context import TrainingContext, run_id
from training import job_spec


class MetricsUnavailable(ServiceError):
    status_code = 503

    def __init__(self, why: str) -> None:
        super().__init__(f"The metrics service (MLflow) cannot be read; retry later ({why})")


@dataclass(frozen=True)
class MetricsPage:
    series: dict[str, list[dict]]
    has_more: bool
    next_after_step: int | None


def metric_history(ctx: TrainingContext, job: TrainingJob, keys: list[str] | None, after_step: int,
                   limit: int) -> MetricsPage:
    """The points of `keys` (every metric of the run but system ones when None) with a step
    above `after_step`, for the first `limit` such steps (the same steps for every key)."""
    if not job.mlflow_run_id:
        return MetricsPage({k: [] for k in keys or []}, False, None)
    if ctx.mlflow is None:
        raise MetricsUnavailable("no tracking server is configured")
    try:
        if keys is None:
            summary = ctx.mlflow.get_run(job.mlflow_run_id)
            keys = sorted(k for k in (summary.metrics if summary else {}) if not k.startswith(SYSTEM_METRIC_PREFIX))
        points = {k: [p for p in ctx.mlflow.get_metric_history(job.mlflow_run_id, k) if p.step > after_step]
                  for k in keys}
    except MlflowUnavailable as exc:
        raise MetricsUnavailable(str(exc)[:200]) from None
    steps = sorted({p.step for series in points.values() for p in series})
    shown = steps[:limit]
    last = shown[-1] if shown else None
    more = len(steps) > limit
    series = {k: [{"step": p.step, "value": p.value,
                   "timestamp": datetime.fromtimestamp(p.timestamp / 1000, tz=UTC)}
                  for p in v if last is not None and p.step <= last] for k, v in points.items()}
    return MetricsPage(series, more, last if more else None)


@dataclass(frozen=True)
class LogPage:
    text: str
    next_offset: int
    total_lines: int
    #: the job ended and the page reaches the end of its log: nothing more will come
    complete: bool
    task_id: str | None


def train_log(ctx: TrainingContext, job: TrainingJob, offset: int, limit: int) -> LogPage:
    """Lines `offset` to `offset + limit` of the train task's log (of its latest try; of the
    latest task that started when training never did). Raises `AirflowError`."""
    tis: dict[str, TaskInstance] = ctx.airflow.list_task_instances(ctx.dag_id, run_id(job))
    started = [t for t in job_spec.TASK_IDS if t in tis and tis[t].try_number > 0 and tis[t].state]
    if not started:
        return LogPage("", offset, 0, job.status not in ("queued", "running"), None)
    task = tis[job_spec.TRAIN_TASK_ID] if job_spec.TRAIN_TASK_ID in started else tis[started[-1]]
    lines = ctx.airflow.get_task_log(ctx.dag_id, run_id(job), task.task_id, task.try_number)
    page = lines[offset:offset + limit]
    next_offset = min(offset, len(lines)) + len(page)
    ended = job.status not in ("queued", "running")
    return LogPage("".join(line + "\n" for line in page), next_offset, len(lines),
                   ended and next_offset >= len(lines), task.task_id)
