"""Frame sampling, resizing and batching of the engine's data loader."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from training.errors import InputError
from training.data.frames import (ClipError, decode_frames, resize_and_normalise, sample_indices,
                                  sample_indices_fps)
from training.data.loader import epoch_batches, read_examples, split_examples
from training.data.synthetic import make_dataset, pattern_image, read_pattern, write_clip, write_test_clip


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


# --- bounded-memory decoding ---------------------------------------------------------------

def _indices(frames: torch.Tensor) -> list[int]:
    return [read_pattern(f.numpy()) for f in frames]


@pytest.mark.parametrize("gop", [4, 250])
def test_sampled_frames_are_the_uniform_ones_with_and_without_seeking(tmp_path, gop):
    clip = write_test_clip(tmp_path / "c.mp4", frames=150, gop=gop,
                           encoder_options={"bf": "2", "x264-params": "scenecut=0"})
    stats = {}
    frames = decode_frames(clip, 5, (32, 24), stats=stats)
    assert frames.shape == (5, 3, 24, 32) and frames.dtype == torch.uint8
    assert _indices(frames) == sample_indices(150, 5) == [15, 45, 75, 105, 135]
    assert stats["frames"] == 150 and stats["converted"] == 5
    if gop == 4:  # keyframes every 4 frames: it seeks past what it does not need
        assert stats["seeks"] == 5 and stats["decoded"] <= 5 * 4 + 4
    else:  # one GOP: seeking cannot skip anything, so it decodes through once
        assert stats["seeks"] == 1 and stats["decoded"] == 136  # frames 0..135


def test_memory_is_bounded_by_the_sampled_frames_not_the_clip(tmp_path):
    """90 frames of 1280x720 would be 237 MiB as full-size RGB (what the engine held before)."""
    clip = write_test_clip(tmp_path / "hd.mp4", frames=90, width=1280, height=720, fps=30,
                           encoder_options={"preset": "ultrafast"})
    child = ("import json, resource, sys\n"
             "from training.data.frames import decode_frames\n"
             "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
             "x = decode_frames(sys.argv[1], 8, (64, 64))\n"
             "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
             "print(json.dumps({'shape': list(x.shape), 'growth_mib': (after - before) / 1024}))\n")
    out = subprocess.run([sys.executable, "-c", child, str(clip)], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout)
    assert result["shape"] == [8, 3, 64, 64]
    assert result["growth_mib"] < 80, result


@pytest.mark.parametrize("rotation, upright", [(90, (64, 48)), (-90, (64, 48)), (180, (48, 64))])
def test_rotated_clips_come_out_upright(tmp_path, rotation, upright):
    """A phone's portrait clip: stored landscape with a display rotation; the engine turns each
    frame as a player would (counter-clockwise by the stored degrees)."""
    clip = write_test_clip(tmp_path / "phone.mp4", frames=4, width=64, height=48, rotation=rotation)
    frames = decode_frames(clip, 1)  # frame 2 of 4: stripe 6 of 8 white (binary 00000010)
    assert tuple(frames.shape[-2:]) == upright  # (height, width) of the upright picture
    stored = torch.from_numpy(pattern_image(2, 64, 48)).permute(2, 0, 1)
    expected = torch.rot90(stored, k=(rotation // 90) % 4, dims=(1, 2))
    assert (frames[0].float() - expected.float()).abs().mean() < 4
    wrong_way = torch.rot90(stored, k=(-rotation // 90) % 4, dims=(1, 2))
    assert rotation == 180 or (frames[0].float() - wrong_way.float()).abs().mean() > 20
    # a requested (width, height) is the upright one: the scaler runs before turning
    assert tuple(decode_frames(clip, 2, (20, 30)).shape) == (2, 3, 30, 20)


def test_variable_frame_rate_samples_evenly_in_time(tmp_path):
    """12 frames: the first 10 within 1 s, the last 2 one second apart (a VFR phone clip)."""
    times = [i * 0.1 for i in range(10)] + [2.0, 3.0]
    clip = write_test_clip(tmp_path / "vfr.mkv", frames=12, times=times)
    assert _indices(decode_frames(clip, 4)) == sample_indices(12, 4) == [1, 4, 7, 10]
    # one frame a second: the frame on screen at 0, 1, 2 and 3 s
    assert _indices(decode_frames(clip, 8, fps=1.0)) == [0, 9, 10, 11]
    assert sample_indices_fps([0.0, 0.5, 1.0], 10.0, max_frames=4) == sample_indices(3, 4)


@pytest.mark.parametrize("name, options", [
    ("ten_bit_hevc.mkv", dict(codec="hevc", pix_fmt="yuv420p10le")),
    ("ten_bit_av1.mkv", dict(codec="av1", pix_fmt="yuv420p10le", width=63, height=47)),
    ("odd_h264.mp4", dict(codec="h264", pix_fmt="yuv444p", width=63, height=47)),
    ("odd_mpeg4.avi", dict(codec="mpeg4", width=63, height=47)),
    ("audio_vp9.webm", dict(codec="vp9", audio=True)),
    ("audio_h264.mov", dict(codec="h264", audio=True)),
])
def test_ten_bit_odd_sizes_and_audio_tracks_decode(tmp_path, name, options):
    clip = write_test_clip(tmp_path / name, frames=12, **options)
    frames = decode_frames(clip, 3, (32, 32))
    assert frames.shape == (3, 3, 32, 32)
    assert _indices(frames) == sample_indices(12, 3)
