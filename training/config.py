"""`TrainArgs`: every option of `python -m training run`, checked before any training starts."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

from training.catalog import MODEL_TYPES

#: rank limits when the model carries no catalog id
DEFAULT_MIN_RANK, DEFAULT_MAX_RANK = 1, 256
QUANTIZATIONS = ("nf4", "none")


class ArgumentError(ValueError):
    """A bad option or input; the CLI prints the message as one line and exits 2."""


@dataclass
class TrainArgs:
    model: str
    data: str
    task: str
    output: str
    epochs: int = 3
    learning_rate: float = 2e-4
    batch_size: int = 4
    lora_rank: int = 8
    lora_alpha: int | None = None
    lora_dropout: float = 0.05
    target_modules: list[str] = field(default_factory=list)
    quantization: str = "nf4"
    frames: int | None = None
    seed: int = 42
    mlflow_uri: str | None = None
    run_name: str | None = None
    resume: bool = False
    checkpoint_every: int = 50
    validation_fraction: float = 0.2
    max_steps: int | None = None
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    gradient_checkpointing: bool = True
    job_id: str | None = None
    experiment: str | None = None
    registered_model_name: str | None = None
    output_uri: str | None = None
    step_delay: float = 0.0

    def __post_init__(self) -> None:
        if self.mlflow_uri is None:
            self.mlflow_uri = os.environ.get("MLFLOW_TRACKING_URI") or None
        if self.job_id is None:
            self.job_id = os.environ.get("QLORA_JOB_ID") or None

    def validate(self) -> None:
        """Checks what can be checked without the model or the data."""
        if self.task not in MODEL_TYPES:
            raise ArgumentError(f"--task must be one of {', '.join(MODEL_TYPES)}, got {self.task!r}")
        if self.epochs < 1:
            raise ArgumentError(f"--epochs must be >= 1, got {self.epochs}")
        if not self.learning_rate > 0:
            raise ArgumentError(f"--learning-rate must be > 0, got {self.learning_rate}")
        if self.batch_size < 1:
            raise ArgumentError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.lora_alpha is not None and self.lora_alpha < 1:
            raise ArgumentError(f"--lora-alpha must be >= 1, got {self.lora_alpha}")
        if not 0 <= self.lora_dropout < 1:
            raise ArgumentError(f"--lora-dropout must be in [0, 1), got {self.lora_dropout}")
        if self.quantization not in QUANTIZATIONS:
            raise ArgumentError(f"--quantization must be one of {', '.join(QUANTIZATIONS)}")
        if self.frames is not None and not 1 <= self.frames <= 256:
            raise ArgumentError(f"--frames must be in 1..256, got {self.frames}")
        if self.checkpoint_every < 1:
            raise ArgumentError(f"--checkpoint-every must be >= 1, got {self.checkpoint_every}")
        if not 0 < self.validation_fraction < 1:
            raise ArgumentError(f"--validation-fraction must be in (0, 1), got {self.validation_fraction}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ArgumentError(f"--max-steps must be >= 1, got {self.max_steps}")

    def check_rank(self, min_rank: int, max_rank: int, where: str) -> None:
        if not min_rank <= self.lora_rank <= max_rank:
            raise ArgumentError(f"--lora-rank {self.lora_rank} is outside the range {min_rank}..{max_rank} "
                                f"of {where}")

    def check_targets(self, allowed: tuple[str, ...], architecture: str) -> None:
        unknown = [t for t in self.target_modules if t not in allowed]
        if unknown:
            raise ArgumentError(f"unknown target module(s) {', '.join(unknown)} for {architecture}; "
                                f"allowed: {', '.join(allowed)}")

    def as_params(self) -> dict[str, str]:
        """Flat string parameters for MLflow."""
        return {k: ",".join(v) if isinstance(v, list) else str(v) for k, v in asdict(self).items()
                if k not in ("mlflow_uri", "step_delay")}
