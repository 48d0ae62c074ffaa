"""`qlora_model.json`: what the engine records beside a base model it built (architecture,
task, catalog id, labels, and for tiny models the build id of the code that built them) so
later commands need not guess."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path

MODEL_INFO_FILE = "qlora_model.json"
_PACKAGE = Path(__file__).parent
#: the code a tiny model is made of: its builder and the architecture families
_TINY_BUILD_SOURCES = (_PACKAGE / "build_tiny.py", *sorted((_PACKAGE / "models").glob("*.py")))


def tiny_build_id() -> str:
    """Changes whenever a tiny model built now would differ from one built before: a hash of
    the code that builds tiny models and of the transformers version (random init is seeded, so
    the same code builds the same files). Light: reads files, imports nothing heavy."""
    digest = hashlib.sha256(f"transformers=={version('transformers')}".encode())
    for path in _TINY_BUILD_SOURCES:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


@dataclass
class ModelInfo:
    architecture: str
    task: str | None = None
    catalog_id: str | None = None
    tiny: bool = False
    labels: list[str] = field(default_factory=list)
    #: `tiny_build_id()` of the code that built a tiny model (None for real checkpoints)
    build_id: str | None = None

    def save(self, folder: str | Path) -> None:
        (Path(folder) / MODEL_INFO_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, folder: str | Path) -> "ModelInfo | None":
        path = Path(folder) / MODEL_INFO_FILE
        if not path.is_file():
            return None
        data = json.loads(path.read_text())
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
