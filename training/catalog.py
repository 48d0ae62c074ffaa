"""Reads the model catalog (`catalog.toml` beside this file), the one source of truth for
which base models users may fine-tune. Light: no torch import."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from training.architectures import Architecture, get_architecture

CATALOG_PATH = Path(__file__).with_name("catalog.toml")

MODEL_TYPES = ("video_classification", "video_captioning")


@dataclass(frozen=True)
class CatalogModel:
    id: str
    name: str
    description: str
    model_type: str
    base_architecture: str
    architecture_class: str
    version: str
    tiny: bool
    min_rank: int
    max_rank: int
    default_alpha: int
    #: frames sampled per clip unless a job says otherwise (the checkpoint's video preprocessing)
    frames: int = 8
    checkpoint: str | None = None
    #: how frames are picked unless a job says otherwise (`training.params` frame_sampling):
    #: 'uniform' (`frames` spread evenly) or 'fps' (`sampling_fps` a second, at most `frames`)
    frame_sampling: str = "uniform"
    sampling_fps: float | None = None

    @property
    def architecture(self) -> Architecture:
        return get_architecture(self.base_architecture)

    @property
    def default_target_modules(self) -> tuple[str, ...]:
        return self.architecture.default_target_modules

    @property
    def allowed_target_modules(self) -> tuple[str, ...]:
        return self.architecture.allowed_target_modules


@dataclass(frozen=True)
class Catalog:
    version: str
    models: tuple[CatalogModel, ...]

    def get(self, model_id: str) -> CatalogModel | None:
        return next((m for m in self.models if m.id == model_id), None)


def _check(model: CatalogModel) -> None:
    if model.model_type not in MODEL_TYPES:
        raise ValueError(f"catalog entry {model.id}: model_type must be one of {MODEL_TYPES}")
    arch = get_architecture(model.base_architecture)
    if arch.model_class != model.architecture_class:
        raise ValueError(f"catalog entry {model.id}: {model.base_architecture} uses {arch.model_class}")
    if not 1 <= model.min_rank <= model.max_rank:
        raise ValueError(f"catalog entry {model.id}: need 1 <= min_rank <= max_rank")
    if not 1 <= model.frames <= 256:
        raise ValueError(f"catalog entry {model.id}: frames must be in 1..256")
    if model.frame_sampling not in ("uniform", "fps"):
        raise ValueError(f"catalog entry {model.id}: frame_sampling must be 'uniform' or 'fps'")
    if (model.sampling_fps is not None) != (model.frame_sampling == "fps") or not 0 < (model.sampling_fps or 1) <= 30:
        raise ValueError(f"catalog entry {model.id}: frame_sampling 'fps' needs sampling_fps in (0, 30], "
                         "'uniform' none")
    if not model.tiny and not model.checkpoint:
        raise ValueError(f"catalog entry {model.id}: a real model names its checkpoint")


@lru_cache(maxsize=4)
def load_catalog(path: Path = CATALOG_PATH) -> Catalog:
    data = tomllib.loads(Path(path).read_text())
    models = tuple(CatalogModel(**entry) for entry in data["models"])
    ids = [m.id for m in models]
    if len(ids) != len(set(ids)):
        raise ValueError("catalog has duplicate model ids")
    for model in models:
        _check(model)
    return Catalog(version=data["catalog_version"], models=models)
