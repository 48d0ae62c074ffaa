"""Decoding ahead of the training loop (`training.data.loader.BatchFeeder`): worker processes
give exactly the batches the in-process path gives, in the plan's order, without touching the
global RNG (dropout's, which a resume restores); `QLORA_DATA_WORKERS` sets how many."""

from __future__ import annotations

import os

import pytest
import torch

from training.data.loader import BatchFeeder, ClipDataset, collate, epoch_batches, read_examples
from training.loading import read_base_model


@pytest.fixture(scope="module")
def clips(tiny_models, colour_dataset):
    base = read_base_model(tiny_models("video_llama", "video_classification"))
    examples = [e for e, _ in read_examples(colour_dataset, "video_classification")]
    label2id = {label: i for i, label in enumerate(sorted({e.label for e in examples}))}

    def dataset() -> ClipDataset:  # a fresh one each time: nothing decoded, nothing cached
        return ClipDataset(examples, task="video_classification", family=base.family, prep=base.prep,
                           tokenizer=base.tokenizer, frames=4, label2id=label2id)

    return dataset, base.tokenizer.pad_token_id


def test_workers_give_the_in_process_batches_in_the_plans_order(clips):
    dataset, pad = clips
    n = len(dataset())
    plan = epoch_batches(n, 5, seed=3, epoch=0) + epoch_batches(n, 5, seed=3, epoch=1)
    expected_set = dataset()
    expected = [collate(expected_set.items(b), pad) for b in plan]
    rng = torch.get_rng_state()
    feeder = BatchFeeder(dataset(), plan, pad, workers=2, seed=3)
    try:
        for indices, want in zip(plan, expected):
            batch, count = feeder.next_batch(indices)
            assert count == len(indices)
            assert batch["index"].tolist() == indices
            for key in ("frames", "input_ids", "attention_mask", "class_labels"):
                assert torch.equal(batch[key], want[key]), key
        with pytest.raises(RuntimeError, match="exhausted"):
            feeder.next_batch(plan[0])
    finally:
        feeder.close()
    assert torch.equal(torch.get_rng_state(), rng), "the feeder drew from the global RNG"


def test_a_batch_read_out_of_the_plans_order_is_an_error(clips):
    dataset, pad = clips
    plan = epoch_batches(len(dataset()), 4, seed=1, epoch=0)
    feeder = BatchFeeder(dataset(), plan, pad, workers=1, seed=1)
    try:
        with pytest.raises(RuntimeError, match="batch plan out of step"):
            feeder.next_batch(plan[1])
    finally:
        feeder.close()


def test_the_number_of_workers_is_a_setting(monkeypatch):
    from training.settings import SettingsError, get_settings

    monkeypatch.delenv("QLORA_DATA_WORKERS", raising=False)
    assert get_settings().data_worker_count == min(4, max(1, (os.cpu_count() or 2) // 2))
    monkeypatch.setenv("QLORA_DATA_WORKERS", "0")
    assert get_settings().data_worker_count == 0
    monkeypatch.setenv("QLORA_DATA_WORKERS", "-1")
    with pytest.raises(SettingsError, match="QLORA_DATA_WORKERS"):
        get_settings()
