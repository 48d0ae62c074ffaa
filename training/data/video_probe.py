"""Opens video clips with PyAV and checks that they really decode.

A clip passes when it opens, has a video stream, every packet decodes to frames, and its frame
count and duration are within limits. The header alone is not trusted: frames are decoded.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class ClipLimits:
    min_frames: int = 1
    max_frames: int = 20_000
    #: seconds; clips longer than this are refused
    max_duration_s: float = 600.0
    max_width: int = 4096
    max_height: int = 4096


@dataclass(frozen=True)
class ClipStats:
    frames: int
    duration_s: float
    width: int
    height: int
    codec: str
    fps: float | None

    def as_dict(self) -> dict:
        return asdict(self)


class ClipError(ValueError):
    """The clip cannot be used; the message says why (without the file name)."""


def probe_clip(path: str | Path, limits: ClipLimits | None = None) -> ClipStats:
    """Decodes the first video stream of `path`; returns its stats or raises `ClipError`."""
    import av  # heavy: imported where used

    limits = limits or ClipLimits()
    path = Path(path)
    if not path.is_file():
        raise ClipError("the file does not exist")
    if path.stat().st_size == 0:
        raise ClipError("the file is empty")
    try:
        container = av.open(str(path), mode="r")
    except (av.FFmpegError, UnicodeDecodeError, ValueError, OSError) as exc:
        raise ClipError(f"cannot be opened as a video ({_describe(exc)})") from None
    with container:
        if not container.streams.video:
            raise ClipError("has no video stream")
        stream = container.streams.video[0]
        codec = stream.codec_context.name if stream.codec_context else "unknown"
        frames = 0
        first_time = last_time = None
        width = height = 0
        try:
            for frame in container.decode(stream):
                frames += 1
                width, height = frame.width, frame.height
                if frame.time is not None:
                    first_time = frame.time if first_time is None else min(first_time, frame.time)
                    last_time = frame.time if last_time is None else max(last_time, frame.time)
                if frames > limits.max_frames:
                    raise ClipError(f"has more than {limits.max_frames} frames")
        except av.FFmpegError as exc:
            raise ClipError(f"cannot be decoded after {frames} frames ({_describe(exc)})") from None
        declared = stream.frames or 0
        fps = float(stream.average_rate) if stream.average_rate else None
        duration = _duration(container, stream, frames, first_time, last_time, fps)
    if declared and frames < declared:
        raise ClipError(f"decodes to {frames} of the {declared} frames its header declares "
                        "(truncated or corrupt)")
    if frames < limits.min_frames:
        raise ClipError(f"decodes to {frames} frames (at least {limits.min_frames} needed)")
    if duration > limits.max_duration_s:
        raise ClipError(f"lasts {duration:.1f} s, longer than the limit of "
                        f"{limits.max_duration_s:g} s")
    if width > limits.max_width or height > limits.max_height:
        raise ClipError(f"is {width}x{height}, larger than the limit of "
                        f"{limits.max_width}x{limits.max_height}")
    return ClipStats(frames=frames, duration_s=round(duration, 4), width=width, height=height,
                     codec=codec, fps=round(fps, 4) if fps else None)


def _duration(container, stream, frames: int, first: float | None, last: float | None,
              fps: float | None) -> float:
    """Seconds: from the stream header when present, else the container's, else the frames."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / 1_000_000
    if first is not None and last is not None and fps:
        return last - first + 1 / fps
    return frames / fps if fps else 0.0


def _describe(exc: Exception) -> str:
    text = getattr(exc, "strerror", None) or str(exc)
    return " ".join(str(text).split())[:200]
