"""Training jobs: validate and start (one `qlora_training` run per job), read their state back
from Airflow and MLflow, stop them, and settle them for good once their run ended.

    queued --task started--> running --run success--> completed
       |                        |--run failed--> failed (error from the failed task's log)
       `--stop: run marked failed in Airflow--> running (stage stopping) --process gone--> stopped

A stop marks the run failed at once, but the train task's process runs on until Airflow's next
heartbeat kills it (SIGTERM: the engine saves its partial adapter, the task uploads it, then
SIGKILL a few seconds later). So a stopped job settles `stopped` only once that process is gone:
the train task never ran, its partial adapter is in S3 (uploaded after the engine exited), or
`settings.stop_kill_deadline_s` (QLORA_STOP_KILL_DEADLINE_S) passed. `job_spec.job_state` decides from that evidence.

Live state is read in bulk on the list path: one Airflow list request for every unsettled job
of every user and one MLflow search for the running ones, shared by all requests of the process
for `live_state_ttl_s` (`LiveState`), so N concurrent lists cost about one read per TTL. Per-job
reads (task instances, logs, XCom, the partial adapter) happen only on the detail of an unsettled
job and in the background reconcile loop, which also settles the jobs being stopped. A settled
job (terminal, its log tail, metrics, stage, error and output path cached in the database) never
reads Airflow or MLflow again.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.clients.airflow import AirflowError, DagRun, TaskInstance, TrainingAirflowApi
from api.clients.mlflow import MlflowApi, MlflowUnavailable, RunSummary
from api.clients.s3 import S3Storage, S3Unavailable
from api.core.config import Settings
from api.models import (
    ACTIVE_TRAINING_STATUSES,
    TERMINAL_TRAINING_STATUSES,
    CatalogModelRow,
    Dataset,
    DatasetStage,
    TrainingJob,
    TrainingStatus,
    User,
)
from api.models.base import new_id, utcnow
from api.schemas.trainings import TrainingRequest
from api.services.errors import InvalidInput, NotFound
from api.services.live_cache import LiveCache
from training import job_spec, storage
from training.catalog import load_catalog

log = logging.getLogger(__name__)

#: a job whose run Airflow does not know after this long ends failed
LOST_RUN_GRACE = timedelta(minutes=5)
LOG_TAIL_LINES = 60
_EXCEPTION_LINE = re.compile(r"^(?:[\w.]+\.)?(\w*(?:Exception|Error|Interrupt)): (.+)$")
#: the columns of a job in the list (`GET /v1/trainings`)
SUMMARY_COLUMNS = (
    TrainingJob.id, TrainingJob.model_id, TrainingJob.dataset_id, TrainingJob.output_name, TrainingJob.status,
    TrainingJob.stage, TrainingJob.progress, TrainingJob.created_at, TrainingJob.started_at,
    TrainingJob.completed_at, TrainingJob.output_path,
)


@dataclass(frozen=True)
class RunSnapshot:
    """The Airflow runs of the unsettled jobs at one moment: `covered` run ids were asked for,
    `runs` holds those Airflow knows (a covered id missing from it has no run)."""

    covered: frozenset[str]
    runs: dict[str, DagRun]


@dataclass(frozen=True)
class LiveState:
    """The process-wide caches of the list path's two bulk reads."""

    runs: LiveCache[RunSnapshot]
    summaries: LiveCache[dict[str, RunSummary]]

    @classmethod
    def create(cls, ttl_s: float) -> LiveState:
        return cls(LiveCache("airflow runs of unsettled jobs", ttl_s), LiveCache("mlflow runs of running jobs", ttl_s))


class TrainingService:
    """One request's (or one reconcile pass's) view of the training jobs."""

    def __init__(
        self,
        session: Session,
        s3: S3Storage | None,
        airflow: TrainingAirflowApi,
        mlflow: MlflowApi | None,
        settings: Settings,
        live: LiveState | None = None,
    ) -> None:
        self.session = session
        self.s3 = s3
        self.airflow = airflow
        self.mlflow = mlflow
        self.settings = settings
        self.live = live or LiveState.create(0)

    @property
    def dag_id(self) -> str:
        return self.settings.training_dag_id

    # --- start ------------------------------------------------------------------------------
    def start(self, owner: User, request: TrainingRequest) -> TrainingJob:
        """Validates everything (400 with every problem), creates the job and triggers its run.
        An unreachable Airflow raises `AirflowError` (503) and leaves no job behind."""
        model = load_catalog().get(request.model_id)
        row = self.session.get(CatalogModelRow, request.model_id)
        if model is None or row is None or not row.active:
            raise InvalidInput(f"model_id {request.model_id!r} is not an available model; see GET /v1/models/allowed")
        dataset = self.session.get(Dataset, request.dataset_id)
        if dataset is None or dataset.owner_id != owner.id:
            raise InvalidInput(f"dataset_id {request.dataset_id!r}: dataset not found")
        if dataset.stage != DatasetStage.READY:
            why = f" ({dataset.error})" if dataset.error else ""
            raise InvalidInput(
                f"dataset {dataset.id} is not ready (status {dataset.status}, stage {dataset.stage}){why}; "
                "train on a dataset whose status is ready"
            )
        tasks = (dataset.stats or {}).get("tasks")
        problems = job_spec.validate_job_request(
            model, tasks if isinstance(tasks, list) else None, request.training_params, request.output_name
        )
        if problems:
            raise InvalidInput("; ".join(problems))

        job_id = new_id()
        conf = {
            "job_id": job_id,
            "user": owner.username,  # readable in MLflow: experiment qlora/{username}
            "model_id": model.id,
            "dataset_id": dataset.id,
            "training_params": dict(request.training_params),
            "output_name": request.output_name,
        }
        run_id = job_spec.dag_run_id(job_id)
        job = TrainingJob(
            id=job_id,
            owner_id=owner.id,
            model_id=model.id,
            dataset_id=dataset.id,
            status=TrainingStatus.QUEUED.value,
            request={k: conf[k] for k in ("model_id", "dataset_id", "training_params", "output_name")},
            output_name=request.output_name,
            airflow_run_id=run_id,
            progress=0.0,
        )
        self.session.add(job)
        self.session.flush()
        try:
            self.airflow.trigger_dag_run(self.dag_id, run_id, conf)
        except AirflowError:
            self.session.rollback()  # no job without a run
            raise
        self.session.commit()
        return job

    # --- reads ------------------------------------------------------------------------------
    def owned(self, owner: User, job_id: str) -> TrainingJob:
        job = self.session.get(TrainingJob, job_id)
        if job is None or job.owner_id != owner.id:
            raise NotFound("Training job not found")
        return job

    def list(self, owner: User, limit: int | None = None, offset: int = 0) -> list[dict[str, Any]]:
        """The owner's jobs (`SUMMARY_COLUMNS`, one query), newest first, optionally one page;
        the unsettled ones on it refreshed from the shared live state (no remote call of its own
        unless the state expired)."""
        query = (
            select(*SUMMARY_COLUMNS).where(TrainingJob.owner_id == owner.id)
            .order_by(TrainingJob.created_at.desc(), TrainingJob.id).offset(offset).limit(limit)
        )
        rows = [row._asdict() for row in self.session.execute(query)]
        active_ids = [r["id"] for r in rows if r["status"] in ACTIVE_TRAINING_STATUSES]
        if active_ids:
            active = self.session.scalars(select(TrainingJob).where(TrainingJob.id.in_(active_ids))).all()
            self.refresh_live(active)
            fresh = {job.id: {c.key: getattr(job, c.key) for c in SUMMARY_COLUMNS} for job in active}
            rows = [fresh.get(r["id"], r) for r in rows]
        return rows

    def refresh_live(self, jobs: Sequence[TrainingJob]) -> int:
        """Applies the shared live state (`LiveState`) to unsettled `jobs`; outside failures
        with no earlier state to serve are logged and leave the jobs as they were."""
        try:
            snapshot = self.live.runs.get(self._read_live_runs)
        except AirflowError as exc:
            log.warning("cannot refresh %d training jobs from Airflow: %s", len(jobs), exc)
            return 0
        now = utcnow()
        changed = sum(
            self._apply_run(job, snapshot.runs.get(self._run_id(job)), None, now)
            for job in jobs if job.status in ACTIVE_TRAINING_STATUSES and self._run_id(job) in snapshot.covered
        )
        running = [j for j in jobs if j.status == TrainingStatus.RUNNING and j.mlflow_run_id]
        if running and self.mlflow is not None:
            try:
                summaries = self.live.summaries.get(self._read_live_summaries)
            except MlflowUnavailable as exc:
                log.warning("cannot read %d MLflow runs: %s", len(running), exc)
                summaries = {}
            changed += sum(self._apply_summary(j, s) for j in running if (s := summaries.get(j.mlflow_run_id or "")))
        if changed:
            self.session.commit()
        return changed

    def _read_live_runs(self) -> RunSnapshot:
        """The Airflow runs of every unsettled job (all users): one request per 100 jobs."""
        rows = self.session.execute(
            select(TrainingJob.id, TrainingJob.airflow_run_id).where(TrainingJob.status.in_(ACTIVE_TRAINING_STATUSES))
        ).all()
        run_ids = sorted({run_id or job_spec.dag_run_id(job_id) for job_id, run_id in rows})
        return RunSnapshot(frozenset(run_ids), self.airflow.list_dag_runs(self.dag_id, run_ids) if run_ids else {})

    def _read_live_summaries(self) -> dict[str, RunSummary]:
        """The MLflow runs of every running job whose run is known (all users): one search per 100."""
        assert self.mlflow is not None
        rows = self.session.execute(
            select(TrainingJob.mlflow_run_id, TrainingJob.mlflow_experiment_id).where(
                TrainingJob.status == TrainingStatus.RUNNING.value,
                TrainingJob.mlflow_run_id.is_not(None), TrainingJob.mlflow_experiment_id.is_not(None),
            )
        ).all()
        runs = {run_id: experiment_id for run_id, experiment_id in rows}
        return self.mlflow.get_runs(runs) if runs else {}

    def refresh_active(self, jobs: Sequence[TrainingJob]) -> int:
        """Status, start/end times and progress of queued/running jobs, read now (the reconcile
        loop): ONE Airflow request (and one MLflow search for the running ones). Outside failures
        are logged and leave the jobs as they were. Returns how many changed."""
        active = [j for j in jobs if j.status in ACTIVE_TRAINING_STATUSES]
        if not active:
            return 0
        try:
            runs = self.airflow.list_dag_runs(self.dag_id, [self._run_id(j) for j in active])
        except AirflowError as exc:
            log.warning("cannot refresh %d training jobs from Airflow: %s", len(active), exc)
            return 0
        changed = 0
        now = utcnow()
        for job in active:
            changed += self._apply_run(job, runs.get(self._run_id(job)), None, now)
        changed += self._refresh_progress([j for j in active if j.status == TrainingStatus.RUNNING])
        if changed:
            self.session.commit()
        return changed

    def detail(self, job: TrainingJob) -> dict[str, Any]:
        """The extras of the detail view (logs, ETA). A settled job's come from the database
        alone; an unsettled one is refreshed from its run (task instances, XCom, MLflow) first,
        and settled if its run ended."""
        if self._is_settled(job):
            return {"logs": job.log_tail, "eta_seconds": None}
        extras: dict[str, Any] = {"logs": "", "eta_seconds": None}
        tis: dict[str, TaskInstance] = {}
        try:
            if job.status in ACTIVE_TRAINING_STATUSES or job.settled_at is None:
                tis = self._refresh_one(job)
                if job.status == TrainingStatus.RUNNING:
                    self._find_mlflow_run(job, tis)
                    summary = self._refresh_progress([job], single=True)
                    if job.stop_requested_at is None:
                        extras["eta_seconds"] = self._eta(job, tis, summary)
            else:  # settled before log tails were cached: read it once
                tis = self.airflow.list_task_instances(self.dag_id, self._run_id(job))
            if self._is_settled(job):
                extras["logs"] = job.log_tail
            else:
                extras["logs"] = self._logs(job, tis)
                if job.settled_at is not None:
                    job.log_tail = extras["logs"]
        except AirflowError as exc:
            log.warning("cannot read job %s from Airflow: %s", job.id, exc)
            extras["logs"] = "(logs unavailable: the pipeline service (Airflow) cannot be reached)"
        # always: the queries above autoflush, so `session.dirty` can be empty with changes pending
        self.session.commit()
        return extras

    # --- stop -------------------------------------------------------------------------------
    def stop(self, owner: User, job_id: str) -> TrainingJob:
        """Records the request and marks the run failed (Airflow then kills the train task:
        SIGTERM, the engine saves its partial adapter). Asking again while the job is stopping
        repeats the (idempotent) request; a terminal job is a 400."""
        job = self.owned(owner, job_id)
        if job.status in ACTIVE_TRAINING_STATUSES:
            run = self.airflow.get_dag_run(self.dag_id, self._run_id(job))
            self._apply_run(job, run, None, utcnow())
        if job.status not in ACTIVE_TRAINING_STATUSES:
            self.session.commit()
            raise InvalidInput(f"Job {job.id} is {job.status}: only queued or running jobs can be stopped")
        if job.stop_requested_at is None:
            job.stop_requested_at = utcnow()
            self.session.commit()  # recorded first: the failed run must read as stopped
        # Airflow kills the running task (SIGTERM: the engine saves its partial adapter)
        self.airflow.set_dag_run_state(self.dag_id, self._run_id(job), "failed")
        return job

    # --- reconciliation ---------------------------------------------------------------------
    def reconcile(self, batch: int = 500, settle_batch: int = 20) -> int:
        """One background pass: refresh every unsettled job in bulk, find the MLflow runs of
        running jobs, and settle (error, metrics, output path) jobs whose run ended."""
        active = self.session.scalars(
            select(TrainingJob).where(TrainingJob.status.in_(ACTIVE_TRAINING_STATUSES))
            .order_by(TrainingJob.updated_at).limit(batch)
        ).all()
        changed = self.refresh_active(active)
        # jobs being stopped: the bulk read cannot tell whether their training process is gone
        for job in [j for j in active if j.stop_requested_at is not None
                    and j.status in ACTIVE_TRAINING_STATUSES][:settle_batch]:
            try:
                self._refresh_one(job)
                changed += int(job.status in TERMINAL_TRAINING_STATUSES)
            except AirflowError as exc:
                log.warning("cannot read the stop of job %s: %s", job.id, exc)
        for job in [j for j in active if j.status == TrainingStatus.RUNNING and not j.mlflow_run_id][:settle_batch]:
            try:
                self._find_mlflow_run(job, None)
            except AirflowError as exc:
                log.warning("cannot read the MLflow run id of job %s: %s", job.id, exc)
        unsettled = self.session.scalars(
            select(TrainingJob).where(
                TrainingJob.status.in_(TERMINAL_TRAINING_STATUSES), TrainingJob.settled_at.is_(None)
            ).limit(settle_batch)
        ).all()
        for job in unsettled:
            try:
                run = self.airflow.get_dag_run(self.dag_id, self._run_id(job))
                if run is None:
                    job.settled_at, job.log_tail = utcnow(), job.log_tail or ""
                else:
                    self._settle(job, run, self.airflow.list_task_instances(self.dag_id, self._run_id(job)))
                changed += 1
            except AirflowError as exc:
                log.warning("cannot settle job %s: %s", job.id, exc)
                break
        self.session.commit()  # unconditionally: autoflush leaves `session.dirty` empty
        return changed

    # --- internals ----------------------------------------------------------------------------
    @staticmethod
    def _is_settled(job: TrainingJob) -> bool:
        """Terminal with every detail cached: nothing about it is read from outside again."""
        return job.status in TERMINAL_TRAINING_STATUSES and job.settled_at is not None and job.log_tail is not None

    @staticmethod
    def _run_id(job: TrainingJob) -> str:
        return job.airflow_run_id or job_spec.dag_run_id(job.id)

    def _refresh_one(self, job: TrainingJob) -> dict[str, TaskInstance]:
        """Reads one job's run and task instances, applies them, and settles the job if its run
        ended; returns the task instances. Raises `AirflowError`."""
        run = self.airflow.get_dag_run(self.dag_id, self._run_id(job))
        tis = self.airflow.list_task_instances(self.dag_id, self._run_id(job)) if run else {}
        self._apply_run(job, run, tis, utcnow())
        if job.status in TERMINAL_TRAINING_STATUSES and run is not None and job.settled_at is None:
            self._settle(job, run, tis)
        return tis

    def _apply_run(
        self, job: TrainingJob, run: DagRun | None, tis: dict[str, TaskInstance] | None, now: datetime
    ) -> int:
        """Maps the run (and, when read, its task instances and the progress of a requested stop)
        onto the job; 1 if it changed. Without task instances (the list path) a stop in flight
        keeps the job's last known status."""
        before = (job.status, job.stage, job.started_at, job.completed_at)
        if job.status in TERMINAL_TRAINING_STATUSES:
            return 0
        if run is None:
            created = job.created_at
            if job.stop_requested_at is not None:
                job.status, job.completed_at = TrainingStatus.STOPPED.value, now
            elif created is not None and now - created > LOST_RUN_GRACE:
                job.status, job.completed_at = TrainingStatus.FAILED.value, now
                job.error = f"The Airflow run {self._run_id(job)} of this job no longer exists"
                job.settled_at, job.log_tail = now, ""
            return int(before != (job.status, job.stage, job.started_at, job.completed_at))
        states = {t: ti.state for t, ti in tis.items()} if tis is not None else None
        stop_requested = job.stop_requested_at is not None
        exited = self._training_exited(job, now) if stop_requested and states is not None else None
        try:
            state = job_spec.job_state(
                run.state, stop_requested=stop_requested, task_states=states, training_exited=exited
            )
        except ValueError:
            log.warning("job %s: unexpected Airflow run state %r", job.id, run.state)
            return 0
        if state is None:  # a stop in flight, not readable in bulk: keep the last known state
            job.stage = job_spec.Stage.STOPPING.value
            return int(before != (job.status, job.stage, job.started_at, job.completed_at))
        job.status = state.value
        stopping = stop_requested and state not in job_spec.TERMINAL_STATES
        if (stage := job_spec.job_stage(states, stopping=stopping)) is not None:
            job.stage = stage.value
        if state is not job_spec.JobState.QUEUED and job.started_at is None:
            job.started_at = run.start_date or now
        if state in job_spec.TERMINAL_STATES:
            job.completed_at = run.end_date or now
            if state is job_spec.JobState.COMPLETED:
                job.progress = 1.0
                job.output_path = storage.s3_uri(self.settings.s3_bucket, storage.adapter_prefix(job.id))
        return int(before != (job.status, job.stage, job.started_at, job.completed_at))

    def _find_mlflow_run(self, job: TrainingJob, tis: dict[str, TaskInstance] | None) -> None:
        """The MLflow run id the train task pushes to XCom as soon as the run exists."""
        if job.mlflow_run_id:
            return
        if tis is not None and (tis.get(job_spec.TRAIN_TASK_ID) is None or tis[job_spec.TRAIN_TASK_ID].state is None):
            return
        run_id = self.airflow.get_xcom(self.dag_id, self._run_id(job), job_spec.TRAIN_TASK_ID, job_spec.XCOM_MLFLOW_RUN_ID)
        if isinstance(run_id, str) and run_id:
            job.mlflow_run_id = run_id
            exp = self.airflow.get_xcom(
                self.dag_id, self._run_id(job), job_spec.TRAIN_TASK_ID, job_spec.XCOM_MLFLOW_EXPERIMENT_ID
            )
            job.mlflow_experiment_id = str(exp) if exp else None

    def _refresh_progress(self, jobs: Sequence[TrainingJob], single: bool = False) -> Any:
        """Progress (monotonic) and latest metrics from MLflow: one request for all `jobs`."""
        tracked = [j for j in jobs if j.mlflow_run_id]
        if self.mlflow is None or not tracked:
            return None if single else 0
        try:
            if single or any(not j.mlflow_experiment_id for j in tracked):
                summaries = {j.mlflow_run_id: self.mlflow.get_run(j.mlflow_run_id) for j in tracked}
            else:
                summaries = self.mlflow.get_runs({j.mlflow_run_id: j.mlflow_experiment_id for j in tracked})
        except MlflowUnavailable as exc:
            log.warning("cannot read %d MLflow runs: %s", len(tracked), exc)
            return None if single else 0
        changed = 0
        for job in tracked:
            summary = summaries.get(job.mlflow_run_id or "")
            if summary is None:
                continue
            changed += self._apply_summary(job, summary)
        return summaries.get(tracked[0].mlflow_run_id) if single else changed

    @staticmethod
    def _apply_summary(job: TrainingJob, summary: RunSummary) -> int:
        before = (job.progress, job.metrics)
        job.mlflow_experiment_id = job.mlflow_experiment_id or summary.experiment_id
        if summary.progress is not None:
            job.progress = max(job.progress or 0.0, summary.progress)
        if summary.metrics:
            job.metrics = {**(job.metrics or {}), **summary.metrics}
        return int(before != (job.progress, job.metrics))

    def _settle(self, job: TrainingJob, run: DagRun, tis: dict[str, TaskInstance]) -> None:
        """Caches a terminal job's details: MLflow run and metrics, stage, output path, error and
        log tail (left unset, to be read once more, when the log cannot be read now)."""
        if (stage := job_spec.job_stage({t: ti.state for t, ti in tis.items()})) is not None:
            job.stage = stage.value
        self._find_mlflow_run(job, tis)
        if self.mlflow is not None and job.mlflow_run_id:
            try:
                summary = self.mlflow.get_run(job.mlflow_run_id)
                if summary is not None:
                    self._apply_summary(job, summary)
            except MlflowUnavailable as exc:
                log.warning("job %s settled without MLflow metrics: %s", job.id, exc)
        if job.status == TrainingStatus.COMPLETED:
            result = self.airflow.get_xcom(self.dag_id, self._run_id(job), "finalize")
            if isinstance(result, dict):
                job.output_path = result.get("output_path") or job.output_path
            job.progress = 1.0
        elif job.status == TrainingStatus.STOPPED:
            job.output_path = self._partial_adapter(job)
        elif job.status == TrainingStatus.FAILED and not job.error:
            job.error = self._failure_reason(job, run, tis)
        try:
            job.log_tail = self._logs(job, tis)
        except AirflowError as exc:
            log.warning("job %s settled without its log tail: %s", job.id, exc)
        job.settled_at = utcnow()

    def _partial_adapter(self, job: TrainingJob) -> str | None:
        """The S3 URI of the adapter a stopped job's train task uploaded, once it is complete
        (`adapter_config.json` is uploaded last, after the engine exited); else None."""
        prefix = storage.adapter_prefix(job.id)
        try:
            if self.s3 is not None and self.s3.head(prefix + "adapter_config.json") is not None:
                return storage.s3_uri(self.settings.s3_bucket, prefix)
        except S3Unavailable as exc:
            log.warning("cannot check the partial adapter of job %s: %s", job.id, exc)
        return None

    def _training_exited(self, job: TrainingJob, now: datetime) -> bool:
        """Whether the training process of a job being stopped is surely gone: its partial
        adapter is uploaded (the task does so after the engine exited), or the kill deadline
        passed (Airflow SIGKILLs the task, the engine dies with it)."""
        asked = job.stop_requested_at
        if asked is not None and now - asked >= timedelta(seconds=self.settings.stop_kill_deadline_s):
            return True
        return self._partial_adapter(job) is not None

    def _failure_reason(self, job: TrainingJob, run: DagRun, tis: dict[str, TaskInstance]) -> str:
        failed = [t for t in job_spec.TASK_IDS if t in tis and (tis[t].state or "") == "failed"]
        if not failed:
            return f"The Airflow run {run.run_id} ended failed before its tasks ran (marked failed in Airflow)"
        task = tis[failed[0]]
        reason = None
        try:
            for line in reversed(self.airflow.get_task_log(self.dag_id, run.run_id, task.task_id, task.try_number)):
                if match := _EXCEPTION_LINE.match(line.strip()):
                    reason = match.group(2).strip()
                    break
        except AirflowError as exc:
            log.warning("cannot read the log of job %s: %s", job.id, exc)
        stage = job_spec.TASK_STAGES.get(task.task_id)
        where = f"task {task.task_id}" + (f" ({stage.value})" if stage else "")
        return f"{where} failed: {reason}" if reason else f"{where} failed without an error message (the worker "\
            "process was lost or killed); see the task log in Airflow"

    def _logs(self, job: TrainingJob, tis: dict[str, TaskInstance]) -> str:
        """The last lines of the train task's log (or of the latest task that started)."""
        started = [t for t in job_spec.TASK_IDS if t in tis and tis[t].try_number > 0 and tis[t].state]
        if not started:
            return ""
        task = tis[job_spec.TRAIN_TASK_ID] if job_spec.TRAIN_TASK_ID in started else tis[started[-1]]
        lines = self.airflow.get_task_log(self.dag_id, self._run_id(job), task.task_id, task.try_number)
        return "\n".join(lines[-LOG_TAIL_LINES:])

    @staticmethod
    def _eta(job: TrainingJob, tis: dict[str, TaskInstance], summary: RunSummary | None) -> float | None:
        train = tis.get(job_spec.TRAIN_TASK_ID)
        started = train.start_date if train is not None else None
        if started is None and summary is not None and summary.start_time_ms:
            started = datetime.fromtimestamp(summary.start_time_ms / 1000, tz=utcnow().tzinfo)
        progress = job.progress or 0.0
        if started is None or not 0 < progress < 1:
            return None
        elapsed = (utcnow() - started).total_seconds()  # type: ignore[operator]
        return round(max(elapsed, 0.0) * (1 - progress) / progress, 1)


def reconcile_trainings(
    session: Session, s3: S3Storage | None, airflow: TrainingAirflowApi, mlflow: MlflowApi | None, settings: Settings
) -> int:
    return TrainingService(session, s3, airflow, mlflow, settings).reconcile()
