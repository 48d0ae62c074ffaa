"""`RunArgs`: what one `python -m training run` is asked to do.

The training parameters a user sets are `params` (`training.params.TrainingParams`, the one
definition); the rest are the engine's own options (where the model, data and output are,
quantization, tracking, checkpoints). Checked before any training starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from training.catalog import MODEL_TYPES
from training.errors import InputError
from training.params import TrainingParams

QUANTIZATIONS = ("nf4", "none")


@dataclass
class RunArgs:
    model: str
    data: str
    task: str
    output: str
    params: TrainingParams = field(default_factory=TrainingParams)
    quantization: str = "nf4"
    mlflow_uri: str | None = None
    run_name: str | None = None
    resume: bool = False
    validation_fraction: float = 0.2
    gradient_checkpointing: bool = True
    job_id: str | None = None
    experiment: str | None = None
    output_uri: str | None = None
    #: s3:// prefix each checkpoint folder is uploaded under as it is saved (None: kept local)
    checkpoint_uri: str | None = None
    #: the dataset's validation report (path or s3:// URI): the clips it decoded are trusted
    clip_report: str | None = None
    step_delay: float = 0.0
    #: after training, the adapter and the base model on the held-out split in this process
    #: (what `python -m training evaluate` does, without loading the model again): METRICS_FILE
    #: in the output folder and under `output_uri`, `final_*`/`base_*` and `evaluation/` in MLflow
    evaluate: bool = False

    def validate(self) -> None:
        """Checks the engine's own options (the parameters checked themselves when parsed)."""
        if self.task not in MODEL_TYPES:
            raise InputError(f"must be one of {', '.join(MODEL_TYPES)}, got {self.task!r}", field="task")
        if self.quantization not in QUANTIZATIONS:
            raise InputError(f"must be one of {', '.join(QUANTIZATIONS)}", field="quantization")
        if not 0 < self.validation_fraction < 1:
            raise InputError(f"must be in (0, 1), got {self.validation_fraction}", field="validation_fraction")

    def engine_options(self) -> dict[str, str]:
        """The engine's own options as flat strings (MLflow params beside the parameters)."""
        return {"model": self.model, "data": self.data, "task": self.task, "quantization": self.quantization,
                "validation_fraction": str(self.validation_fraction),
                "gradient_checkpointing": str(self.gradient_checkpointing), "resume": str(self.resume)}
