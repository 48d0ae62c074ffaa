"""`qlora_model.json`: what the engine records beside a base model it built (architecture,
task, catalog id, labels) so later commands need not guess."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

MODEL_INFO_FILE = "qlora_model.json"


@dataclass
class ModelInfo:
    architecture: str
    task: str | None = None
    catalog_id: str | None = None
    tiny: bool = False
    labels: list[str] = field(default_factory=list)

    def save(self, folder: str | Path) -> None:
        (Path(folder) / MODEL_INFO_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, folder: str | Path) -> "ModelInfo | None":
        path = Path(folder) / MODEL_INFO_FILE
        if not path.is_file():
            return None
        data = json.loads(path.read_text())
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
