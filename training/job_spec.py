"""The one definition of a training job: its request, its validation, its states and stages.

Shared by the API (request validation, status read-back) and the `qlora_training` DAG (its
`Param` schema and its `validate_inputs` task), so both accept and reject the same requests.
Light: standard library plus the catalog; no torch, no airflow, no pydantic.

A job request is ``{model_id, dataset_id, training_params, output_name}``; the DAG run conf adds
``job_id`` and ``user``. Two layers of checks:

* model-independent rules (types, bounds, safe names): `TRAINING_PARAM_RULES`, rendered as a
  JSON schema by `training_params_schema()` / `job_conf_schema()` and checked in Python by
  `check_training_params()`; the two agree (tests compare them value by value);
* model-dependent rules (LoRA rank range, allowed target modules, the dataset fits the model
  type): `validate_job_request()`, which also runs the model-independent ones.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any, Mapping, Sequence

from training.architectures import ARCHITECTURES
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


def dag_run_id(job_id: str) -> str:
    """The Airflow run id of a job: derived from the job id, so a retried trigger never starts
    a second run (Airflow answers 409 for a duplicate run id)."""
    return f"train-{job_id}"


def mlflow_experiment_name(user: str) -> str:
    """One MLflow experiment per user: a user's runs on the same dataset sit side by side and
    compare in the MLflow UI (filter on the `dataset_id` tag); users never see each other's."""
    return f"qlora/{user}"


def registered_model_name(user: str, output_name: str) -> str:
    """The MLflow registered model of a job's adapter: per user, so names never collide."""
    return f"{user}.{output_name}"


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
    * `success` -> completed; `failed` without a stop request -> failed;
    * `failed` after a stop request (stopping marks the run failed at once, while the train
      task's process still runs until Airflow's next heartbeat kills it): `stopped` once that
      process is gone: the train task never ran, or `training_exited` (the caller's evidence:
      the partial adapter uploaded, or the kill deadline passed). Until then `running`; None
      when neither the task states nor `training_exited` were read (keep the last known state);
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
# Training parameters: the rules (one table -> JSON schema and Python checks)

#: the largest LoRA rank of any catalog model (the model-independent bound of the schema)
MAX_RANK_ANY_MODEL = max(m.max_rank for m in load_catalog().models)
ALL_TARGET_MODULES: tuple[str, ...] = tuple(sorted(
    {name for arch in ARCHITECTURES.values() for name in arch.allowed_target_modules}))
#: default LoRA rank when a request names none (clamped into the model's range)
DEFAULT_RANK = 8

SAFE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
#: ids we put in S3 keys, Airflow run ids and MLflow tags
SAFE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"


@dataclass(frozen=True)
class NumberRule:
    """A numeric parameter: `kind` "integer" or "number"; bounds as JSON schema says them."""
    kind: str
    default: Any
    description: str
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: float | None = None
    exclusive_maximum: float | None = None

    def schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.kind, "description": self.description}
        if self.default is not None:
            out["default"] = self.default
        for key, value in (("minimum", self.minimum), ("maximum", self.maximum),
                           ("exclusiveMinimum", self.exclusive_minimum),
                           ("exclusiveMaximum", self.exclusive_maximum)):
            if value is not None:
                out[key] = value
        return out

    def bounds_text(self) -> str:
        low = (f">= {self.minimum:g}" if self.minimum is not None
               else f"> {self.exclusive_minimum:g}" if self.exclusive_minimum is not None else "")
        high = (f"<= {self.maximum:g}" if self.maximum is not None
                else f"< {self.exclusive_maximum:g}" if self.exclusive_maximum is not None else "")
        return " and ".join(p for p in (low, high) if p)

    def problem(self, name: str, value: Any) -> str | None:
        if not _is_number(value) or (self.kind == "integer" and not _is_integral(value)):
            kind = "an integer" if self.kind == "integer" else "a number"
            return f"{name} must be {kind} ({self.bounds_text()}), got {value!r}"
        ok = ((self.minimum is None or value >= self.minimum)
              and (self.maximum is None or value <= self.maximum)
              and (self.exclusive_minimum is None or value > self.exclusive_minimum)
              and (self.exclusive_maximum is None or value < self.exclusive_maximum))
        return None if ok else f"{name} must be {self.bounds_text()}, got {value!r}"


TRAINING_PARAM_RULES: dict[str, NumberRule] = {
    "epochs": NumberRule("integer", 3, "passes over the training split", minimum=1, maximum=100),
    "learning_rate": NumberRule("number", 2e-4, "peak learning rate of AdamW",
                                exclusive_minimum=0, maximum=1),
    "batch_size": NumberRule("integer", 4, "clips per optimisation step", minimum=1, maximum=64),
    "lora_rank": NumberRule("integer", None,
                            "LoRA rank r; must also lie in the model's [min_rank, max_rank] "
                            f"(default {DEFAULT_RANK}, clamped into that range)",
                            minimum=1, maximum=MAX_RANK_ANY_MODEL),
    "lora_alpha": NumberRule("integer", None, "LoRA scaling alpha (default: the model's)",
                             minimum=1, maximum=1024),
    "lora_dropout": NumberRule("number", 0.05, "dropout on the LoRA branch",
                               minimum=0, exclusive_maximum=1),
}
TARGET_MODULES_DESCRIPTION = ("short names of the language-model layers to adapt; empty or "
                              "missing means the architecture's defaults")
TRAINING_PARAM_NAMES: tuple[str, ...] = (*TRAINING_PARAM_RULES, "target_modules")


def _is_number(value: Any) -> bool:
    # JSON schema: booleans are not numbers
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and not (isinstance(value, float) and not math.isfinite(value)))


def _is_integral(value: Any) -> bool:
    # JSON schema (draft 6+): 3.0 is an integer
    return isinstance(value, int) or (isinstance(value, float) and value.is_integer())


# --------------------------------------------------------------------------------------------
# JSON schemas (the DAG's Params; also usable as OpenAPI fragments)


def training_params_schema() -> dict[str, Any]:
    """JSON schema of `training_params`: every model-independent rule, nothing more."""
    properties: dict[str, Any] = {name: rule.schema() for name, rule in TRAINING_PARAM_RULES.items()}
    properties["target_modules"] = {
        "type": "array", "description": TARGET_MODULES_DESCRIPTION, "default": [],
        "items": {"type": "string", "enum": list(ALL_TARGET_MODULES)}, "uniqueItems": True,
    }
    return {"type": "object", "properties": properties, "additionalProperties": False,
            "description": "QLoRA hyper-parameters; omitted fields take their defaults"}


def job_conf_schema() -> dict[str, dict[str, Any]]:
    """JSON schema of each field of the DAG run conf (one Airflow `Param` per field)."""
    return {
        "job_id": {"type": "string", "pattern": SAFE_ID_PATTERN,
                   "description": "the job's id (the API's; used in S3 keys and MLflow tags)"},
        "user": {"type": "string", "pattern": SAFE_ID_PATTERN,
                 "description": "username of the owner of the job (MLflow experiment qlora/{user})"},
        "model_id": {"type": "string", "enum": [m.id for m in load_catalog().models],
                     "description": "catalog id of the base model"},
        "dataset_id": {"type": "string", "pattern": SAFE_ID_PATTERN,
                       "description": "id of a validated dataset"},
        "training_params": training_params_schema() | {"default": {}},
        "output_name": {"type": "string", "pattern": SAFE_NAME_PATTERN,
                        "description": "name of the adapter (the MLflow run and registered "
                                       "model name)"},
    }


# --------------------------------------------------------------------------------------------
# Python checks


def check_training_params(params: Any) -> list[str]:
    """Model-independent problems of a `training_params` object (what the schema rejects)."""
    if params is None:
        return []
    if not isinstance(params, Mapping):
        return [f"training_params must be an object, got {type(params).__name__}"]
    problems = [f"unknown training parameter {name!r} (known: {', '.join(TRAINING_PARAM_NAMES)})"
                for name in params if name not in TRAINING_PARAM_NAMES]
    for name, rule in TRAINING_PARAM_RULES.items():
        if name in params and (problem := rule.problem(name, params[name])) is not None:
            problems.append(problem)
    if "target_modules" in params:
        problems.extend(_check_target_modules(params["target_modules"], ALL_TARGET_MODULES))
    return problems


def _check_target_modules(value: Any, allowed: Sequence[str]) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return [f"target_modules must be a list of strings, got {value!r}"]
    problems = [f"target_modules: {v!r} is not a known module (known: {', '.join(allowed)})"
                for v in dict.fromkeys(value) if v not in allowed]
    duplicates = sorted({v for v in value if value.count(v) > 1})
    if duplicates:
        problems.append(f"target_modules: {', '.join(duplicates)} listed more than once")
    return problems


def check_name(field: str, value: Any, pattern: str = SAFE_NAME_PATTERN) -> list[str]:
    if isinstance(value, str) and re.fullmatch(pattern, value):
        return []
    limit = re.search(r"\{0,(\d+)\}", pattern).group(1)  # type: ignore[union-attr]
    return [f"{field} must be 1 to {int(limit) + 1} characters: letters, digits, '.', '_' or "
            f"'-', starting with a letter or digit; got {value!r}"]


def validate_job_request(model: CatalogModel, dataset_tasks: Sequence[str] | None,
                         params: Any, output_name: Any = None) -> list[str]:
    """Every problem of a job request for `model`, as precise sentences (empty: valid).

    `dataset_tasks` are the tasks the dataset's validation report says it supports (None:
    unknown, not checked); `params` is `training_params`; `output_name` is checked when given.
    """
    problems = check_training_params(params)
    params = params if isinstance(params, Mapping) else {}
    # model-dependent rules, for values that passed the model-independent ones
    rank = params.get("lora_rank")
    if (rank is not None and TRAINING_PARAM_RULES["lora_rank"].problem("lora_rank", rank) is None
            and not model.min_rank <= rank <= model.max_rank):
        problems.append(f"lora_rank must be between {model.min_rank} and {model.max_rank} for "
                        f"model {model.id}, got {rank!r}")
    modules = params.get("target_modules")
    if isinstance(modules, list) and all(isinstance(m, str) for m in modules):
        allowed = model.allowed_target_modules
        problems.extend(
            f"target_modules: {m!r} is not allowed for {model.base_architecture} models "
            f"(allowed: {', '.join(allowed)})"
            for m in dict.fromkeys(modules) if m in ALL_TARGET_MODULES and m not in allowed)
    if dataset_tasks is not None and model.model_type not in dataset_tasks:
        has = ", ".join(dataset_tasks) or "none"
        problems.append(
            f"the dataset does not fit model {model.id}: it needs a dataset for "
            f"{model.model_type} (a '{_TASK_COLUMN[model.model_type]}' for every clip); "
            f"the dataset supports: {has}")
    if output_name is not None:
        problems.extend(check_name("output_name", output_name))
    return problems


_TASK_COLUMN = {"video_classification": "label", "video_captioning": "caption"}


def validate_job_conf(conf: Mapping[str, Any], dataset_tasks: Sequence[str] | None = None) -> list[str]:
    """Every problem of a whole DAG run conf (ids, model, params, output name)."""
    problems: list[str] = []
    for field in ("job_id", "user", "dataset_id"):
        problems.extend(check_name(field, conf.get(field), SAFE_ID_PATTERN))
    model = load_catalog().get(conf.get("model_id")) if isinstance(conf.get("model_id"), str) else None
    if model is None:
        known = ", ".join(m.id for m in load_catalog().models)
        problems.append(f"model_id {conf.get('model_id')!r} is not in the catalog (known: {known})")
        problems.extend(check_training_params(conf.get("training_params")))
        problems.extend(check_name("output_name", conf.get("output_name")))
        return problems
    return (problems + validate_job_request(model, dataset_tasks, conf.get("training_params"))
            + check_name("output_name", conf.get("output_name")))


# --------------------------------------------------------------------------------------------
# Resolved parameters (defaults applied) and the engine's command line


@dataclass(frozen=True)
class TrainingParams:
    epochs: int
    learning_rate: float
    batch_size: int
    lora_rank: int
    lora_alpha: int
    lora_dropout: float
    target_modules: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["target_modules"] = list(self.target_modules)
        return out

    def cli_args(self) -> list[str]:
        """The options of `python -m training run` for these parameters."""
        return ["--epochs", str(self.epochs), "--learning-rate", repr(self.learning_rate),
                "--batch-size", str(self.batch_size), "--lora-rank", str(self.lora_rank),
                "--lora-alpha", str(self.lora_alpha), "--lora-dropout", repr(self.lora_dropout),
                "--target-modules", ",".join(self.target_modules)]


def resolve_training_params(model: CatalogModel, params: Mapping[str, Any] | None) -> TrainingParams:
    """Applies the defaults (some are the model's) to a request already validated."""
    params = dict(params or {})
    if problems := validate_job_request(model, None, params):
        raise ValueError("; ".join(problems))
    default = {name: rule.default for name, rule in TRAINING_PARAM_RULES.items()}
    default["lora_rank"] = min(max(DEFAULT_RANK, model.min_rank), model.max_rank)
    default["lora_alpha"] = model.default_alpha
    merged = default | {k: v for k, v in params.items() if k != "target_modules"}
    return TrainingParams(
        epochs=int(merged["epochs"]), learning_rate=float(merged["learning_rate"]),
        batch_size=int(merged["batch_size"]), lora_rank=int(merged["lora_rank"]),
        lora_alpha=int(merged["lora_alpha"]), lora_dropout=float(merged["lora_dropout"]),
        target_modules=tuple(params.get("target_modules") or model.default_target_modules),
    )
