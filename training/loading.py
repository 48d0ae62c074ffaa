"""What a base model folder holds, read without loading weights; and adapter reloading."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from training.catalog import load_catalog
from training.errors import InputError
from training.model_info import ModelInfo
from training.models import Family, Preprocessing, family_for_config
from training.models.base import PREPROCESSING_FILE
from training.models.preprocess import (IMAGE_PROCESSOR_FILE, VIDEO_PROCESSOR_FILE, ProcessorConfigError,
                                        read_preprocessing)

LABEL_MAP_FILE = "label_map.json"
TRAINING_INFO_FILE = "training_info.json"


@dataclass
class BaseModel:
    folder: Path
    family: Family
    config: object
    prep: Preprocessing
    tokenizer: object
    info: ModelInfo | None
    catalog_id: str | None


def read_base_model(folder: Path, source: str | None = None) -> BaseModel:
    from transformers import AutoConfig, AutoTokenizer

    if not (folder / "config.json").is_file():
        raise InputError(f"{source or folder}: no config.json (not a transformers model folder)", field="model")
    try:
        config = AutoConfig.from_pretrained(str(folder))
    except Exception as exc:
        raise InputError(f"{source or folder}: config.json cannot be read ({exc})", field="model") from None
    try:
        family = family_for_config(config)
    except ValueError as exc:
        raise InputError(f"{source or folder}: {exc}", field="model") from None
    engine_prep = Preprocessing.from_pretrained(folder) if (folder / PREPROCESSING_FILE).is_file() else None
    try:  # sizes, resampling, mean/std, patch/merge sizes: the model's own processor config
        prep = read_preprocessing(folder, family.name, engine_prep)
    except ProcessorConfigError as exc:
        if engine_prep is None:  # a folder from before processor configs keeps its preprocessing_config.json
            raise InputError(f"{source or folder}: {exc}; copy the checkpoint's processor config files "
                             f"({IMAGE_PROCESSOR_FILE}, {VIDEO_PROCESSOR_FILE}) beside its config.json",
                             field="model") from None
        prep = engine_prep
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except Exception as exc:
        raise InputError(f"{source or folder}: tokenizer cannot be loaded ({exc})", field="model") from None
    try:
        family.check_tokenizer(tokenizer, config)
    except ValueError as exc:
        raise InputError(f"{source or folder}: {exc}", field="model") from None
    info = ModelInfo.load(folder)
    catalog_id = info.catalog_id if info else None
    if catalog_id is None and source and "/models/" in source:  # s3://bucket/models/{id}/
        candidate = source.rstrip("/").rsplit("/", 1)[-1]
        catalog_id = candidate if load_catalog().get(candidate) else None
    if catalog_id is None and load_catalog().get(folder.name):
        catalog_id = folder.name
    return BaseModel(folder, family, config, prep, tokenizer, info, catalog_id)


def read_label_map(adapter: Path) -> dict[int, str] | None:
    path = adapter / LABEL_MAP_FILE
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    return {int(i): label for i, label in data["id2label"].items()}


def load_adapter_model(base: BaseModel, adapter: Path, quantization: str, dev: torch.device, head_seed: int = 0):
    """A fresh base (4-bit or not) with the trained adapter (and classification head) on it.
    `head_seed`: the seed of the untrained head under the trained one (what the model computes
    with its adapter disabled: the training's seed gives the head its training started from)."""
    from peft import PeftModel

    from training.modeling import attach_classifier
    from training.quantization import disable_cpu_repack, load_base_model

    if not (adapter / "adapter_config.json").is_file():
        raise InputError(f"{adapter}: no adapter_config.json", field="adapter")
    model = load_base_model(base.folder, base.family, quantization, dev, extra_skip=("classifier",))
    id2label = read_label_map(adapter)
    if id2label:
        attach_classifier(model, len(id2label), seed=head_seed)
    model = PeftModel.from_pretrained(model, str(adapter))
    disable_cpu_repack(model)
    model.eval()
    return model, id2label
