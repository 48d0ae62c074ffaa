"""Loading a base model for QLoRA: NF4 4-bit with double quantization (bitsandbytes), or the
16/32-bit baseline (`--quantization none`), on CUDA when present.

Compute dtype: bf16 on a GPU; fp32 on the CPU (bf16 matmuls are slow and lossy there).
CPU bug worked around here: on CPUs with avx512_bf16, bitsandbytes repacks 4-bit weights in
place on the first eval-mode forward (and in `generate()`), after which training silently stops
and odd widths crash; `support_avx512bf16_for_cpu = False` on every `Linear4bit` avoids both.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import BitsAndBytesConfig

from training.models.base import Family


def device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def compute_dtype(dev: torch.device) -> torch.dtype:
    return torch.bfloat16 if dev.type == "cuda" else torch.float32


def bnb_config(dev: torch.device, skip_modules: list[str]) -> BitsAndBytesConfig:
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype(dev), bnb_4bit_quant_storage=torch.uint8,
                              llm_int8_skip_modules=skip_modules)


def disable_cpu_repack(model: torch.nn.Module) -> int:
    """Sets `support_avx512bf16_for_cpu = False` on every bitsandbytes `Linear4bit`; returns how many."""
    import bitsandbytes as bnb

    count = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
            count += 1
    return count


def load_base_model(model_dir: str | Path, family: Family, quantization: str, dev: torch.device,
                    extra_skip: tuple[str, ...] = ()) -> torch.nn.Module:
    """The transformers model of `family` from `model_dir`, quantized or not, on `dev`."""
    cls = family.model_class()
    dtype = compute_dtype(dev)
    if quantization == "nf4":
        skip = ["lm_head", *family.trainable_modules, *extra_skip]
        model = cls.from_pretrained(str(model_dir), quantization_config=bnb_config(dev, skip),
                                    device_map={"": str(dev)}, dtype=dtype)
        disable_cpu_repack(model)
    else:
        model = cls.from_pretrained(str(model_dir), dtype=dtype).to(dev)
    return model
