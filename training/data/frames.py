"""Video frames in bounded memory: only the sampled frames are converted and scaled.

`decode_frames` reads a clip in two passes with PyAV:

1. a demux pass (packets only, nothing decoded) lists the presentation timestamps of the video
   stream's frames and its keyframes, so sampling can pick frames by index (uniform) or by time
   (fps-based) without decoding anything;
2. a decode pass that visits only what the sampled frames need: before each sampled frame it
   seeks to the keyframe that precedes it when that keyframe lies beyond what was decoded so far
   (seeking skips whole GOPs), else it decodes forward. Frames that are not sampled are decoded
   (a codec needs them) but never converted: each sampled frame is converted to RGB and scaled
   to the target size in the decoder's scaler (swscale), then turned upright (rotation metadata).

So the memory of a clip is bounded by `frames x target size` plus the decoder's own pictures
(`training.data.limits.clip_memory_bytes`), whatever the clip's length. 10-bit and other pixel formats
go through the same scaler to 8-bit RGB. Clips whose packets carry no presentation timestamps (AVI) are
decoded through twice (once to count), still converting only the sampled frames.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F

from training.data.limits import CLIP_LIMITS, DECODE_THREADS

#: a seek flushes the decoder (and its frame threads), which costs about as much as decoding a
#: few dozen frames: it is used only when it skips at least this many frames
SEEK_MIN_SKIP = 24

#: the scaler's resampling filter for a PIL resample code (the code HF processor configs store)
SWS_INTERPOLATION = {0: "POINT", 1: "LANCZOS", 2: "BILINEAR", 3: "BICUBIC", 4: "AREA", 5: "BICUBIC"}


class ClipError(ValueError):
    """A clip cannot be read or holds no frames; the message names the file."""


def sample_indices(total: int, count: int) -> list[int]:
    """`count` indices spread uniformly over `total` frames (centre of each segment); repeats
    frames when the clip is shorter than `count`."""
    if total <= 0:
        return []
    return [min(total - 1, int((i + 0.5) * total / count)) for i in range(count)]


def sample_indices_fps(times: Sequence[float], fps: float, max_frames: int,
                       min_frames: int = 1) -> list[int]:
    """Frames at `fps` per second of the clip (the frame shown at each instant 0, 1/fps, ...,
    by timestamp, so variable frame rates sample evenly in time), at most `max_frames` (then
    spread uniformly over the clip) and at least `min_frames` (uniformly, repeating frames of
    very short clips). `times` are the frames' presentation times in seconds, sorted."""
    total = len(times)
    if total == 0:
        return []
    start, end = times[0], times[-1]
    wanted = max(1, math.floor((end - start) * fps) + 1)
    if wanted > max_frames or wanted < min_frames:
        return sample_indices(total, min(max(wanted, min_frames), max_frames))
    out = []
    for k in range(wanted):
        t = start + k / fps
        i = bisect.bisect_right(times, t + 1e-6) - 1  # the frame on screen at t
        out.append(max(0, min(total - 1, i)))
    return out


@dataclass(frozen=True)
class ClipIndex:
    """What the demux pass learns: the video frames' timestamps (stream time base, sorted) and
    the keyframes', without decoding. `pts` is empty when the packets carry no timestamps."""

    pts: list[int]
    keyframes: list[int]
    time_base: float
    packets: int

    def times(self) -> list[float]:
        if not self.pts:
            return []
        return [(p - self.pts[0]) * self.time_base for p in self.pts]


#: a target size: (width, height) of the upright frame, or a function of the upright source size
Size = tuple[int, int] | Callable[[int, int], tuple[int, int]] | None


def _rotation(frame) -> int:
    """Counter-clockwise degrees (0, 90, 180, 270) that turn the stored frame upright (its
    display matrix, which FFmpeg also fills from the old `rotate` tag)."""
    return int(round((frame.rotation or 0) / 90.0)) % 4 * 90


def index_clip(container, stream) -> ClipIndex:
    """The demux pass (packets only)."""
    pts, keys, has_all = [], [], True
    packets = 0
    for packet in container.demux(stream):
        if packet.size == 0:  # the flush packet at the end
            continue
        packets += 1
        ts = packet.pts
        if ts is None:
            has_all = False
            continue
        pts.append(ts)
        if packet.is_keyframe:
            keys.append(ts)
    tb = float(stream.time_base) if stream.time_base else 0.0
    pts.sort()
    # AVI stores no presentation times: its packets count up in decode order, so they cannot
    # say which frame is shown when (B-frames)
    if "avi" in container.format.name.split(","):
        has_all = False
    if not has_all or len(set(pts)) != len(pts) or not tb:
        pts, keys = [], []
    keys.sort()
    return ClipIndex(pts=pts, keyframes=keys, time_base=tb, packets=packets)


def _target(size: Size, width: int, height: int) -> tuple[int, int]:
    if size is None:
        return width, height
    if callable(size):
        return size(width, height)
    if isinstance(size, int):
        return size, size
    return int(size[0]), int(size[1])


class _Converter:
    """Sampled frame -> upright uint8 (3, H, W) at the target size, scaled by swscale; or, with
    `resample` (a PIL resample code, as processor configs store it), converted to RGB at its own
    size by swscale and resized by PIL, as transformers' PIL image processors resize (swscale's
    one-pass conversion and scaling interpolates chroma differently: up to 0.77 apart after
    normalisation at a red/grey edge, against <= 1e-6 this way; see tests/training/test_processor_parity.py)."""

    def __init__(self, size: Size, interpolation: str, resample: int | None = None) -> None:
        self.size, self.interpolation, self.resample = size, interpolation, resample
        self.rotation: int | None = None
        self.converted = 0

    def __call__(self, frame) -> np.ndarray:
        self.converted += 1
        if self.rotation is None:
            self.rotation = _rotation(frame)
        turned = self.rotation in (90, 270)
        upright_w, upright_h = (frame.height, frame.width) if turned else (frame.width, frame.height)
        w, h = _target(self.size, upright_w, upright_h)
        sw, sh = (h, w) if turned else (w, h)
        if self.resample is None:
            array = frame.to_ndarray(width=sw, height=sh, format="rgb24", interpolation=self.interpolation)
        else:  # one source-size RGB frame at a time: memory bounded by the frame, not the clip
            array = frame.to_ndarray(format="rgb24")
            if (sw, sh) != (frame.width, frame.height):
                from PIL import Image

                array = np.asarray(Image.fromarray(array).resize((sw, sh), resample=self.resample))
        if self.rotation:
            array = np.rot90(array, k=self.rotation // 90)
        return np.ascontiguousarray(array.transpose(2, 0, 1))


def _decode_sampled(container, stream, index: ClipIndex, picks: list[int],
                    convert: _Converter, counts: dict) -> dict[int, np.ndarray]:
    """Converted frames by pts for the sampled indices, seeking where it skips decoding."""
    targets = sorted({index.pts[i] for i in picks})
    out: dict[int, np.ndarray] = {}
    frames = None  # the current decode iterator
    last = None    # the last decoded frame (not converted)
    position = None  # pts of the last decoded frame
    for target in targets:
        k = bisect.bisect_right(index.keyframes, target) - 1
        keyframe = index.keyframes[k] if k >= 0 else None
        skip = 0
        if keyframe is not None and position is not None and keyframe > position:
            skip = bisect.bisect_left(index.pts, keyframe) - bisect.bisect_right(index.pts, position)
        if frames is None or skip >= SEEK_MIN_SKIP:
            container.seek(keyframe if keyframe is not None else index.pts[0], stream=stream,
                           backward=True, any_frame=False)
            frames = container.decode(stream)
            position = None
            counts["seeks"] += 1
        picked = None
        if last is not None and position is not None and position >= target:
            picked = last  # the frame on screen at `target` is already decoded
        while picked is None:
            frame = next(frames, None)
            if frame is None:  # the stream ended early: the last frame stands for the rest
                picked = last
                break
            last = frame
            counts["decoded"] += 1
            position = frame.pts if frame.pts is not None else position
            if frame.pts is None or frame.pts >= target:
                picked = frame
        if picked is None:
            break
        out[target] = convert(picked)
    return out


def _decode_through(container, stream, count: int, convert: _Converter,
                    chooser: Callable[[int], list[int]], counts: dict) -> list[np.ndarray]:
    """Without timestamps: counts the frames (decoding, not converting), then decodes again
    converting only the chosen ones."""
    total = sum(1 for _ in container.decode(stream))
    counts["frames"] = total
    counts["decoded"] += total
    counts["seeks"] += 1
    if total == 0:
        return []
    picks = chooser(total)
    wanted = set(picks)
    container.seek(0)
    got: dict[int, np.ndarray] = {}
    last, i = None, -1
    for i, frame in enumerate(container.decode(stream)):
        last = frame
        counts["decoded"] += 1
        if i in wanted:
            got[i] = convert(frame)
        if len(got) == len(wanted):
            break
    for p in picks:
        if p not in got and last is not None:
            got[p] = convert(last)
    return [got[p] for p in picks if p in got]


def decode_frames(path: str | Path, count: int, size: Size = None, *, fps: float | None = None,
                  interpolation: str = "BILINEAR", stats: dict | None = None,
                  resample: int | None = None) -> torch.Tensor:
    """Sampled frames of the clip as uint8 (T, 3, H, W), upright, scaled in the decoder.

    `count` frames uniformly over the clip, or with `fps` one frame per 1/fps seconds up to
    `count` frames (`sample_indices_fps`). `size`: (width, height) of the output, or a function
    of the upright source (width, height), or None for the source size. `stats`, when given,
    receives what it cost: frames in the clip, decoded, converted, and seeks, and `times`: the
    sampled frames' presentation times in seconds from the first frame. `resample`: resize with
    PIL (that resample code) after swscale's RGB conversion, instead of swscale scaling."""
    name = Path(path).name
    convert = _Converter(size, interpolation, resample)
    counts = {"frames": 0, "decoded": 0, "converted": 0, "seeks": 0}
    times: list[float] = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ClipError(f"{name}: no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            stream.codec_context.thread_count = DECODE_THREADS  # each frame thread holds a frame
            # the frame size validation allows (the decoder's memory grows with it)
            too_big = CLIP_LIMITS.problems(frames=CLIP_LIMITS.min_frames, duration_s=0,
                                           width=stream.codec_context.width, height=stream.codec_context.height)
            if too_big:
                raise ClipError(f"{name}: {too_big[0]}")
            index = index_clip(container, stream)
            if index.pts:
                clip_times = index.times()
                picks = (sample_indices_fps(clip_times, fps, count) if fps else sample_indices(len(clip_times), count))
                times = [clip_times[i] for i in picks]
                counts["frames"] = len(clip_times)
                by_pts = _decode_sampled(container, stream, index, picks, convert, counts)
                arrays = [by_pts[index.pts[i]] for i in picks if index.pts[i] in by_pts]
                expected = len(picks)
            else:
                rate = float(stream.average_rate or stream.guessed_rate or 0) or 25.0

                def choose(total: int) -> list[int]:
                    if fps:
                        chosen = sample_indices_fps([i / rate for i in range(total)], fps, count)
                    else:
                        chosen = sample_indices(total, count)
                    times[:] = [i / rate for i in chosen]
                    return chosen

                container.seek(0)
                arrays = _decode_through(container, stream, count, convert, choose, counts)
                expected = len(arrays)
    except ClipError:
        raise
    except (av.FFmpegError, OSError, ValueError, StopIteration) as exc:
        raise ClipError(f"{name}: cannot be decoded ({exc.__class__.__name__}: {exc})") from None
    if stats is not None:
        stats.update(counts, converted=convert.converted, times=times)
    if not arrays:
        raise ClipError(f"{name}: no frames could be decoded")
    if len(arrays) < expected:
        raise ClipError(f"{name}: only {len(arrays)} of the sampled frames could be decoded")
    return torch.from_numpy(np.stack(arrays))


def sampled_times(path: str | Path, count: int, fps: float | None = None) -> list[float] | None:
    """The presentation times (seconds from the first frame) of the frames `decode_frames` samples,
    from the demux pass alone (nothing decoded); None when the clip cannot be read."""
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            index = index_clip(container, stream)
            if index.pts:
                times = index.times()
            else:  # no timestamps: frames at the stream's rate (as decode_frames assumes)
                rate = float(stream.average_rate or stream.guessed_rate or 0) or 25.0
                times = [i / rate for i in range(index.packets)]
    except (av.FFmpegError, OSError, ValueError, IndexError):
        return None
    if not times:
        return None
    picks = sample_indices_fps(times, fps, count) if fps else sample_indices(len(times), count)
    return [times[i] for i in picks]


def resize_and_normalise(frames: torch.Tensor, size: int | tuple[int, int], mean: tuple[float, ...],
                         std: tuple[float, ...], rescale: float = 1 / 255) -> torch.Tensor:
    """uint8 (T, 3, H, W) -> float32 (T, 3, h, w): bilinear resize when the size differs
    (`size` is an int for a square or (height, width)), rescale, then `(x - mean) / std`."""
    hw = (size, size) if isinstance(size, int) else tuple(size)
    x = frames.float().mul_(rescale)
    if tuple(x.shape[-2:]) != hw:
        x = F.interpolate(x, size=hw, mode="bilinear", align_corners=False, antialias=True)
    m = torch.tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - m) / s
