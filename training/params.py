"""The training parameters a user may set: the one definition.

`TrainingParams` (a pydantic model) holds each parameter's name, type, default, bounds, title,
description and example. Everything else is derived from it, with no second list anywhere:

* the API's request schema (`training_params` in `POST /v1/trainings` is this model, so OpenAPI
  shows every field with its bounds and defaults, and unknown keys are rejected);
* the Airflow `Param`s of the `qlora_training` DAG (`airflow_param_schemas()`: one titled field
  per parameter in the trigger form);
* the engine's command-line options (`add_cli_options()` / `cli_args()`);
* the MLflow params of the run and the values echoed in the job detail (`resolve()` fills in
  every default, some of which are the model's).

Why pydantic rather than dataclasses with field metadata: the API already speaks pydantic, and
one model gives validation with precise messages, `extra="forbid"` and the JSON schema (which
is what OpenAPI and Airflow's `Param` both consume) without a validator of our own.

Model-dependent rules (LoRA rank range, allowed target modules, the dataset fits the model type)
live in `model_problems()`, used by the API, the DAG's `validate_inputs` and the engine.

Adding a parameter: one field here, plus its use in the engine (`training/trainer.py`).
"""

from __future__ import annotations

import argparse
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from training.architectures import ARCHITECTURES, Architecture
from training.catalog import CatalogModel, load_catalog

#: the largest LoRA rank of any catalog model (the model-independent bound)
MAX_RANK_ANY_MODEL = max(m.max_rank for m in load_catalog().models)
#: LoRA rank when a request names none (clamped into the model's range)
DEFAULT_RANK = 8
#: frames per second of `frame_sampling: fps` when neither the job nor the model names a rate
DEFAULT_SAMPLING_FPS = 1.0
#: rank limits of a model folder that carries no catalog id (the engine run by hand)
DEFAULT_MIN_RANK, DEFAULT_MAX_RANK = 1, 256
ALL_TARGET_MODULES: tuple[str, ...] = tuple(sorted(
    {name for arch in ARCHITECTURES.values() for name in arch.allowed_target_modules}))

TargetModule = Literal[ALL_TARGET_MODULES]  # type: ignore[valid-type]


def _integral(value: Any) -> Any:
    # JSON schema (draft 6+) counts 3.0 as an integer; strict mode alone would not
    return int(value) if isinstance(value, float) and value.is_integer() else value


_Int = Annotated[int, BeforeValidator(_integral)]
_Float = Annotated[float, Field(allow_inf_nan=False)]


class TrainingParams(BaseModel):
    """QLoRA hyper-parameters of a training job; omitted fields take their defaults (those
    given as null are the model's: see `GET /v1/models/{model_id}`)."""

    # strict: "3" or true is not a number (as in JSON schema); extra keys are an error
    model_config = ConfigDict(extra="forbid", strict=True, title="Training parameters")

    epochs: _Int = Field(3, ge=1, le=100, title="Epochs", examples=[3],
                        description="Passes over the training split.")
    learning_rate: _Float = Field(2e-4, gt=0, le=1, title="Learning rate", examples=[2e-4],
                                  description="Peak learning rate of AdamW (linear warm-up, then linear decay).")
    batch_size: _Int = Field(4, ge=1, le=64, title="Batch size", examples=[4],
                            description="Clips per forward pass.")
    gradient_accumulation_steps: _Int = Field(
        1, ge=1, le=64, title="Gradient accumulation steps", examples=[1],
        description="Forward passes summed into one optimizer step (effective batch = batch_size x this).")
    max_steps: Annotated[int, Field(ge=1, le=1_000_000), BeforeValidator(_integral)] | None = Field(
        None, title="Max steps", examples=[500],
        description="Stop after this many optimizer steps (null: epochs x steps per epoch).")
    warmup_ratio: _Float = Field(0.0, ge=0, lt=1, title="Warm-up ratio", examples=[0.03],
                                 description="Share of the optimizer steps spent warming the learning rate up from 0.")
    weight_decay: _Float = Field(0.0, ge=0, le=1, title="Weight decay", examples=[0.01],
                                 description="AdamW weight decay of the trainable (LoRA) weights.")
    lora_rank: Annotated[int, Field(ge=1, le=MAX_RANK_ANY_MODEL), BeforeValidator(_integral)] | None = Field(
        None, title="LoRA rank", examples=[8],
        description=f"LoRA rank r; must lie in the model's [min_rank, max_rank] (null: {DEFAULT_RANK}, "
                    "clamped into that range).")
    lora_alpha: Annotated[int, Field(ge=1, le=1024), BeforeValidator(_integral)] | None = Field(None, title="LoRA alpha", examples=[16],
                                   description="LoRA scaling alpha (null: the model's default_alpha).")
    lora_dropout: _Float = Field(0.05, ge=0, lt=1, title="LoRA dropout", examples=[0.05],
                                 description="Dropout on the LoRA branch.")
    target_modules: list[TargetModule] = Field(  # type: ignore[valid-type]
        default_factory=list, title="Target modules", examples=[["q_proj", "v_proj"]],
        json_schema_extra={"uniqueItems": True, "default": []},
        description="Short names of the language-model layers to adapt (empty: the model's "
                    "default_target_modules, every linear layer of the language model).")
    frames: Annotated[int, Field(ge=1, le=256), BeforeValidator(_integral)] | None = Field(None, title="Frames per clip", examples=[8],
                               description="Frames sampled from each clip: exactly this many spread uniformly "
                                           "over it, or with frame_sampling 'fps' at most this many "
                                           "(null: the model's).")
    frame_sampling: Literal["uniform", "fps"] | None = Field(
        None, title="Frame sampling", examples=["fps"],
        description="'uniform': `frames` frames spread evenly over each clip; 'fps': one frame every "
                    "1/sampling_fps seconds of the clip (by timestamp, so variable frame rates sample evenly), "
                    "at most `frames` (longer clips: `frames` spread evenly), as VideoLLaMA 3's model card "
                    "recommends (null: the model's, uniform unless its catalog entry says otherwise).")
    sampling_fps: Annotated[float, Field(gt=0, le=30, allow_inf_nan=False)] | None = Field(
        None, title="Sampling rate (frames per second)", examples=[1.0],
        description="Frames taken per second of the clip with frame_sampling 'fps' (null: the model's, else 1.0); "
                    "not allowed with 'uniform'.")
    eval_every_epochs: _Int = Field(
        1, ge=1, le=100, title="Evaluate every N epochs", examples=[1],
        description="Held-out evaluation after every N-th epoch (and after the last one).")
    checkpoint_every_steps: Annotated[int, Field(ge=1, le=1_000_000), BeforeValidator(_integral)] | None = Field(
        None, title="Checkpoint every N steps", examples=[50],
        description="Save (and upload to the job's S3 prefix) a resumable checkpoint every N optimizer steps "
                    "(null: once per epoch, after its evaluation). The last two are kept.")
    seed: _Int = Field(42, ge=0, le=2**31 - 1, title="Seed", examples=[42],
                      description="Seed of the data split, batch order, classifier head and dropout: "
                                  "the same seed and data give the same adapter.")

    @model_validator(mode="after")
    def _unique_targets(self) -> TrainingParams:
        duplicates = sorted({m for m in self.target_modules if self.target_modules.count(m) > 1})
        if duplicates:
            raise ValueError(f"target_modules: {', '.join(duplicates)} listed more than once")
        if self.frame_sampling == "uniform" and self.sampling_fps is not None:
            raise ValueError(f"sampling_fps ({self.sampling_fps!r}) applies only with frame_sampling 'fps'; "
                             "drop it or set frame_sampling to 'fps'")
        return self


PARAM_NAMES: tuple[str, ...] = tuple(TrainingParams.model_fields)


def problems_of(params: Any) -> list[str]:
    """The model-independent problems of a `training_params` object, one sentence each
    (what the schema rejects)."""
    try:
        parse(params)
    except InvalidParams as exc:
        return exc.problems
    return []


class InvalidParams(ValueError):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def parse(params: Any) -> TrainingParams:
    """A `training_params` object (None: all defaults) as `TrainingParams`; `InvalidParams`
    names every problem, field by field."""
    if isinstance(params, TrainingParams):
        return params
    if params is None:
        params = {}
    if not isinstance(params, Mapping):
        raise InvalidParams([f"training_params must be an object, got {type(params).__name__}"])
    try:
        return TrainingParams.model_validate(dict(params))
    except ValidationError as exc:
        raise InvalidParams([describe_error(e) for e in exc.errors()]) from None


def describe_error(error: Mapping[str, Any]) -> str:
    """One pydantic error as a sentence that names the field and the value."""
    loc = [str(p) for p in error.get("loc", ())]
    name = ".".join(loc) or "training_params"
    if error.get("type") == "extra_forbidden":
        return f"unknown training parameter {loc[-1]!r} (known: {', '.join(PARAM_NAMES)})"
    if error.get("type") == "literal_error" and loc and loc[0] in TrainingParams.model_fields \
            and loc[0] != "target_modules":
        choices = typing.get_args(_literal(TrainingParams.model_fields[loc[0]].annotation))
        return f"{loc[0]}: {error.get('input')!r} is not one of {', '.join(map(repr, choices))}"
    if error.get("type") == "literal_error":  # target_modules' items
        return f"{loc[0]}: {error.get('input')!r} is not a known module (allowed: {', '.join(ALL_TARGET_MODULES)})"
    message = str(error.get("msg", "is invalid"))
    message = message.removeprefix("Value error, ")
    if error.get("type") == "value_error" and not loc:
        return message
    return f"{name}: {message[:1].lower()}{message[1:]}, got {error.get('input')!r}"


# --------------------------------------------------------------------------------------------
# Model-dependent rules and defaults


@dataclass(frozen=True)
class ModelLimits:
    """What a base model allows and defaults to: from its catalog entry, or (a model folder
    without a catalog id, the engine run by hand) from its architecture alone."""

    where: str
    architecture: Architecture
    model_type: str | None
    min_rank: int
    max_rank: int
    default_alpha: int | None
    default_frames: int | None
    #: the model card's frame sampling ('uniform' or 'fps') and, for 'fps', its rate
    default_sampling: str = "uniform"
    default_fps: float | None = None

    @classmethod
    def of_catalog(cls, model: CatalogModel) -> ModelLimits:
        return cls(f"model {model.id}", model.architecture, model.model_type, model.min_rank,
                   model.max_rank, model.default_alpha, model.frames,
                   getattr(model, "frame_sampling", None) or "uniform", getattr(model, "sampling_fps", None))

    @classmethod
    def of_architecture(cls, architecture: Architecture, default_frames: int | None = None) -> ModelLimits:
        return cls("this model", architecture, None, DEFAULT_MIN_RANK, DEFAULT_MAX_RANK, None, default_frames)


_TASK_COLUMN = {"video_classification": "label", "video_captioning": "caption"}


def model_problems(limits: ModelLimits, params: TrainingParams,
                   dataset_tasks: Sequence[str] | None = None) -> list[str]:
    """The problems of valid `params` for one model (rank range, allowed target modules) and,
    when `dataset_tasks` is given, of the dataset for the model's type."""
    problems: list[str] = []
    rank = params.lora_rank
    if rank is not None and not limits.min_rank <= rank <= limits.max_rank:
        problems.append(f"lora_rank must be between {limits.min_rank} and {limits.max_rank} for "
                        f"{limits.where}, got {rank!r}")
    allowed = limits.architecture.allowed_target_modules
    problems.extend(
        f"target_modules: {m!r} is not allowed for {limits.architecture.name} models (allowed: "
        f"{', '.join(allowed)})" for m in params.target_modules if m not in allowed)
    if params.frame_sampling is None and limits.default_sampling == "uniform" and params.sampling_fps is not None:
        problems.append(f"sampling_fps ({params.sampling_fps!r}) applies only with frame_sampling 'fps' "
                        f"({limits.where} samples uniformly by default); set frame_sampling to 'fps' "
                        "or drop sampling_fps")
    if dataset_tasks is not None and limits.model_type is not None and limits.model_type not in dataset_tasks:
        has = ", ".join(dataset_tasks) or "none"
        problems.append(
            f"the dataset does not fit {limits.where}: it needs a dataset for {limits.model_type} "
            f"(a '{_TASK_COLUMN[limits.model_type]}' for every clip); the dataset supports: {has}")
    return problems


def resolve(limits: ModelLimits, params: TrainingParams | Mapping[str, Any] | None) -> TrainingParams:
    """The parameters a job really uses: every default filled in (rank clamped into the model's
    range, its alpha, its target modules, its frames). Raises `InvalidParams`."""
    params = parse(params)
    if problems := model_problems(limits, params):
        raise InvalidParams(problems)
    rank = params.lora_rank or min(max(DEFAULT_RANK, limits.min_rank), limits.max_rank)
    sampling = params.frame_sampling or limits.default_sampling
    fps = (params.sampling_fps or limits.default_fps or DEFAULT_SAMPLING_FPS) if sampling == "fps" else None
    return params.model_copy(update={
        "lora_rank": rank,
        "lora_alpha": params.lora_alpha or limits.default_alpha or 2 * rank,
        "target_modules": list(params.target_modules or limits.architecture.default_target_modules),
        "frames": params.frames or limits.default_frames,
        "frame_sampling": sampling,
        "sampling_fps": fps,
    })


# --------------------------------------------------------------------------------------------
# Derived forms: Airflow Params, command-line options, MLflow params


def _json_type(prop: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
    """A pydantic property schema as (JSON type, the other keywords), `anyOf [X, null]` folded
    into `type: [X's type, "null"]` (what Airflow's trigger form understands)."""
    options = prop.get("anyOf")
    if options:
        (concrete,) = [o for o in options if o.get("type") != "null"]
        outer = {k: v for k, v in prop.items() if k not in ("type", "anyOf")}
        inner = {k: v for k, v in concrete.items() if k != "type"}
        if "enum" in inner:  # null is a value the Param takes (the model's default)
            inner["enum"] = [*inner["enum"], None]
        return [concrete["type"], "null"], inner | outer
    return prop["type"], {k: v for k, v in prop.items() if k not in ("type", "anyOf")}


def airflow_param_schemas() -> dict[str, dict[str, Any]]:
    """JSON schema keywords of one Airflow `Param` per parameter (title, description, type,
    bounds, default): `Param(schema.pop("default"), **schema)`."""
    properties = TrainingParams.model_json_schema()["properties"]
    out = {}
    for name, prop in properties.items():
        json_type, keywords = _json_type(prop)
        keywords.pop("examples", None)
        out[name] = {"default": prop.get("default", []), "type": json_type, **keywords}
    return out


def _literal(annotation: Any) -> Any:
    """The Literal inside `Literal[...] | None`."""
    if typing.get_origin(annotation) is Literal:
        return annotation
    return next(a for a in typing.get_args(annotation) if typing.get_origin(a) is Literal)


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_cli_options(parser: argparse.ArgumentParser) -> None:
    """One option per parameter (`--lora-rank 8`, lists comma-separated). An option not given
    is absent from the parsed namespace, so the definition's default applies."""
    group = parser.add_argument_group("training parameters")
    for name, info in TrainingParams.model_fields.items():
        annotation = str(info.annotation)
        kind = (_csv if "list" in annotation else float if "float" in annotation else str
                if "Literal" in annotation else int)
        default = info.get_default(call_default_factory=True)
        shown = "the model's" if default is None else (",".join(default) or "the model's") \
            if isinstance(default, list) else default
        group.add_argument(_option(name), dest=name, type=kind, default=argparse.SUPPRESS,
                           metavar=name.upper() if kind is not _csv else "A,B",
                           **({"choices": list(typing.get_args(_literal(info.annotation)))}
                              if kind is str else {}),
                           help=f"{info.description} Default: {shown}.")


def params_from_cli(namespace: argparse.Namespace) -> TrainingParams:
    """The parameters of a parsed command line (`InvalidParams` for bad values)."""
    return parse({name: getattr(namespace, name) for name in PARAM_NAMES if hasattr(namespace, name)})


def cli_args(params: TrainingParams) -> list[str]:
    """The engine options that give exactly `params` (None values are left to the engine)."""
    out: list[str] = []
    for name, value in params.model_dump().items():
        if value is None:
            continue
        out += [_option(name), ",".join(value) if isinstance(value, list) else repr(value)
                if isinstance(value, float) else str(value)]
    return out


def mlflow_params(params: TrainingParams) -> dict[str, str]:
    """The parameters as MLflow run params (strings; lists comma-separated; null as 'None')."""
    return {name: ",".join(v) if isinstance(v, list) else str(v) for name, v in params.model_dump().items()}
