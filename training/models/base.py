"""What every architecture entry provides, and the preprocessing config saved beside a model."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import torch

PREPROCESSING_FILE = "preprocessing_config.json"


@dataclass
class Preprocessing:
    """How clips and text become model inputs; saved as `preprocessing_config.json`."""

    architecture: str
    frames: int = 4
    #: square frame size; 0 where it depends on the clip (VideoLLaMA 3's dynamic resolution).
    #: The processing values (size, resample, rescale, mean/std, `extra`) come from the model's
    #: processor config files (`training.models.preprocess`), not from this file's defaults
    image_size: int = 32
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    #: PIL resample code of the resize (3: bicubic) and the factor taking uint8 to [0, 1]
    resample: int = 3
    rescale_factor: float = 1 / 255
    caption_prompt: str = "describe the video:"
    classification_prompt: str = "what is in the video?"
    max_new_tokens: int = 16
    #: architecture specific values (video token, patch/merge sizes, image tokens)
    extra: dict[str, Any] = field(default_factory=dict)

    def save_pretrained(self, folder: str | Path) -> None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / PREPROCESSING_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> "Preprocessing":
        data = json.loads((Path(folder) / PREPROCESSING_FILE).read_text())
        known = {f.name for f in fields(cls)}
        data = {k: v for k, v in data.items() if k in known}
        for key in ("image_mean", "image_std"):
            if key in data:
                data[key] = tuple(data[key])
        return cls(**data)


class Family:
    """One architecture: its class, tiny config, visual inputs and trainable modules."""

    name: ClassVar[str]
    #: module names (relative to the transformers model) kept fully trainable and unquantized
    trainable_modules: ClassVar[tuple[str, ...]] = ()

    def model_class(self) -> type:
        raise NotImplementedError

    def special_tokens(self) -> list[str]:
        raise NotImplementedError

    def tiny_config(self, tokenizer, prep: Preprocessing):
        raise NotImplementedError

    def tiny_preprocessing(self) -> Preprocessing:
        raise NotImplementedError

    def tiny_init(self, model) -> None:
        """Adjusts the random init of a freshly built tiny model (default: nothing)."""

    def visual_prefix(self, tokenizer, prep: Preprocessing, num_frames: int) -> list[int]:
        """Token ids standing for the clip at the start of the prompt."""
        raise NotImplementedError

    def visual_inputs(self, frames: torch.Tensor, attention_mask: torch.Tensor,
                      prep: Preprocessing, frame_counts: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Model keyword arguments for a batch of normalised frames (B, T, 3, S, S); with
        `frame_counts` (B,), clip b has only its first frame_counts[b] frames (the rest is padding)."""
        raise NotImplementedError

    def check_tokenizer(self, tokenizer, config) -> None:
        """Raises ValueError when the tokenizer lacks the tokens this model needs."""

    @staticmethod
    def inner_model(model):
        """The backbone (without LM head) whose `last_hidden_state` feeds a classification head."""
        return model.model
