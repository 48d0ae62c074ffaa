"""A training job as the API and the `qlora_training` DAG share it: its request and run conf,
their validation, the Airflow names, and the job's states and stages.

Light: standard library, pydantic (through `training.params`) and the catalog; no torch, no
airflow. A job request is ``{model_id, dataset_id, training_params, output_name}``; the DAG run
conf is flat: ``job_id``, ``user``, ``model_id``, ``dataset_id``, ``output_name``,
``max_runtime_minutes`` and one field per training parameter, resolved (`job_conf()`). Checks:

* the parameters' own types and bounds: `training.params.TrainingParams` (the one definition);
* model-dependent rules (LoRA rank range, allowed target modules, the dataset fits the model
  type): `training.params.model_problems()`; `validate_job_request()` runs both.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Any, Mapping, Sequence

from training import params
from training.catalog import CatalogModel, load_catalog

# --------------------------------------------------------------------------------------------
# Names shared with Airflow

DAG_ID = "qlora_training"
#: XCom keys the train task pushes as soon as the MLflow run exists (read by the API and the
#: operator extra link)
XCOM_MLFLOW_RUN_ID = "mlflow_run_id"
XCOM_MLFLOW_EXPERIMENT_ID = "mlflow_experiment_id"
#: task ids of the DAG, in order
TASK_IDS = ("validate_inputs", "prepare", "train", "evaluate", "register", "finalize")
TRAIN_TASK_ID = "train"


def dag_run_id(job_id: str, resumption: int = 0) -> str:
    """The Airflow run id of a job: derived from the job id, so a retried trigger never starts
    a second run (Airflow answers 409 for a duplicate run id). `resumption` N > 0: the run of
    the job's Nth `POST /v1/trainings/{id}/resume` (`train-{job_id}-resume-N`), which continues
    from its last uploaded checkpoint."""
    return f"train-{job_id}" if not resumption else f"train-{job_id}-resume-{resumption}"


def mlflow_experiment_name(user: str) -> str:
    """One MLflow experiment per user: a user's runs on the same dataset sit side by side and
    compare in the MLflow UI (filter on the `dataset_id` tag); users never see each other's."""
    return f"qlora/{user}"


#: between the user and the output name in a registered model's name: in neither's alphabet
#: (`SAFE_ID_PATTERN`, `SAFE_NAME_PATTERN`: letters, digits, '.', '_', '-'), and allowed by
#: MLflow (which refuses '/' and ':' in model names)
REGISTERED_MODEL_SEPARATOR = "~"


def registered_model_name(user: str, output_name: str) -> str:
    """The MLflow registered model of a job's adapter: `{user}~{output_name}`. The separator is
    in neither part's alphabet, so the name splits back into exactly one (user, output name):
    names of different users never collide (`a.b` + `c` is `a.b~c`, `a` + `b.c` is `a~b.c`)."""
    for field, value, pattern in (("user", user, SAFE_ID_PATTERN), ("output_name", output_name, SAFE_NAME_PATTERN)):
        if problems := check_name(field, value, pattern):
            raise ValueError(problems[0])
    return f"{user}{REGISTERED_MODEL_SEPARATOR}{output_name}"


def registered_model_uri(name: str, version: str | int) -> str:
    """What `mlflow.pyfunc.load_model` takes for a version of a registered model."""
    return f"models:/{name}/{version}"


def registered_model_ui_url(ui_base_url: str, name: str, version: str | int) -> str:
    """The model version's page in the MLflow UI."""
    from urllib.parse import quote

    return f"{ui_base_url.rstrip('/')}/#/models/{quote(name, safe='')}/versions/{version}"


def mlflow_run_ui_url(ui_base_url: str, experiment_id: str, run_id: str) -> str:
    return f"{ui_base_url.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


# --------------------------------------------------------------------------------------------
# Job states and stages


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    #: terminal: a user stopped the job (the run ends failed in Airflow; the API knows it asked)
    #: and its training process is gone
    STOPPED = "stopped"


JOB_STATES: tuple[str, ...] = tuple(s.value for s in JobState)
TERMINAL_STATES = frozenset({JobState.COMPLETED, JobState.FAILED, JobState.STOPPED})


class Stage(StrEnum):
    VALIDATING = "validating"
    DOWNLOADING = "downloading"
    TRAINING = "training"
    EVALUATING = "evaluating"
    REGISTERING = "registering"
    #: a stop was asked; the training process is saving its partial adapter and exiting
    STOPPING = "stopping"
    #: every task succeeded: the adapter is registered and the job is complete
    FINISHED = "finished"


STAGES: tuple[str, ...] = tuple(s.value for s in Stage)
#: the stage each DAG task belongs to
TASK_STAGES: dict[str, Stage] = {
    "validate_inputs": Stage.VALIDATING,
    "prepare": Stage.DOWNLOADING,
    "train": Stage.TRAINING,
    "evaluate": Stage.EVALUATING,
    "register": Stage.REGISTERING,
    "finalize": Stage.REGISTERING,
}

#: Airflow task instance states meaning "this task has started (or is done)"
_TI_STARTED = frozenset({"running", "success", "failed", "up_for_retry", "up_for_reschedule",
                         "restarting", "deferred", "skipped", "upstream_failed"})
#: task instance states meaning "this task's process ran (it may still be running)": a task
#: marked skipped/upstream_failed, or never scheduled, never had one
_TI_RAN = _TI_STARTED - {"skipped", "upstream_failed"}


def job_state(dag_run_state: str | None, *, stop_requested: bool = False,
              task_states: Mapping[str, str | None] | None = None,
              training_exited: bool | None = None) -> JobState | None:
    """Maps an Airflow DagRun state, its task instance states (None: not read) and what is
    known of the training process to a job state; None when what was read cannot tell.

    * DagRun `queued` -> queued; `running` -> running once a task has started, else queued;
      completed once every task of the DAG succeeded (the run's own state follows on the
      scheduler's next pass: seconds under load, issue 16);
    * `success` -> completed; `failed` without a stop request -> failed;
    * `failed` after a stop request (stopping marks the run failed at once, while the train
      task's process still runs until Airflow's next heartbeat kills it): `stopped` once that
      process is gone: the train task never ran, or `training_exited` (the caller's evidence:
      the partial adapter uploaded, or the kill deadline passed). Until then `running`; None
      when neither the task states nor `training_exited` were read (keep the last known state);
      `failed` when the train task had succeeded (the stop came too late; a later task failed);
    * no run (never triggered / deleted) -> failed unless a stop was requested.
    """
    state = (dag_run_state or "").lower()
    if state == "success":
        return JobState.COMPLETED
    if not state:
        return JobState.STOPPED if stop_requested else JobState.FAILED
    if state == "failed":
        if not stop_requested:
            return JobState.FAILED
        if task_states is not None and (task_states.get(TRAIN_TASK_ID) or "").lower() == "success":
            return JobState.FAILED  # trained before the stop took effect: a later task failed on its own
        if task_states is not None and (task_states.get(TRAIN_TASK_ID) or "").lower() not in _TI_RAN:
            return JobState.STOPPED  # stopped before the training started: no process to wait for
        if training_exited is None:
            return None
        return JobState.STOPPED if training_exited else JobState.RUNNING
    if state == "queued":
        return JobState.QUEUED
    if state == "running":
        if task_states is not None and not any(
                (s or "").lower() in _TI_STARTED for s in task_states.values()):
            return JobState.QUEUED
        if task_states is not None and all((task_states.get(t) or "").lower() == "success" for t in TASK_IDS):
            return JobState.COMPLETED  # every task is done: the scheduler marks the run success on its next pass
        return JobState.RUNNING
    raise ValueError(f"unknown Airflow DagRun state {dag_run_state!r}")


def job_stage(task_states: Mapping[str, str | None] | None, *, stopping: bool = False) -> Stage | None:
    """The stage of a run: `stopping` while a requested stop is under way, `finished` once every
    task succeeded, else the stage of the latest task (in DAG order) that ran; None before any
    task runs or when the task states were not read."""
    if stopping:
        return Stage.STOPPING
    stage, states = None, task_states or {}
    if states and all((states.get(t) or "").lower() == "success" for t in TASK_IDS):
        return Stage.FINISHED
    for task_id in TASK_IDS:
        if (states.get(task_id) or "").lower() in _TI_RAN:  # not the ones a failed run skipped
            stage = TASK_STAGES[task_id]
    return stage


# --------------------------------------------------------------------------------------------
# A job request and the DAG run conf (the parameters themselves: training/params.py)

SAFE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
#: ids we put in S3 keys, Airflow run ids and MLflow tags
SAFE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"


#: a job's training time limit when nothing sets one, and the most any job may have (the API's
#: settings choose its own default and ceiling within it: QLORA_MAX_RUNTIME_MINUTES_DEFAULT/_MAX)
DEFAULT_MAX_RUNTIME_MINUTES = 24 * 60
MAX_RUNTIME_MINUTES_LIMIT = 7 * 24 * 60


def job_field_schemas() -> dict[str, dict[str, Any]]:
    """JSON schema of each field of a run's conf that is not a training parameter. The conf is
    flat: these fields beside one field per training parameter (`params.PARAM_NAMES`), so the
    Airflow trigger form shows each parameter with its title."""
    return {
        "job_id": {"type": "string", "pattern": SAFE_ID_PATTERN, "title": "Job id",
                   "description": "the job's id (the API's; used in S3 keys and MLflow tags)"},
        "user": {"type": "string", "pattern": SAFE_ID_PATTERN, "title": "User",
                 "description": "username of the owner of the job (MLflow experiment qlora/{user})"},
        "model_id": {"type": "string", "enum": [m.id for m in load_catalog().models], "title": "Base model",
                     "description": "catalog id of the base model"},
        "dataset_id": {"type": "string", "pattern": SAFE_ID_PATTERN, "title": "Dataset id",
                       "description": "id of a validated dataset"},
        "output_name": {"type": "string", "pattern": SAFE_NAME_PATTERN, "title": "Output name",
                        "description": "name of the adapter (the MLflow run and registered model name)"},
        "max_runtime_minutes": {"type": "integer", "minimum": 1, "maximum": MAX_RUNTIME_MINUTES_LIMIT,
                                "default": DEFAULT_MAX_RUNTIME_MINUTES, "title": "Max runtime (minutes)",
                                "description": "deadline of the train task: past it the training is stopped, "
                                "its partial adapter kept, and the job fails"},
    }


JOB_FIELDS: tuple[str, ...] = ("job_id", "user", "model_id", "dataset_id", "output_name", "max_runtime_minutes")


def job_conf(job_id: str, user: str, model_id: str, dataset_id: str, output_name: str,
             resolved: params.TrainingParams, max_runtime_minutes: int = DEFAULT_MAX_RUNTIME_MINUTES) -> dict[str, Any]:
    """The conf of a job's DAG run: the job's fields and every resolved training parameter."""
    return {"job_id": job_id, "user": user, "model_id": model_id, "dataset_id": dataset_id,
            "output_name": output_name, "max_runtime_minutes": max_runtime_minutes, **resolved.model_dump()}


def max_runtime_problems(value: Any, ceiling: int = MAX_RUNTIME_MINUTES_LIMIT) -> list[str]:
    """`max_runtime_minutes` must be a whole number of minutes from 1 to `ceiling`."""
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= ceiling:
        return []
    return [f"max_runtime_minutes must be a whole number of minutes from 1 to {ceiling}; got {value!r}"]


def conf_params(conf: Mapping[str, Any]) -> dict[str, Any]:
    """The training parameters of a run conf (every conf key that is not a job field)."""
    return {k: v for k, v in conf.items() if k not in JOB_FIELDS}


def check_name(field: str, value: Any, pattern: str = SAFE_NAME_PATTERN) -> list[str]:
    if isinstance(value, str) and re.fullmatch(pattern, value):
        return []
    limit = re.search(r"\{0,(\d+)\}", pattern).group(1)  # type: ignore[union-attr]
    return [f"{field} must be 1 to {int(limit) + 1} characters: letters, digits, '.', '_' or "
            f"'-', starting with a letter or digit; got {value!r}"]


def validate_job_request(model: CatalogModel, dataset_tasks: Sequence[str] | None,
                         training_params: Any, output_name: Any = None) -> list[str]:
    """Every problem of a job request for `model`, as precise sentences (empty: valid): the
    parameters' own bounds, then the model's rules (`params.model_problems`).

    `dataset_tasks` are the tasks the dataset's validation report says it supports (None:
    unknown, not checked); `output_name` is checked when given.
    """
    try:
        parsed = params.parse(training_params)
        problems = []
    except params.InvalidParams as exc:
        parsed, problems = None, list(exc.problems)
    limits = params.ModelLimits.of_catalog(model)
    if parsed is not None:
        problems += params.model_problems(limits, parsed, dataset_tasks)
    else:  # the dataset's fit does not depend on the parameters
        problems += params.model_problems(limits, params.TrainingParams(), dataset_tasks)
    if output_name is not None:
        problems.extend(check_name("output_name", output_name))
    return problems


def validate_job_conf(conf: Mapping[str, Any], dataset_tasks: Sequence[str] | None = None) -> list[str]:
    """Every problem of a whole DAG run conf (ids, model, parameters, output name)."""
    problems: list[str] = []
    for field in ("job_id", "user", "dataset_id"):
        problems.extend(check_name(field, conf.get(field), SAFE_ID_PATTERN))
    problems.extend(max_runtime_problems(conf.get("max_runtime_minutes", DEFAULT_MAX_RUNTIME_MINUTES)))
    model = load_catalog().get(conf.get("model_id")) if isinstance(conf.get("model_id"), str) else None
    if model is None:
        known = ", ".join(m.id for m in load_catalog().models)
        problems.append(f"model_id {conf.get('model_id')!r} is not in the catalog (known: {known})")
        problems.extend(params.problems_of(conf_params(conf)))
        problems.extend(check_name("output_name", conf.get("output_name")))
        return problems
    return (problems + validate_job_request(model, dataset_tasks, conf_params(conf))
            + check_name("output_name", conf.get("output_name")))


def resolve_job_params(model: CatalogModel, training_params: Any) -> params.TrainingParams:
    """The parameters a job on `model` really uses (every default filled in)."""
    return params.resolve(params.ModelLimits.of_catalog(model), training_params)
