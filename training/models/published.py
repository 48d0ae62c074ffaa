"""The published checkpoints of the catalog's real entries, offline: their small JSON files
(`config.json`, processor configs, tokenizer config) are kept in `checkpoints/<owner>__<name>/`
(sources in its README), so the engine can build the exact architecture without the hub.

`build_published` writes a loadable model folder from them: the published config (optionally
cut to a few layers and small hidden sizes, keeping the vision resolution, patch size, merge
size, vocabulary and special token ids), random weights, the published processor config files
as they are, and a stand-in tokenizer: a small byte-level BPE that holds every special token of
the published tokenizer config at its published id (the real vocabularies are megabytes and not
kept). Used by the tests (a real entry cut to two layers trains on the CPU) and by the GPU
benchmark (the full-size architecture with random weights).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from training.models.preprocess import IMAGE_PROCESSOR_FILE, VIDEO_PROCESSOR_FILE

CHECKPOINTS_DIR = Path(__file__).with_name("checkpoints")
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"

#: the cut used by the tests: transformer depth and widths shrink, everything the data pipeline
#: sees (vision resolution, patch/merge sizes, perceiver latents, vocabulary, token ids) stays
CUT = {
    "video_llama": {"text_config": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                                    "num_attention_heads": 4, "num_key_value_heads": 2, "max_window_layers": 2,
                                    "layer_types": ["full_attention"] * 2},
                    "vision_config": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1,
                                      "num_attention_heads": 4}},
    # 4 text layers: one gated cross-attention block at the published interval of 4 (IDEFICS
    # builds num_hidden_layers // cross_layer_interval of them, so 2 layers would have none)
    "flamingo": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4,
                 "vision_config": {"embed_dim": 64, "intermediate_size": 128, "num_hidden_layers": 1,
                                   "num_attention_heads": 4},
                 "perceiver_config": {"resampler_depth": 1, "resampler_n_heads": 2, "resampler_head_dim": 32}},
}


def checkpoint_folder(checkpoint: str) -> Path:
    """The stored files of a published checkpoint (`owner/name`)."""
    folder = CHECKPOINTS_DIR / checkpoint.replace("/", "__")
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"no stored config of {checkpoint} in {CHECKPOINTS_DIR}")
    return folder


def published_config(checkpoint: str, cut: dict | None = None):
    """The checkpoint's transformers config, with `cut` (nested dict of overrides) applied."""
    from transformers import AutoConfig

    data = json.loads((checkpoint_folder(checkpoint) / "config.json").read_text())
    for key, value in (cut or {}).items():
        if isinstance(value, dict):
            data[key] = {**data.get(key, {}), **value}
        else:
            data[key] = value
    model_type = data.pop("model_type")
    return AutoConfig.for_model(model_type, **data)


def _tokenizer_config(checkpoint: str) -> dict:
    return json.loads((checkpoint_folder(checkpoint) / TOKENIZER_CONFIG_FILE).read_text())


def standin_tokenizer(checkpoint: str):
    """A byte-level BPE tokenizer (any text encodes) whose special tokens are the published
    tokenizer's, at the published ids; its ordinary tokens take the ids the specials leave free."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from training.models.tokenizer import build_tokenizer

    cfg = _tokenizer_config(checkpoint)
    specials = {int(i): d["content"] for i, d in cfg.get("added_tokens_decoder", {}).items()}
    base = build_tokenizer([])  # trained byte-level BPE: its own 4 specials, bytes, merges
    state = json.loads(base.backend_tokenizer.to_str())
    ordinary = [t for t, _ in sorted(state["model"]["vocab"].items(), key=lambda kv: kv[1])
                if t not in ("<pad>", "<s>", "</s>", "<unk>")]
    vocab, next_id = {content: i for i, content in specials.items()}, 0
    for token in ordinary:
        while next_id in specials:
            next_id += 1
        vocab[token] = next_id
        next_id += 1
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["model"]["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    names = {k: cfg.get(k) for k in ("bos_token", "eos_token", "pad_token", "unk_token")}
    names = {k: (v["content"] if isinstance(v, dict) else v) for k, v in names.items() if v}
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **names)
    fast.add_special_tokens({"additional_special_tokens": [specials[i] for i in sorted(specials)
                                                           if specials[i] not in names.values()]})
    fast.padding_side = "right"
    for content, i in ((c, i) for i, c in specials.items()):
        assert fast.convert_tokens_to_ids(content) == i, (content, i)
    return fast


def build_published(checkpoint: str, architecture: str, task: str, out: str | Path, *, cut: bool = True,
                    catalog_id: str | None = None, frames: int = 8, seed: int = 0) -> Path:
    """A loadable folder of `checkpoint`'s architecture (cut to `CUT` unless `cut` is False),
    random weights, the published processor configs and the stand-in tokenizer."""
    import torch
    from transformers.utils import logging as hf_logging

    from training.model_info import ModelInfo
    from training.models import get_family
    from training.models.base import Preprocessing
    from training.models.preprocess import read_preprocessing

    hf_logging.disable_progress_bar()
    family = get_family(architecture)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = published_config(checkpoint, CUT[architecture] if cut else None)
    torch.manual_seed(seed)
    model = family.model_class()(config)
    model.save_pretrained(out)
    standin_tokenizer(checkpoint).save_pretrained(out)
    source = checkpoint_folder(checkpoint)
    for name in (IMAGE_PROCESSOR_FILE, VIDEO_PROCESSOR_FILE):
        if (source / name).is_file():
            shutil.copyfile(source / name, out / name)
    read_preprocessing(out, architecture, Preprocessing(architecture=architecture, frames=frames)).save_pretrained(out)
    ModelInfo(architecture=architecture, task=task, catalog_id=catalog_id, tiny=False).save(out)
    return out
