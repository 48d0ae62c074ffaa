"""The catalog's real entries: each names a checkpoint whose stored files load into its class
without remote code, and its architecture (published config cut to a few layers and small
widths, but the published vision resolution, patch and merge sizes, vocabulary, special token
ids and processor config) trains two NF4 steps on the CPU through the engine, with the
checkpoint's preprocessing."""

from __future__ import annotations

import json

import pytest

from training.catalog import load_catalog
from training.cli import main
from training.data.synthetic import make_dataset
from training.models.published import build_published, checkpoint_folder, published_config
from training.result import RunStatus, read_result

REAL = [m for m in load_catalog().models if not m.tiny]


def test_every_real_entry_names_a_stored_native_checkpoint():
    assert {m.base_architecture for m in REAL} == {"video_llama", "flamingo"}
    assert {m.checkpoint for m in REAL} == {"lkhl/VideoLLaMA3-2B-Image-HF", "lkhl/VideoLLaMA3-7B-Image-HF",
                                            "HuggingFaceM4/idefics-9b-instruct"}
    for model in REAL:
        config = published_config(model.checkpoint)
        assert config.architectures == [model.architecture_class]  # no auto_map: loads without remote code
        assert not hasattr(config, "auto_map")
        assert (checkpoint_folder(model.checkpoint) / "tokenizer_config.json").is_file()
    vl3 = published_config(next(m.checkpoint for m in REAL if m.base_architecture == "video_llama"))
    assert (vl3.model_type, vl3.text_config.hidden_size, vl3.text_config.num_hidden_layers) == ("video_llama_3", 3584, 28)
    assert (vl3.vision_config.patch_size, vl3.video_token_id) == (14, 151656)
    idefics = published_config(next(m.checkpoint for m in REAL if m.base_architecture == "flamingo"))
    assert (idefics.hidden_size, idefics.cross_layer_interval, idefics.additional_vocab_size) == (4096, 4, 3)
    assert (idefics.vision_config.image_size, idefics.perceiver_config.resampler_n_latents) == (224, 64)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """5 clips (64x64, 8 frames), one held out."""
    return make_dataset(tmp_path_factory.mktemp("real-clips"), 5, size=64, frames=8, validation_fraction=0.2)


@pytest.mark.parametrize("architecture", ["video_llama", "flamingo"])
def test_real_architecture_trains_two_nf4_steps_with_its_preprocessing(tmp_path, clips, architecture):
    from training.data.loader import ClipDataset, read_examples
    from training.loading import read_base_model
    from training.models.preprocess import compression_mask, patchify

    entry = next(m for m in REAL if m.base_architecture == architecture and m.model_type == "video_captioning")
    model = build_published(entry.checkpoint, architecture, entry.model_type, tmp_path / "model",
                            catalog_id=entry.id, frames=4)
    config = json.loads((model / "config.json").read_text())
    base = read_base_model(model)
    examples = [e for e, _ in read_examples(clips, entry.model_type)]
    dataset = ClipDataset(examples, task=entry.model_type, family=base.family, prep=base.prep,
                          tokenizer=base.tokenizer, frames=4)
    item = dataset[0]
    if architecture == "video_llama":
        assert config["vision_config"]["patch_size"] == 14 and config["text_config"]["num_hidden_layers"] == 2
        # 64x64 frames are below the published 12544-pixel minimum: resized up to 112x112 (8x8
        # patches of 14, 16 tokens of 2x2) as VideoLlama3VideoProcessor does
        assert item["frames"].shape == (4, 3, 112, 112)
        assert base.tokenizer.bos_token_id is None  # Qwen2's tokenizer: no BOS in the prompt
        kept = int(compression_mask(patchify(item["frames"], 14, 2), 4, 2).sum())
        assert 4 <= kept < 64  # the dark background of later frames is compressed away
        assert item["prompt_ids"].count(151656) == kept
        # the first of 4 frames sampled uniformly from 8 at 8 fps is frame 1, shown at 0.125 s
        first = item["prompt_ids"].index(151656)
        assert base.tokenizer.decode(item["prompt_ids"][:first]) == "Time 0.1s:"
    else:
        assert config["vision_config"]["image_size"] == 224 and config["cross_layer_interval"] == 4
        assert config["num_hidden_layers"] == 4  # one gated cross-attention block
        assert item["frames"].shape == (4, 3, 224, 224)
        assert item["prompt_ids"][:10] == [1, 32000, 32001, 32000, 32001, 32000, 32001, 32000, 32001, 32000]

    out = tmp_path / "out"
    code = main(["run", "--model", str(model), "--data", str(clips), "--task", entry.model_type,
                 "--output", str(out), "--batch-size", "2", "--frames", "4", "--epochs", "1",
                 "--quantization", "nf4", "--mlflow-uri", ""])
    assert code == 0
    result = read_result(out)
    assert result.status == RunStatus.COMPLETED and result.step == result.total_steps == 2
    log = (out / "train.log").read_text()
    assert "nf4" in log.lower()
    # the adapter carries the checkpoint's processor config values
    saved = json.loads((out / "preprocessing_config.json").read_text())
    if architecture == "video_llama":
        assert saved["extra"]["max_pixels"] == 12845056 and saved["extra"]["merge_size"] == 2
    else:
        assert saved["image_size"] == 224 and saved["image_std"][0] == pytest.approx(0.26862954)


def test_the_engines_caption_loss_is_transformers_causal_lm_loss(tiny_models, colour_dataset):
    """`modeling.caption_loss` (the engine's, needed for IDEFICS' published decoupled head) equals
    the loss transformers computes from `labels` where that works (a tiny VideoLLaMA 3)."""
    import torch

    from training.data.loader import ClipDataset, collate, read_examples
    from training.loading import read_base_model
    from training.modeling import caption_loss, model_inputs

    base = read_base_model(tiny_models("video_llama", "video_captioning"))
    examples = [e for e, _ in read_examples(colour_dataset, "video_captioning")][:2]
    dataset = ClipDataset(examples, task="video_captioning", family=base.family, prep=base.prep,
                          tokenizer=base.tokenizer, frames=4)
    batch = collate([dataset[0], dataset[1]], base.tokenizer.pad_token_id)
    model = base.family.model_class().from_pretrained(str(base.folder))
    inputs = model_inputs(base.family, base.prep, batch, torch.device("cpu"), torch.float32)
    with torch.no_grad():
        out = model(**inputs, labels=batch["labels"], use_cache=False)
    assert caption_loss(out.logits, batch["labels"]).item() == pytest.approx(out.loss.item(), rel=1e-5)
