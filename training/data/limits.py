"""The limits on clips, in one place: what validation accepts is what the engine can decode.

The engine (`training.data.frames`) never holds a clip's frames as RGB: it keeps the sampled
frames at the model's size, plus what the decoder itself needs, which grows with the frame size
(reference frames and one frame per decoding thread) and not with the clip's length. So:

* the frame size is capped (`max_width`, `max_height`, and `max_pixels` for their product: the
  decoder's memory), and so is the number of decoding threads (`DECODE_THREADS`);
* the length (`max_frames`, `max_duration_s`) caps the time one clip takes to decode (and to
  validate), not memory: the demux index is 16 bytes a frame;
* `clip_memory_bytes` is the bound of one clip's decoding for given sizes, and
  `max_clip_memory_bytes` that bound for the largest clip validation accepts; tests hold the
  engine to it.

Validation (`training.data.video_probe`, `training.data.validation`) and the engine import these;
nothing else defines a clip limit.
"""

from __future__ import annotations

from dataclasses import dataclass

#: decoding threads per clip (frame threads each hold a decoded frame)
DECODE_THREADS = 4
#: reference frames a decoder may keep (H.264/HEVC's largest decoded picture buffer)
MAX_REFERENCE_FRAMES = 16
#: most frames a job may sample per clip (`TrainingParams.frames`' upper bound)
MAX_SAMPLED_FRAMES = 256
#: bytes per sample of a decoded frame above 8 bits (10/12-bit video)
HIGH_BIT_DEPTH_BYTES = 2


@dataclass(frozen=True)
class ClipLimits:
    min_frames: int = 1
    max_frames: int = 20_000
    #: seconds; clips longer than this are refused
    max_duration_s: float = 600.0
    max_width: int = 4096
    max_height: int = 4096
    #: width x height: DCI 4K (4096x2160) and UHD (3840x2160) pass, 4096x4096 does not
    max_pixels: int = 4096 * 2160

    def problems(self, *, frames: int, duration_s: float, width: int, height: int) -> list[str]:
        """What a clip of these measures breaks, one phrase each (empty: it is within limits)."""
        out = []
        if frames < self.min_frames:
            out.append(f"decodes to {frames} frames (at least {self.min_frames} needed)")
        if frames > self.max_frames:
            out.append(f"has more than {self.max_frames} frames")
        if duration_s > self.max_duration_s:
            out.append(f"lasts {duration_s:.1f} s, longer than the limit of {self.max_duration_s:g} s")
        if width > self.max_width or height > self.max_height:
            out.append(f"is {width}x{height}, larger than the limit of {self.max_width}x{self.max_height}")
        elif width * height > self.max_pixels:
            out.append(f"is {width}x{height} ({width * height} pixels), more than the limit of "
                       f"{self.max_pixels} pixels a frame")
        return out


CLIP_LIMITS = ClipLimits()


def clip_memory_bytes(pixels: int, *, frames: int, target_pixels: int, high_bit_depth: bool = True) -> int:
    """Upper bound of the memory the engine uses to decode one clip of `pixels` a frame into
    `frames` RGB frames of `target_pixels` pixels: the decoder's pictures (4:4:4 at most;
    references + one per thread + the one being converted) and the sampled frames."""
    sample = HIGH_BIT_DEPTH_BYTES if high_bit_depth else 1
    decoder = (MAX_REFERENCE_FRAMES + DECODE_THREADS + 2) * pixels * 3 * sample
    return decoder + frames * 3 * target_pixels


def max_clip_memory_bytes(limits: ClipLimits = CLIP_LIMITS, *, frames: int = MAX_SAMPLED_FRAMES,
                          target_pixels: int = 768 * 768) -> int:
    """`clip_memory_bytes` of the largest frames `limits` accept."""
    pixels = min(limits.max_width * limits.max_height, limits.max_pixels)
    return clip_memory_bytes(pixels, frames=frames, target_pixels=target_pixels)
