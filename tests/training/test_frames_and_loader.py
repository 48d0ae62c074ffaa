"""Frame sampling, resizing and batching of the engine's data loader."""

from __future__ import annotations

import pytest
import torch

from training.errors import InputError
from training.data.frames import ClipError, decode_frames, resize_and_normalise, sample_indices
from training.data.loader import epoch_batches, read_examples, split_examples
from training.data.synthetic import make_dataset, write_clip


def test_uniform_sampling_spreads_over_the_clip():
    assert sample_indices(16, 4) == [2, 6, 10, 14]
    assert sample_indices(2, 4) == [0, 0, 1, 1]  # short clips repeat frames


def test_decoded_frames_show_the_square_moving(tmp_path):
    clip = write_clip(tmp_path / "c.mp4", "red", "right", frames=16, size=64)
    frames = decode_frames(clip, 4)
    assert frames.shape == (4, 3, 64, 64) and frames.dtype == torch.uint8
    red = frames[:, 0].float() - frames[:, 2].float()  # red minus blue: the square
    xs = [float((r > 100).nonzero()[:, 1].float().mean()) for r in red]
    assert xs == sorted(xs) and xs[-1] - xs[0] > 20
    pixels = resize_and_normalise(frames, 32, (0.5,) * 3, (0.5,) * 3)
    assert pixels.shape == (4, 3, 32, 32) and -1.01 <= float(pixels.min()) and float(pixels.max()) <= 1.01


def test_unreadable_clip_names_the_file(tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video")
    with pytest.raises(ClipError, match="broken.mp4"):
        decode_frames(bad, 4)


def test_seeded_split_is_stratified_and_reproducible(tmp_path):
    folder = make_dataset(tmp_path / "d", 20, label_by="colour", size=32, frames=4, validation_fraction=0)
    rows = read_examples(folder, "video_classification")
    first, again = (split_examples(rows, "video_classification", 7, 0.2) for _ in range(2))
    assert first.source == "seeded"
    assert [e.file_name for e in first.held_out] == [e.file_name for e in again.held_out]
    assert sorted(e.label for e in first.held_out) == ["blue", "blue", "red", "red"]
    table = split_examples(read_examples(make_dataset(tmp_path / "t", 8, size=32, frames=4), "video_captioning"),
                           "video_captioning", 0, 0.5)
    assert table.source == "table" and len(table.held_out) == 2


def test_missing_captions_are_reported(tmp_path):
    folder = make_dataset(tmp_path / "d", 4, with_captions=False, size=32, frames=4)
    with pytest.raises(InputError, match="no 'caption' column"):
        read_examples(folder, "video_captioning")


def test_epoch_batches_cover_every_example_once_per_epoch():
    batches = epoch_batches(10, 4, seed=1, epoch=0)
    assert sorted(i for b in batches for i in b) == list(range(10)) and [len(b) for b in batches] == [4, 4, 2]
    assert batches == epoch_batches(10, 4, seed=1, epoch=0) != epoch_batches(10, 4, seed=1, epoch=1)
