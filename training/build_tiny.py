"""`python -m training build-tiny`: a tiny model of a real architecture class, random weights,
hidden sizes >= 64, with its offline tokenizer, its processor config files (as a published
checkpoint has them: the engine reads both the same way) and preprocessing config. Loadable with
`from_pretrained`; a few hundred KB; built in well under a second once torch is imported."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers.utils import logging as hf_logging

from training.model_info import ModelInfo, tiny_build_id
from training.models import get_family
from training.models.preprocess import write_processor_files
from training.models.tokenizer import build_tokenizer


def build_tiny(architecture: str, task: str, out: str | Path, *, labels: list[str] | None = None,
               catalog_id: str | None = None, seed: int = 0) -> Path:
    hf_logging.disable_progress_bar()
    family = get_family(architecture)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(family.special_tokens())
    prep = family.tiny_preprocessing()
    config = family.tiny_config(tokenizer, prep)
    torch.manual_seed(seed)
    model = family.model_class()(config)
    family.tiny_init(model)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    prep.save_pretrained(out)
    write_processor_files(prep, out)  # read back by the engine like a real checkpoint's
    ModelInfo(architecture=architecture, task=task, catalog_id=catalog_id, tiny=True,
              labels=list(labels or []), build_id=tiny_build_id()).save(out)
    return out
