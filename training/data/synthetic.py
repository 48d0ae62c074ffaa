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
