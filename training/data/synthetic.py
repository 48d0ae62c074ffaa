"""Synthetic video datasets: coloured squares moving left or right.

Tests and benchmarks generate their data with this (nothing is downloaded). A clip shows one
square of a colour moving in a direction; its label is `{colour}` or `{direction}` or both,
and its caption names both ("a red square moves left"). Clips are real mp4 (H.264) files.
"""

from __future__ import annotations

import csv
import json
import random
import zipfile
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 200, 60),
    "blue": (40, 60, 230),
    "yellow": (230, 220, 40),
}
DIRECTIONS = ("left", "right")


@dataclass(frozen=True)
class Clip:
    file_name: str
    colour: str
    direction: str

    @property
    def caption(self) -> str:
        return f"a {self.colour} square moves {self.direction}"


def write_clip(path: Path, colour: str, direction: str, *, frames: int = 16, size: int = 64,
               fps: int = 8, codec: str = "libx264", seed: int = 0) -> Path:
    """Writes one clip of a `colour` square moving `direction` across a dark background."""
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    side = size // 4
    top = rng.randint(0, size - side)
    start, end = (size - side, 0) if direction == "left" else (0, size - side)
    rgb = np.array(COLOURS[colour], dtype=np.uint8)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(frames):
            image = np.full((size, size, 3), 16, dtype=np.uint8)
            x = round(start + (end - start) * i / max(frames - 1, 1))
            image[top:top + side, x:x + side] = rgb
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def make_clips(folder: Path, count: int, *, colours=("red", "blue"), directions=DIRECTIONS,
               frames: int = 16, size: int = 64, seed: int = 0, subdir: str = "clips") -> list[Clip]:
    """Writes `count` clips cycling through every colour x direction, shuffled by `seed`."""
    combos = [(c, d) for c in colours for d in directions]
    clips = []
    for i in range(count):
        colour, direction = combos[i % len(combos)]
        name = f"{subdir}/clip_{i:04d}.mp4" if subdir else f"clip_{i:04d}.mp4"
        write_clip(folder / name, colour, direction, frames=frames, size=size, seed=seed * 100_003 + i)
        clips.append(Clip(name, colour, direction))
    random.Random(seed).shuffle(clips)
    return clips


def label_of(clip: Clip, label_by: str) -> str:
    return {"colour": clip.colour, "direction": clip.direction,
            "both": f"{clip.colour}_{clip.direction}"}[label_by]


def make_dataset(folder: Path, count: int = 16, *, label_by: str = "colour", with_captions: bool = True,
                 with_labels: bool = True, table: str = "csv", validation_fraction: float = 0.25,
                 **clip_options) -> Path:
    """Writes a dataset folder in the platform format (clips + `metadata.csv`/`.jsonl`)."""
    folder = Path(folder)
    clips = make_clips(folder, count, **clip_options)
    n_val = int(round(count * validation_fraction))
    rows = []
    for i, clip in enumerate(clips):
        row = {"file_name": clip.file_name}
        if with_labels:
            row["label"] = label_of(clip, label_by)
        if with_captions:
            row["caption"] = clip.caption
        if validation_fraction:
            row["split"] = "validation" if i < n_val else "train"
        rows.append(row)
    if table == "csv":
        with open(folder / "metadata.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        with open(folder / "metadata.jsonl", "w") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in rows)
    return folder


def zip_folder(folder: Path, archive: Path) -> Path:
    """Zips the contents of `folder` (paths relative to it) into `archive`."""
    folder, archive = Path(folder), Path(archive)
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(folder).as_posix())
    return archive


# --- clips of every codec, container and shape (tests and benchmarks) -----------------------

#: encoder per codec name, and containers each muxes into here
ENCODERS = {"h264": "libx264", "hevc": "libx265", "vp9": "libvpx-vp9", "av1": "libsvtav1", "mpeg4": "mpeg4"}
PATTERN_BITS = 8


def pattern_image(index: int, width: int, height: int) -> np.ndarray:
    """An RGB frame whose 8 vertical stripes spell `index` in binary (white = 1, left = most
    significant bit); the stripes survive compression and scaling (see `read_pattern`)."""
    image = np.full((height, width, 3), 24, dtype=np.uint8)
    for bit in range(PATTERN_BITS):
        if index >> (PATTERN_BITS - 1 - bit) & 1:
            image[:, bit * width // PATTERN_BITS:(bit + 1) * width // PATTERN_BITS] = 232
    return image


def read_pattern(frame: np.ndarray) -> int:
    """The index spelt by `pattern_image` in a (3, H, W) or (H, W, 3) uint8 frame."""
    rgb = frame if frame.shape[-1] == 3 else frame.transpose(1, 2, 0)
    h, w = rgb.shape[:2]
    row = rgb[h // 2, :, :].astype(int).mean(axis=1)
    value = 0
    for bit in range(PATTERN_BITS):
        centre = int((bit + 0.5) * w / PATTERN_BITS)
        value = value * 2 + int(row[centre] > 128)
    return value


def write_test_clip(path: str | Path, *, codec: str = "h264", frames: int = 16, width: int = 64,
                    height: int = 48, fps: int = 10, pix_fmt: str = "yuv420p", gop: int | None = None,
                    rotation: int = 0, audio: bool = False, times: list[float] | None = None,
                    encoder_options: dict | None = None) -> Path:
    """Writes a clip of `pattern_image(i)` frames with `codec` (h264, hevc, vp9, av1, mpeg4 or an
    encoder name) into the container its suffix names (mp4, mkv, webm, mov, avi).

    `rotation` stores a display rotation (counter-clockwise degrees; frames are stored as given,
    players and the engine turn them); `audio` adds a silent AAC/Opus/MP3 track; `times` gives
    every frame's presentation time in seconds (variable frame rate) instead of i / fps."""
    from fractions import Fraction

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    encoder = ENCODERS.get(codec, codec)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(encoder, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if times is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        if gop:
            stream.codec_context.gop_size = gop
        options = dict(encoder_options or {})
        if encoder == "libx265":
            options.setdefault("x265-params", "log-level=error")
        if encoder == "libsvtav1":
            options.setdefault("svtav1-params", "log-level=0")
        stream.options = options
        if rotation:
            stream.set_display_rotation(rotation)
        sound = None
        if audio:
            audio_codec = {".webm": "libopus", ".mkv": "libopus", ".avi": "libmp3lame"}.get(path.suffix, "aac")
            sound = container.add_stream(audio_codec, rate=48000)
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(pattern_image(i, width, height), format="rgb24")
            if times is not None:
                frame.pts, frame.time_base = round(times[i] * 1000), Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
        if sound is not None:
            seconds = (times[-1] if times else frames / fps) + 0.1
            samples = sound.codec_context.frame_size or 1024
            for k in range(int(seconds * 48000 / samples) + 1):
                chunk = av.AudioFrame.from_ndarray(np.zeros((1, samples), dtype=np.float32),
                                                   format="fltp", layout="mono")
                chunk.sample_rate, chunk.pts = 48000, k * samples
                for packet in sound.encode(chunk):
                    container.mux(packet)
            for packet in sound.encode():
                container.mux(packet)
    return path
