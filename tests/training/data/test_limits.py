"""One definition of the clip limits: validation accepts what the engine decodes, and the engine
decodes the largest accepted frames within the memory bound the limits state."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from training.data.frames import ClipError, decode_frames
from training.data.limits import CLIP_LIMITS, clip_memory_bytes, max_clip_memory_bytes
from training.data.synthetic import write_test_clip
from training.data.validation import ValidationLimits
from training.data.video_probe import ClipError as ProbeError
from training.data.video_probe import probe_clip


def test_validation_uses_the_engines_limits():
    assert ValidationLimits().clip is CLIP_LIMITS
    # the worst case the limits allow: 4096x2160, 10-bit, 256 frames at 768x768
    assert max_clip_memory_bytes() == clip_memory_bytes(4096 * 2160, frames=256, target_pixels=768 * 768)
    assert max_clip_memory_bytes() < 2 * 1024**3


def test_a_frame_over_the_limit_is_refused_by_validation_and_engine_alike(tmp_path):
    clip = write_test_clip(tmp_path / "big.mkv", codec="mpeg4", frames=1, width=4096, height=2176)
    expected = "is 4096x2176 (8912896 pixels), more than the limit of 8847360 pixels a frame"
    with pytest.raises(ProbeError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        probe_clip(clip)
    with pytest.raises(ClipError, match=r"big.mkv: is 4096x2176"):
        decode_frames(clip, 4, (32, 32))


def test_the_largest_accepted_frames_decode_within_the_stated_bound(tmp_path):
    width, height, frames = 4096, 2160, 6
    clip = write_test_clip(tmp_path / "dci4k.mp4", frames=frames, width=width, height=height, fps=30,
                           encoder_options={"preset": "ultrafast"})
    assert probe_clip(clip).width == width  # validation accepts it
    child = ("import json, resource, sys\n"
             "from training.data.frames import decode_frames\n"
             "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
             "x = decode_frames(sys.argv[1], 8, (224, 224))\n"
             "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
             "print(json.dumps({'shape': list(x.shape), 'growth': (after - before) * 1024}))\n")
    out = subprocess.run([sys.executable, "-c", child, str(clip)], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout)
    assert result["shape"] == [8, 3, 224, 224]
    bound = clip_memory_bytes(width * height, frames=8, target_pixels=224 * 224, high_bit_depth=False)
    assert result["growth"] < bound, (result["growth"] / 2**20, bound / 2**20)
