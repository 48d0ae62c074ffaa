"""What a job's task logs in Airflow say: the tail shown in the detail, and the reason a failed
job gives (the last exception line of its failed task)."""

from __future__ import annotations

import logging
import re

from api.clients.airflow import AirflowError, AirflowUnavailable, DagRun, TaskInstance
from api.models import TrainingJob
from api.services.trainings.context import TrainingContext, run_id
from training import job_spec

log = logging.getLogger(__name__)

LOG_TAIL_LINES = 60
#: the last line of a traceback: `[module.]Name: message`, Name one of the exception names the
#: tasks raise (Airflow's, Python's, the pipeline's EngineLost/EngineFailed/TrainingEnded)
_EXCEPTION_LINE = re.compile(r"^(?:[\w.]+\.)?(\w*(?:Exception|Error|Interrupt|Lost|Failed|Ended)): (.+)$")


def log_tail(ctx: TrainingContext, job: TrainingJob, tis: dict[str, TaskInstance]) -> str:
    """The last lines of the train task's log (or of the latest task that started). Raises
    `AirflowError`."""
    started = [t for t in job_spec.TASK_IDS if t in tis and tis[t].try_number > 0 and tis[t].state]
    if not started:
        return ""
    task = tis[job_spec.TRAIN_TASK_ID] if job_spec.TRAIN_TASK_ID in started else tis[started[-1]]
    lines = ctx.airflow.get_task_log(ctx.dag_id, run_id(job), task.task_id, task.try_number)
    return "\n".join(lines[-LOG_TAIL_LINES:])


def failure_reason(ctx: TrainingContext, job: TrainingJob, run: DagRun, tis: dict[str, TaskInstance]) -> str:
    """Why a failed job failed: its first failed task (and stage) with the last exception line
    of that task's log, or what is known when there is none. Raises `AirflowUnavailable` when
    the log cannot be read now (a reason read from no log would be cached for good)."""
    failed = [t for t in job_spec.TASK_IDS if t in tis and (tis[t].state or "") == "failed"]
    if not failed:
        return f"The Airflow run {run.run_id} ended failed before its tasks ran (marked failed in Airflow)"
    task = tis[failed[0]]
    reason = None
    try:
        for line in reversed(ctx.airflow.get_task_log(ctx.dag_id, run.run_id, task.task_id, task.try_number)):
            if match := _EXCEPTION_LINE.match(line.strip()):
                reason = match.group(2).strip()
                break
    except AirflowUnavailable:
        raise  # no verdict from a log that could not be read now: the job settles on a later read
    except AirflowError as exc:
        log.warning("cannot read the log of job %s: %s", job.id, exc)
    stage = job_spec.TASK_STAGES.get(task.task_id)
    where = f"task {task.task_id}" + (f" ({stage.value})" if stage else "")
    return f"{where} failed: {reason}" if reason else f"{where} failed without an error message (the worker "\
        "process was lost or killed); see the task log in Airflow"
