"""What one run of the engine reports: its exit codes and its result manifest.

The contract between `python -m training run|evaluate` and whoever runs them (the `qlora_training`
DAG's tasks, a user's shell). Light: standard library only, so the CLI, the trainer and the DAG
import it without importing each other.

Exit codes:
  0   success
  1   unexpected failure (traceback in the log)
  2   bad arguments or input (one line `error: ...` on stderr, before any training)
  75  stopped by SIGTERM/SIGINT: the current step finished, a checkpoint and the adapter so far
      were saved in the output folder (and uploaded to `--output-uri`); `--resume` continues

The manifest `result.json` in the output folder is rewritten (atomically) as soon as the engine
knows each part: the MLflow run once it exists (before the first step), each checkpoint, the
adapter's files, then the final status. A reader never parses the engine's log.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT, EXIT_STOPPED = 0, 1, 2, 75

RESULT_FILE = "result.json"
#: the held-out metrics `python -m training evaluate` writes (adapter and base model)
METRICS_FILE = "metrics.json"
#: the engine's log file in its output folder
LOG_FILE = "train.log"
#: the file whose presence marks a complete adapter (uploaded last)
ADAPTER_MARKER = "adapter_config.json"


class RunStatus(StrEnum):
    #: training (the MLflow run exists; checkpoints appear as they are saved)
    RUNNING = "running"
    #: every planned step done; the adapter is saved (and uploaded when `--output-uri` was given)
    COMPLETED = "completed"
    #: stopped by a signal; the adapter so far is saved (and uploaded)
    STOPPED = "stopped"
    #: bad input or an unexpected error; `error` says what
    FAILED = "failed"


@dataclass
class FileEntry:
    """One file of an adapter or a checkpoint: what a download checks against."""
    name: str
    size_bytes: int
    sha256: str


@dataclass
class Checkpoint:
    step: int
    epoch: float
    #: folder name under OUTPUT/checkpoints/
    name: str
    #: when it was saved (UTC, ISO 8601)
    created_at: str | None = None
    #: the training loss of its step and the metrics of the last held-out evaluation before it
    #: (`eval_*`)
    metrics: dict[str, float] = field(default_factory=dict)
    #: its S3 folder once uploaded (`--checkpoint-uri`), else None (on the worker only)
    uri: str | None = None
    files: list[FileEntry] = field(default_factory=list)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Checkpoint:
        known = {k: v for k, v in raw.items() if k in cls.__dataclass_fields__}
        known["files"] = [FileEntry(**f) for f in known.get("files") or []]
        return cls(**known)


def file_entries(folder: Path | str, names: list[str] | None = None) -> list[FileEntry]:
    """Size and SHA-256 of the files of `folder` (only `names` when given), sorted by name."""
    import hashlib

    folder = Path(folder)
    out = []
    for path in sorted(p for p in folder.iterdir() if p.is_file() and (names is None or p.name in names)):
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
        out.append(FileEntry(name=path.name, size_bytes=path.stat().st_size, sha256=digest.hexdigest()))
    return out


@dataclass
class EngineResult:
    status: RunStatus = RunStatus.RUNNING
    mlflow_run_id: str | None = None
    mlflow_experiment_id: str | None = None
    step: int = 0
    total_steps: int | None = None
    #: the parameters the run really used (defaults filled in, rank/alpha/targets resolved)
    params: dict[str, Any] = field(default_factory=dict)
    #: names of the adapter's files in the output folder (and under `output_uri`)
    adapter_files: list[str] = field(default_factory=list)
    #: size and SHA-256 of each of those files (what a download verifies)
    adapter_manifest: list[FileEntry] = field(default_factory=list)
    #: the adapter's S3 URI once uploaded there
    output_uri: str | None = None
    checkpoints: list[Checkpoint] = field(default_factory=list)
    #: held-out metrics of the adapter and the base model (`evaluate` fills these)
    metrics: dict[str, Any] = field(default_factory=dict)
    #: clips skipped because they did not decode during the run: file name -> reason
    skipped_clips: dict[str, str] = field(default_factory=dict)
    #: why the run failed or stopped, in words a user can act on
    error: str | None = None
    #: False in the copies the train task publishes while the engine runs; True in the one it
    #: publishes once the engine process is gone (the API's evidence that it exited)
    exited: bool = False

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, default=str) + "\n"

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> EngineResult:
        known = {k: v for k, v in raw.items() if k in cls.__dataclass_fields__}
        known["status"] = RunStatus(known.get("status", RunStatus.RUNNING))
        known["checkpoints"] = [Checkpoint.from_dict(c) for c in known.get("checkpoints") or []]
        known["adapter_manifest"] = [FileEntry(**f) for f in known.get("adapter_manifest") or []]
        return cls(**known)


def write_result(output: Path | str, result: EngineResult) -> Path:
    """Writes the manifest atomically (a reader sees the old or the new one, never half)."""
    path = Path(output) / RESULT_FILE
    tmp = path.with_name(f".{RESULT_FILE}.{os.getpid()}.tmp")
    tmp.write_text(result.to_json())
    os.replace(tmp, path)
    return path


def read_result(output: Path | str) -> EngineResult | None:
    """The manifest of an output folder; None when the engine has written none (yet)."""
    path = Path(output) / RESULT_FILE
    try:
        return EngineResult.from_dict(json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path} is not a result manifest: {exc}") from None
