"""The architecture registry: `base_architecture` -> `Family` (class, tiny config, inputs).

Adding an architecture means one `Family` subclass plus one line here (and its facts in
`training/architectures.py`)."""

from __future__ import annotations

from training.models.base import Family, Preprocessing
from training.models.flamingo import FlamingoFamily
from training.models.video_llama import VideoLlamaFamily

FAMILIES: dict[str, Family] = {f.name: f for f in (VideoLlamaFamily(), FlamingoFamily())}


def get_family(architecture: str) -> Family:
    try:
        return FAMILIES[architecture]
    except KeyError:
        raise ValueError(f"unknown architecture {architecture!r}; known: {', '.join(sorted(FAMILIES))}") from None


def family_for_config(config) -> Family:
    """The family of a loaded transformers config (by its model class name)."""
    for family in FAMILIES.values():
        if family.model_class().__name__ in (getattr(config, "architectures", None) or []):
            return family
    by_type = {"video_llama_3": "video_llama", "idefics": "flamingo"}
    if config.model_type in by_type:
        return FAMILIES[by_type[config.model_type]]
    raise ValueError(f"model type {config.model_type!r} is not a supported architecture "
                     f"({', '.join(sorted(FAMILIES))})")


__all__ = ["FAMILIES", "Family", "Preprocessing", "family_for_config", "get_family"]
