"""The events of training jobs: written where the job's state changes are applied (`sync`,
`start_stop`, the reconcile pass), read by `GET /v1/trainings/{job_id}/events`.

    status          creation (-> queued) and every later status or stage change, both values;
                    the end (completed/failed/stopped) once the job settled, after its last
                    epochs and checkpoints, so the events read in the order things happened
    stop_requested  the owner asked for the stop
    epoch           the end of an epoch with its held-out metrics: read from the MLflow run's
                    `epoch` and `epoch_*` metric histories (the engine logs `epoch_<metric>` at the
                    step that ends an evaluated epoch), while the job runs and again when it settles
    checkpoint      a checkpoint the engine saved (step, epoch, folder): read while the job runs
                    from the `result.json` the train task publishes to S3 as it changes
                    (`training.s3.training_result_key`), and once more from its final copy when the
                    job settles; each names its S3 folder. Recorded once per save (key: folder name
                    and save time), in step order with the epochs (`follow`)
    warning/error   what a user can act on: the reason a job failed, a stop that saved no adapter,
                    clips the training skipped because they did not decode: read while the job runs
                    from the same published `result.json` (`skipped_clips`), one event each time
                    its count grew, naming the clips new since the last such event and the count so
                    far (key: the count in this run), and once more when the job settles

Events are written by whoever applies a change: the background reconcile pass (every
`reconcile_interval_s`, QLORA_RECONCILE_INTERVAL_S, 15 s by default) records them unwatched, and a
client reading the job's detail records what it sees at once. So an event is visible in
`GET .../events` at most one reconcile interval (plus the pass's own reads) after the change.

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


def _lock_job(session: Session, job_id: str) -> str:
    """Locks the job's row until the transaction ends (PostgreSQL; SQLite serializes its writers
    anyway), so events read after it are all that were committed; returns the dialect's name."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        session.execute(select(TrainingJob.id).where(TrainingJob.id == job_id).with_for_update())
    return dialect


def record(session: Session, job_id: str, type_: EventType, message: str, *, key: str,
           level: EventLevel = EventLevel.INFO, data: dict[str, Any] | None = None) -> bool:
    """Adds one event to the session's transaction unless the job already has one with `key`;
    True if added. Locks the job's row first (PostgreSQL), so the events of one job commit in
    the order of their ids."""
    dialect = _lock_job(session, job_id)
    if dialect == "postgresql":
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
    follow(ctx, job, final=True)  # with the clips skipped since the last pass
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


def _published_result(ctx: TrainingContext, job: TrainingJob) -> dict[str, Any] | None:
    """The engine's `result.json` as the train task last published it (live or final); None when
    there is none yet or S3 cannot be read now."""
    if ctx.s3 is None:
        return None
    try:
        result = ctx.s3.get_json(s3_layout.training_result_key(job.id))
    except S3Unavailable as exc:
        log.warning("job %s: cannot read its published result: %s", job.id, exc)
        return None
    return result if isinstance(result, dict) else None


def _checkpoint_key(checkpoint: dict[str, Any], name: str) -> str:
    """One save of one checkpoint: its folder (named by step) and when it was saved, so a resumed
    run that lists the earlier runs' checkpoints again adds nothing, and a step saved again by a
    later run is a new event."""
    saved_at = checkpoint.get("created_at")
    return f"checkpoint:{name}" + (f"@{saved_at}" if isinstance(saved_at, str) and saved_at else "")


@dataclass(frozen=True)
class _Pending:
    """An event to record, placed by its step (an epoch's end before a checkpoint of the same step:
    the engine saves it after that epoch's evaluation)."""

    step: int
    order: int
    type: EventType
    message: str
    key: str
    data: dict[str, Any]


def _new_checkpoints(session: Session, job: TrainingJob, result: dict[str, Any] | None) -> list[_Pending]:
    saved = result.get("checkpoints") if result else None
    if not isinstance(saved, list) or not saved:
        return []
    recorded = set(session.scalars(select(TrainingEvent.key).where(
        TrainingEvent.job_id == job.id, TrainingEvent.type == EventType.CHECKPOINT.value)))
    out = []
    for checkpoint in saved:
        if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("step"), int):
            continue
        name = str(checkpoint.get("name") or f"step-{checkpoint['step']:07d}")
        key = _checkpoint_key(checkpoint, name)[:200]
        if key in recorded or f"checkpoint:{name}" in recorded:  # (older events: keyed by name alone)
            continue
        location = str(checkpoint.get("uri") or f"checkpoints/{name} in the train task's output folder on its "
                       "worker (not uploaded to S3)")
        out.append(_Pending(checkpoint["step"], 1, EventType.CHECKPOINT,
                            f"Checkpoint at step {checkpoint['step']} (epoch {checkpoint.get('epoch')}): {location}",
                            key, {"step": checkpoint["step"], "epoch": checkpoint.get("epoch"), "name": name,
                                  "location": location}))
    return out


SKIPPED_CLIPS_KEY = "warning:skipped-clips"
SHOWN_CLIPS = 5  # clips named in a message; the event's data names all of them


def skipped_clips(session: Session, job: TrainingJob, result: dict[str, Any] | None) -> int:
    """A warning when the published result names clips the training skipped because they did not
    decode (issue 16) that no earlier event named: one event per growth of the count, naming the
    new clips and the count so far, so a user following the events learns of each skip within a
    pass. Key: the count in this run, read under the job's row lock (two passes or readers that
    see the same or different snapshots record each clip once); a resumed run that skips a clip
    again names it no more."""
    skipped = result.get("skipped_clips") if result else None
    if not isinstance(skipped, dict) or not skipped:
        return 0
    _lock_job(session, job.id)
    named: set[str] = set()
    for data in session.scalars(select(TrainingEvent.data).where(
            TrainingEvent.job_id == job.id, TrainingEvent.type == EventType.WARNING.value,
            TrainingEvent.key.like(f"%{SKIPPED_CLIPS_KEY}%"))):
        named.update((data or {}).get("new_clips") or (data or {}).get("skipped_clips") or {})
    new = {str(name): str(reason) for name, reason in skipped.items() if str(name) not in named}
    if not new:
        return 0
    count = len(skipped)
    shown = "; ".join(f"{name} ({reason})" for name, reason in list(new.items())[:SHOWN_CLIPS])
    more = " ..." if len(new) > SHOWN_CLIPS else ""
    if named:
        message = (f"{len(new)} more clip(s) could not be decoded during training and were skipped "
                   f"({count} so far): {shown}{more}")
    else:
        message = f"{len(new)} clip(s) could not be decoded during training and were skipped: {shown}{more}"
    return int(record(session, job.id, EventType.WARNING, message, key=_in_run(job, f"{SKIPPED_CLIPS_KEY}:{count}"),
                      level=EventLevel.WARNING, data={"count": count, "new_clips": new}))


def follow(ctx: TrainingContext, job: TrainingJob, *, final: bool = False) -> int:
    """Records the epochs and checkpoints of the job's run since the last ones, in the order of
    their steps; returns how many were added. While the job runs (the reconcile pass): the
    checkpoints of the manifest the train task publishes live, each once the epochs before it
    are recorded (a checkpoint past an epoch end whose evaluation is not logged yet waits for
    it, and every new one waits while MLflow cannot be read: the engine logs its metrics before
    it lists a checkpoint). `final` (the job settled): everything that is there. Then a warning
    for the clips skipped since the last one (`skipped_clips`)."""
    result = _published_result(ctx, job)
    fresh = _new_checkpoints(ctx.session, job, result)
    epochs, blocked, known = _epoch_events(ctx, job, final=final, force=bool(fresh))
    if not known and not final:
        fresh = []
    elif blocked is not None:
        fresh = [c for c in fresh if c.step < blocked]
    added = 0
    for item in sorted([*epochs, *fresh], key=lambda p: (p.step, p.order)):
        added += record(ctx.session, job.id, item.type, item.message, key=item.key, data=item.data)
    return added + skipped_clips(ctx.session, job, result)


# --- epochs -----------------------------------------------------------------------------------
def _last_epoch(session: Session, job_id: str) -> tuple[int, float]:
    """The step and epoch of the job's latest epoch event ((-1, 0) before any)."""
    data = session.scalars(
        select(TrainingEvent.data).where(TrainingEvent.job_id == job_id, TrainingEvent.type == EventType.EPOCH.value)
        .order_by(TrainingEvent.id.desc()).limit(1)
    ).first()
    return (int(data.get("step", -1)), float(data.get("epoch") or 0)) if data else (-1, 0.0)


def _epoch_events(ctx: TrainingContext, job: TrainingJob, *, final: bool,
                  force: bool) -> tuple[list[_Pending], int | None, bool]:
    """The epochs the job's MLflow run finished since the last epoch event; with the step of an
    evaluated epoch whose metrics are not logged yet (None if none: the engine logs them right
    after that epoch's last step), and whether the epochs up to now are known (False when MLflow
    could not be read or the run is not known yet). While the job runs, MLflow is read only when
    its latest `epoch` metric passed the last recorded epoch end, or with `force` (a new
    checkpoint to place); `final` records what is there."""
    metrics = job.metrics or {}
    current = metrics.get(EPOCH_METRIC)
    if ctx.mlflow is None:
        return [], None, True  # no epochs to place anything after
    if not job.mlflow_run_id:
        return [], None, final
    eval_keys = sorted(k for k in metrics if k.startswith(EVAL_PREFIX))
    if final and current is None and not eval_keys:
        return [], None, True
    last_step, last_epoch = _last_epoch(ctx.session, job.id)
    if not final and not force and (
            current is None or math.floor(float(current) + 1e-6) <= math.floor(last_epoch + 1e-6)):
        return [], None, True
    try:
        epochs = ctx.mlflow.get_metric_history(job.mlflow_run_id, EPOCH_METRIC)
        evals = {k[len(EVAL_PREFIX):]: {p.step: p for p in ctx.mlflow.get_metric_history(job.mlflow_run_id, k)}
                 for k in eval_keys}
    except MlflowUnavailable as exc:
        log.warning("job %s: cannot read its epoch metrics: %s", job.id, exc)
        return [], None, False
    params = (job.request or {}).get("training_params") or {}
    pending, blocked = _epoch_ends(epochs, evals, last_step, final, planned=int(params.get("epochs") or 0),
                                   every=int(params.get("eval_every_epochs") or 1))
    return pending, blocked, True


def _epoch_ends(epochs: list[MetricPoint], evals: dict[str, dict[int, MetricPoint]], last_step: int, final: bool,
                planned: int, every: int) -> tuple[list[_Pending], int | None]:
    epoch_at = {p.step: p.value for p in epochs}
    ends: dict[int, float] = {}  # step -> epoch at that step: whole epochs ended, and every evaluation
    for point in epochs:
        if abs(point.value - round(point.value)) < 1e-6 and round(point.value) >= 1:
            ends.setdefault(point.step, float(round(point.value)))
    for series in evals.values():
        for step in series:
            ends.setdefault(step, epoch_at.get(step, 0.0))
    out: list[_Pending] = []
    for step in sorted(s for s in ends if s > last_step):
        epoch = ends[step]
        got = {name: series[step].value for name, series in evals.items() if step in series}
        whole = abs(epoch - round(epoch)) < 1e-6
        due = whole and (round(epoch) % max(every, 1) == 0 or round(epoch) == planned)
        if due and not got and not final:
            return out, step  # its evaluation is still running: this epoch and the later ones next time
        number = round(epoch) if whole else round(epoch, 4)
        shown = ", ".join(f"{k} {v:.4g}" for k, v in sorted(got.items()))
        of = f"/{planned}" if planned else ""
        out.append(_Pending(step, 0, EventType.EPOCH, f"Epoch {number}{of} ended at step {step}"
                            + (f": {shown}" if shown else ""), f"epoch:{step}",
                            {"epoch": number, "step": step, "metrics": got}))
    return out, None
