"""The events of training jobs: written where the job's state changes are applied (`sync`,
`start_stop`, the reconcile pass), read by `GET /v1/trainings/{job_id}/events`.

    status          creation (-> queued) and every later status or stage change, both values;
                    the end (completed/failed/stopped) once the job settled, after its last
                    epochs and checkpoints, so the events read in the order things happened
    stop_requested  the owner asked for the stop
    epoch           the end of an epoch with its held-out metrics: read from the MLflow run's
                    `epoch` and `epoch_*` metric histories (the engine logs `epoch_<metric>` at the
                    step that ends an evaluated epoch), while the job runs and again when it settles
    checkpoint      a checkpoint the engine saved (step, epoch, folder): read, once the job ended,
                    from the engine's final `result.json` the train task publishes to S3
                    (`training.s3.training_result_key`); each names its S3 folder
    warning/error   what a user can act on: the reason a job failed, a stop that saved no adapter

Each event carries a `key` naming the fact (`status:queued/->running/training`, `epoch:12`...):
two readers that observe the same change at once record it once. Writes of one job are
serialized by a lock on its row (PostgreSQL), so ids grow in commit order per job and
`after=<id>` is a stable cursor.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.clients.mlflow import MetricPoint, MlflowUnavailable
from api.clients.s3 import S3Unavailable
from api.models import EventLevel, EventType, TrainingEvent, TrainingJob, TrainingStatus
from api.models.base import utcnow
from training import s3 as s3_layout  # the S3 key layout

if TYPE_CHECKING:
    from api.services.trainings.context import TrainingContext

log = logging.getLogger(__name__)

#: the engine's metric of the fractional epoch at each step, and the prefix of its eval metrics
EPOCH_METRIC = "epoch"
EVAL_PREFIX = "epoch_"
MAX_PAGE = 1000


def record(session: Session, job_id: str, type_: EventType, message: str, *, key: str,
           level: EventLevel = EventLevel.INFO, data: dict[str, Any] | None = None) -> bool:
    """Adds one event to the session's transaction unless the job already has one with `key`;
    True if added. Locks the job's row first (PostgreSQL), so the events of one job commit in
    the order of their ids."""
    bind = session.get_bind()
    dialect = bind.dialect.name
    if dialect == "postgresql":
        session.execute(select(TrainingJob.id).where(TrainingJob.id == job_id).with_for_update())
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    values = {"job_id": job_id, "created_at": utcnow(), "type": type_.value, "level": level.value,
              "message": message, "data": data or {}, "key": key[:200]}
    statement = insert(TrainingEvent).values(**values).on_conflict_do_nothing(index_elements=["job_id", "key"])
    return bool(session.execute(statement).rowcount)


@dataclass(frozen=True)
class EventPage:
    events: list[TrainingEvent]
    has_more: bool


def list_events(session: Session, job_id: str, after: int | None, limit: int) -> EventPage:
    """The job's events after the event `after` (all without it), oldest first, at most `limit`."""
    query = select(TrainingEvent).where(TrainingEvent.job_id == job_id)
    if after is not None:
        query = query.where(TrainingEvent.id > after)
    rows = list(session.scalars(query.order_by(TrainingEvent.id).limit(limit + 1)))
    return EventPage(rows[:limit], len(rows) > limit)


# --- status -----------------------------------------------------------------------------------
def _in_run(job: TrainingJob, key: str) -> str:
    """A job's fact as it happens in its current run: a resumed job (`POST .../resume`) goes
    through its states again in a new run, whose changes are new events."""
    return f"{job.airflow_run_id}:{key}" if job.runs else key


def job_created(session: Session, job: TrainingJob) -> None:
    record(session, job.id, EventType.STATUS, f"Job created: {job.status}", key="status:created",
           data={"from_status": None, "to_status": job.status, "from_stage": None, "to_stage": job.stage})


def state_changed(session: Session, job: TrainingJob, status: str | None, stage: str | None) -> None:
    """A status or stage change of `job` from (`status`, `stage`), with both values."""
    if (status, stage) == (job.status, job.stage):
        return
    parts = []
    if status != job.status:
        parts.append(f"status {status} -> {job.status}")
    if stage != job.stage:
        parts.append(f"stage {stage or '(none)'} -> {job.stage or '(none)'}")
    record(session, job.id, EventType.STATUS, "; ".join(parts).capitalize(),
           key=_in_run(job, f"status:{status}/{stage}->{job.status}/{job.stage}"),
           data={"from_status": status, "to_status": job.status, "from_stage": stage, "to_stage": job.stage})


def _last_state(session: Session, job_id: str) -> tuple[str | None, str | None]:
    """The status and stage of the job's latest status event."""
    data = session.scalars(
        select(TrainingEvent.data).where(TrainingEvent.job_id == job_id, TrainingEvent.type == EventType.STATUS.value)
        .order_by(TrainingEvent.id.desc()).limit(1)
    ).first()
    return (data.get("to_status"), data.get("to_stage")) if data else (None, None)


def stop_requested(session: Session, job: TrainingJob) -> None:
    record(session, job.id, EventType.STOP_REQUESTED, "Stop requested by the owner: the training saves its "
           "partial adapter and exits", key=_in_run(job, "stop_requested"),
           data={"requested_at": job.stop_requested_at.isoformat() if job.stop_requested_at else None})


# --- settling ---------------------------------------------------------------------------------
def job_settled(ctx: TrainingContext, job: TrainingJob) -> None:
    """What a settled (terminal, details cached) job adds: its remaining epochs, its checkpoints,
    the reason it failed or a warning, and the webhook deliveries of its end."""
    follow_epochs(ctx, job, final=True)
    checkpoints(ctx, job)
    status, stage = _last_state(ctx.session, job.id)
    state_changed(ctx.session, job, status, stage)
    if job.status == TrainingStatus.FAILED:
        record(ctx.session, job.id, EventType.ERROR, job.error or "The job failed", key=_in_run(job, "error"),
               level=EventLevel.ERROR, data={"stage": job.stage})
    elif job.status == TrainingStatus.STOPPED and not job.output_path:
        record(ctx.session, job.id, EventType.WARNING,
               "The job was stopped before a partial adapter was saved: nothing of this training can be reused",
               key=_in_run(job, "warning:stopped-without-adapter"), level=EventLevel.WARNING)
    from api.services.webhooks.outbox import training_ended

    training_ended(ctx.session, job, ctx.settings)


def checkpoints(ctx: TrainingContext, job: TrainingJob) -> int:
    """Checkpoint events from the engine's final result (published to S3 once it exited), and
    a warning naming the clips it skipped because they did not decode."""
    if ctx.s3 is None or job.status not in (TrainingStatus.COMPLETED, TrainingStatus.STOPPED, TrainingStatus.FAILED):
        return 0
    try:
        result = ctx.s3.get_json(s3_layout.training_result_key(job.id))
    except S3Unavailable as exc:
        log.warning("job %s: cannot read its result for checkpoint events: %s", job.id, exc)
        return 0
    added = 0
    saved = result.get("checkpoints") if isinstance(result, dict) else None
    for checkpoint in saved if isinstance(saved, list) else []:
        if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("step"), int):
            continue
        name = str(checkpoint.get("name") or f"step-{checkpoint['step']:07d}")
        location = str(checkpoint.get("uri") or f"checkpoints/{name} in the train task's output folder on its "
                       "worker (removed when the job ended; the upload to S3 failed)")
        added += record(ctx.session, job.id, EventType.CHECKPOINT,
                        f"Checkpoint at step {checkpoint['step']} (epoch {checkpoint.get('epoch')}): {location}",
                        key=f"checkpoint:{name}",
                        data={"step": checkpoint["step"], "epoch": checkpoint.get("epoch"), "name": name,
                              "location": location})
    skipped = result.get("skipped_clips") if isinstance(result, dict) else None
    if isinstance(skipped, dict) and skipped:  # clips that did not decode during training (issue 16)
        shown = "; ".join(f"{name} ({reason})" for name, reason in list(skipped.items())[:5])
        added += record(ctx.session, job.id, EventType.WARNING,
                        f"{len(skipped)} clip(s) could not be decoded during training and were skipped: {shown}"
                        f"{' ...' if len(skipped) > 5 else ''}", key="warning:skipped-clips",
                        level=EventLevel.WARNING, data={"count": len(skipped), "skipped_clips": skipped})
    return added


# --- epochs -----------------------------------------------------------------------------------
def _last_epoch(session: Session, job_id: str) -> tuple[int, float]:
    """The step and epoch of the job's latest epoch event ((-1, 0) before any)."""
    data = session.scalars(
        select(TrainingEvent.data).where(TrainingEvent.job_id == job_id, TrainingEvent.type == EventType.EPOCH.value)
        .order_by(TrainingEvent.id.desc()).limit(1)
    ).first()
    return (int(data.get("step", -1)), float(data.get("epoch") or 0)) if data else (-1, 0.0)


def follow_epochs(ctx: TrainingContext, job: TrainingJob, *, final: bool = False) -> int:
    """Epoch events for the epochs the job's MLflow run finished since the last one; returns how
    many were added. While the job runs, reads MLflow only when its latest `epoch` metric passed
    the last recorded epoch end, and stops at an evaluated epoch whose metrics are not logged yet
    (the engine logs them right after that epoch's last step); `final` records what is there."""
    metrics = job.metrics or {}
    current = metrics.get(EPOCH_METRIC)
    if ctx.mlflow is None or not job.mlflow_run_id or (current is None and not final):
        return 0
    eval_keys = sorted(k for k in metrics if k.startswith(EVAL_PREFIX))
    if final and current is None and not eval_keys:
        return 0
    last_step, last_epoch = _last_epoch(ctx.session, job.id)
    if not final and math.floor(float(current) + 1e-6) <= math.floor(last_epoch + 1e-6):
        return 0
    try:
        epochs = ctx.mlflow.get_metric_history(job.mlflow_run_id, EPOCH_METRIC)
        evals = {k[len(EVAL_PREFIX):]: {p.step: p for p in ctx.mlflow.get_metric_history(job.mlflow_run_id, k)}
                 for k in eval_keys}
    except MlflowUnavailable as exc:
        log.warning("job %s: cannot read its epoch metrics: %s", job.id, exc)
        return 0
    params = (job.request or {}).get("training_params") or {}
    return _record_epochs(ctx.session, job, epochs, evals, last_step, final,
                          planned=int(params.get("epochs") or 0), every=int(params.get("eval_every_epochs") or 1))


def _record_epochs(session: Session, job: TrainingJob, epochs: list[MetricPoint],
                   evals: dict[str, dict[int, MetricPoint]], last_step: int, final: bool, planned: int,
                   every: int) -> int:
    epoch_at = {p.step: p.value for p in epochs}
    ends: dict[int, float] = {}  # step -> epoch at that step: whole epochs ended, and every evaluation
    for point in epochs:
        if abs(point.value - round(point.value)) < 1e-6 and round(point.value) >= 1:
            ends.setdefault(point.step, float(round(point.value)))
    for series in evals.values():
        for step in series:
            ends.setdefault(step, epoch_at.get(step, 0.0))
    added = 0
    for step in sorted(s for s in ends if s > last_step):
        epoch = ends[step]
        got = {name: series[step].value for name, series in evals.items() if step in series}
        whole = abs(epoch - round(epoch)) < 1e-6
        due = whole and (round(epoch) % max(every, 1) == 0 or round(epoch) == planned)
        if due and not got and not final:
            break  # its evaluation is still running: this epoch and the later ones next time
        number = round(epoch) if whole else round(epoch, 4)
        shown = ", ".join(f"{k} {v:.4g}" for k, v in sorted(got.items()))
        of = f"/{planned}" if planned else ""
        added += record(session, job.id, EventType.EPOCH,
                        f"Epoch {number}{of} ended at step {step}" + (f": {shown}" if shown else ""),
                        key=f"epoch:{step}", data={"epoch": number, "step": step, "metrics": got})
    return added
