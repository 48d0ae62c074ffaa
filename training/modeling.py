"""The task on top of a video LM: loss and predictions for captioning and classification.

Classification uses a linear head on the mean-pooled last hidden state (over the tokens the
attention mask keeps: the clip's visual tokens and the prompt), not label-as-text. Why: the
head predicts exactly one of the dataset's labels in one forward pass (no generation, no
parsing of free text, no label that the tokenizer splits oddly), gives class probabilities for
accuracy/F1, and stays tiny. The head (`classifier`) is created at fine-tune time from the
dataset's labels, trained fully (LoRA `modules_to_save`, never quantized) and saved inside
`adapter_model.safetensors` with `label_map.json` beside it.
"""

from __future__ import annotations

import torch
from torch import nn

from training.models.base import Family, Preprocessing

CLASSIFIER = "classifier"


def unwrap(model: nn.Module) -> nn.Module:
    """The transformers model inside a PEFT wrapper (LoRA layers stay injected)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def hidden_size(model: nn.Module) -> int:
    return unwrap(model).get_output_embeddings().in_features


def attach_classifier(model: nn.Module, num_labels: int, seed: int) -> nn.Linear:
    """Adds a fresh `classifier` head (fp32) to the transformers model."""
    generator = torch.Generator().manual_seed(seed)
    head = nn.Linear(hidden_size(model), num_labels)
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=generator) * 0.02)
        head.bias.zero_()
    dev = next(model.parameters()).device
    setattr(unwrap(model), CLASSIFIER, head.to(dev))
    return head


def model_inputs(family: Family, prep: Preprocessing, batch: dict, dev: torch.device,
                 dtype: torch.dtype) -> dict[str, torch.Tensor]:
    inputs = {"input_ids": batch["input_ids"].to(dev), "attention_mask": batch["attention_mask"].to(dev)}
    if batch.get("frame_counts") is None:
        visual = family.visual_inputs(batch["frames"], batch["attention_mask"], prep)
    else:  # clips of different lengths (fps sampling): zero frames pad the shorter ones
        visual = family.visual_inputs(batch["frames"], batch["attention_mask"], prep,
                                      frame_counts=batch["frame_counts"])
    for key, value in visual.items():
        value = value.to(dev)
        inputs[key] = value.to(dtype) if value.is_floating_point() else value
    return inputs


def classification_logits(model: nn.Module, family: Family, inputs: dict) -> torch.Tensor:
    inner = unwrap(model)
    hidden = family.inner_model(inner)(**inputs, use_cache=False).last_hidden_state
    mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
    head = getattr(inner, CLASSIFIER)
    return head(pooled.to(torch.float32))


def batch_loss(model: nn.Module, family: Family, task: str, prep: Preprocessing, batch: dict,
               dev: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(loss, classification logits or None) of one batch."""
    inputs = model_inputs(family, prep, batch, dev, dtype)
    if task == "video_classification":
        logits = classification_logits(model, family, inputs)
        return nn.functional.cross_entropy(logits, batch["class_labels"].to(dev)), logits
    return caption_loss(model(**inputs, use_cache=False).logits, batch["labels"].to(dev)), None


def caption_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy over the caption tokens (labels -100 elsewhere), in fp32: what
    transformers' causal-LM loss computes, over all of the logits' columns. (IDEFICS' own loss
    reshapes its logits to `config.vocab_size` columns and fails on the published checkpoints,
    whose decoupled head adds `additional_vocab_size` 3 columns for its image tokens.)"""
    shifted = logits[:, :-1].float()
    return nn.functional.cross_entropy(shifted.reshape(-1, shifted.shape[-1]), labels[:, 1:].reshape(-1),
                                       ignore_index=-100)
