"""Opens video clips with PyAV and checks that they really decode, as the engine will read them.

A clip passes when it opens, has a video stream, every packet of that stream decodes to frames
(the header alone is not trusted), the decoded frames cover the duration its header declares
(else it was cut short), and its frame count, duration and frame size are within the limits of
`training.data.limits` (the same the engine decodes within). Its stats are what the dataset
detail shows per clip: codec, pixel format, upright size, duration, fps, frames, rotation and
whether it has sound.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from training.data.limits import CLIP_LIMITS, DECODE_THREADS, ClipLimits

__all__ = ["ClipError", "ClipLimits", "ClipStats", "probe_clip"]

#: decoded time (frames) may fall short of the declared duration (frame count) by this much
#: before a clip counts as cut short: audio often outlasts video by a few frames, and AVI's
#: header counts the empty chunks its muxer pads with to keep sound in sync
TRUNCATION_SLACK_S = 1.0
TRUNCATION_SLACK_RATIO = 0.1


@dataclass(frozen=True)
class ClipStats:
    frames: int
    duration_s: float
    #: width and height of the upright picture (after the display rotation)
    width: int
    height: int
    codec: str
    fps: float | None
    pix_fmt: str = ""
    #: counter-clockwise degrees a player turns the stored frames by
    rotation: int = 0
    has_audio: bool = False
    container: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


class ClipError(ValueError):
    """The clip cannot be used; the message says why (without the file name)."""


def probe_clip(path: str | Path, limits: ClipLimits | None = None) -> ClipStats:
    """Decodes the first video stream of `path`; returns its stats or raises `ClipError`."""
    import av  # heavy: imported where used

    limits = limits or CLIP_LIMITS
    path = Path(path)
    if not path.is_file():
        raise ClipError("the file does not exist")
    if path.stat().st_size == 0:
        raise ClipError("the file is empty (0 bytes)")
    try:
        container = av.open(str(path), mode="r")
    except (av.FFmpegError, UnicodeDecodeError, ValueError, OSError) as exc:
        raise ClipError(f"cannot be opened as a video ({_describe(exc)})") from None
    with container:
        if not container.streams.video:
            sound = " (audio only)" if container.streams.audio else ""
            raise ClipError(f"has no video stream{sound}")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        stream.codec_context.thread_count = DECODE_THREADS
        codec = stream.codec_context.name if stream.codec_context else "unknown"
        # the header's frame size is checked before decoding a frame of it
        header_w, header_h = stream.codec_context.width, stream.codec_context.height
        if header_w > limits.max_width or header_h > limits.max_height \
                or header_w * header_h > limits.max_pixels:
            problems = limits.problems(frames=limits.min_frames, duration_s=0, width=header_w, height=header_h)
            raise ClipError(problems[0])
        frames = 0
        first_time = last_time = None
        width = height = rotation = 0
        pix_fmt = ""
        try:
            for frame in container.decode(stream):
                if frames == 0:
                    rotation = int(round((frame.rotation or 0) / 90.0)) % 4 * 90
                    pix_fmt = frame.format.name
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
        header_duration = _header_duration(container, stream)
        covered = _covered(first_time, last_time, frames, fps)
        duration = covered if covered is not None else (header_duration or 0.0)  # decoded times first
        has_audio = bool(container.streams.audio)
        container_name = container.format.name.split(",")[0]
    frame_slack = max(TRUNCATION_SLACK_S * (fps or 0), TRUNCATION_SLACK_RATIO * declared)
    if declared and (frames == 0 or frames < declared - frame_slack):
        raise ClipError(f"decodes to {frames} of the {declared} frames its header declares "
                        "(truncated or corrupt)")
    if header_duration and covered is not None and \
            covered < header_duration - max(TRUNCATION_SLACK_S, TRUNCATION_SLACK_RATIO * header_duration):
        raise ClipError(f"decodes to {covered:.1f} s of the {header_duration:.1f} s its header declares "
                        "(truncated or corrupt)")
    if frames == 0:
        raise ClipError("no frame of its video stream decodes (undecodable or empty stream)")
    if rotation in (90, 270):
        width, height = height, width
    problems = limits.problems(frames=frames, duration_s=duration, width=width, height=height)
    if problems:
        raise ClipError(problems[0])
    return ClipStats(frames=frames, duration_s=round(duration, 4), width=width, height=height,
                     codec=codec, fps=round(fps, 4) if fps else None, pix_fmt=pix_fmt, rotation=rotation,
                     has_audio=has_audio, container=container_name)


def _header_duration(container, stream) -> float | None:
    """Seconds the header declares: the video stream's, else the container's."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / 1_000_000
    return None


def _covered(first: float | None, last: float | None, frames: int, fps: float | None) -> float | None:
    """Seconds the decoded frames span (the last one shown for one frame's time)."""
    if first is not None and last is not None:
        return last - first + (1 / fps if fps else 0.0)
    return frames / fps if fps else None


def _describe(exc: Exception) -> str:
    text = getattr(exc, "strerror", None) or str(exc)
    return " ".join(str(text).split())[:200]
