"""PyAV clip checks: real clips pass with their stats, broken ones say precisely why."""

from __future__ import annotations

import os

import pytest

from training.data.synthetic import write_clip
from training.data.video_probe import ClipError, ClipLimits, probe_clip


@pytest.mark.parametrize("codec, suffix", [("libx264", ".mp4"), ("libvpx-vp9", ".webm"),
                                           ("mpeg4", ".avi")])
def test_real_clip_stats(tmp_path, codec, suffix):
    clip = write_clip(tmp_path / f"c{suffix}", "red", "left", frames=12, size=48, fps=6, codec=codec)
    stats = probe_clip(clip)
    assert (stats.frames, stats.width, stats.height) == (12, 48, 48)
    assert stats.duration_s == pytest.approx(2.0, abs=0.2)
    assert stats.fps == pytest.approx(6.0)


def test_random_bytes_named_mp4(tmp_path):
    clip = tmp_path / "noise.mp4"
    clip.write_bytes(os.urandom(4000))
    with pytest.raises(ClipError, match="cannot be opened as a video"):
        probe_clip(clip)


@pytest.mark.parametrize("keep", [0.5, 0.95])
def test_truncated_mp4(tmp_path, keep):
    data = write_clip(tmp_path / "ok.mp4", "blue", "right").read_bytes()
    clip = tmp_path / "cut.mp4"
    clip.write_bytes(data[:int(len(data) * keep)])
    with pytest.raises(ClipError, match="cannot be opened|cannot be decoded|frames its header declares"):
        probe_clip(clip)


def test_empty_and_missing_files(tmp_path):
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(ClipError, match="empty"):
        probe_clip(tmp_path / "empty.mp4")
    with pytest.raises(ClipError, match="does not exist"):
        probe_clip(tmp_path / "nope.mp4")


def test_audio_only_file_has_no_video_stream(tmp_path):
    import av
    import numpy as np

    path = tmp_path / "sound.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), dtype=np.float32), format="fltp",
                                           layout="mono")
        frame.sample_rate = 16000
        for packet in [*stream.encode(frame), *stream.encode()]:
            container.mux(packet)
    with pytest.raises(ClipError, match="no video stream"):
        probe_clip(path)


def test_frame_and_duration_limits(tmp_path):
    clip = write_clip(tmp_path / "c.mp4", "red", "left", frames=16, fps=8)
    with pytest.raises(ClipError, match="more than 10 frames"):
        probe_clip(clip, ClipLimits(max_frames=10))
    with pytest.raises(ClipError, match="lasts 2.0 s, longer than the limit of 1 s"):
        probe_clip(clip, ClipLimits(max_duration_s=1))
    with pytest.raises(ClipError, match="decodes to 16 frames"):
        probe_clip(clip, ClipLimits(min_frames=20))
