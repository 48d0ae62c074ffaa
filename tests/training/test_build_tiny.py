"""`python -m training build-tiny`: tiny models of the real classes, loadable with from_pretrained."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from transformers import AutoConfig, AutoTokenizer

from training.architectures import ARCHITECTURES
from training.models.base import Preprocessing


@pytest.mark.parametrize("architecture", ["video_llama", "flamingo"])
def test_build_tiny_cli_writes_a_loadable_model(tmp_path, architecture):
    out = tmp_path / "model"
    done = subprocess.run([sys.executable, "-m", "training", "build-tiny", "--architecture", architecture,
                           "--task", "video_classification", "--out", str(out), "--labels", "left,right"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    config = AutoConfig.from_pretrained(out)
    cls_name = ARCHITECTURES[architecture].model_class
    assert config.architectures == [cls_name]
    import transformers

    model = getattr(transformers, cls_name).from_pretrained(out)
    text = getattr(config, "text_config", config)
    assert text.hidden_size >= 64
    vision = config.vision_config
    assert getattr(vision, "hidden_size", getattr(vision, "embed_dim", 0)) >= 64
    assert sum(p.numel() for p in model.parameters()) < 2_000_000
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = tokenizer("a purple zebra jumps", add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == "a purple zebra jumps"  # byte-level: any text round-trips
    assert Preprocessing.from_pretrained(out).architecture == architecture
    assert json.loads((out / "qlora_model.json").read_text())["labels"] == ["left", "right"]


def test_build_tiny_rejects_an_unknown_architecture(tmp_path):
    done = subprocess.run([sys.executable, "-m", "training", "build-tiny", "--architecture", "gpt",
                           "--task", "video_captioning", "--out", str(tmp_path / "m")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "--architecture" in done.stderr
