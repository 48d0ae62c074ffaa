"""The platform's dataset folder format (the Hugging Face "folder" convention).

A dataset is a folder of video clips plus an annotation table:

* `metadata.csv` or `metadata.jsonl` with a `file_name` column (path of the clip relative to
  the folder that holds the table), `label` (classification) and/or `caption` (captioning),
  and an optional `split` (train / validation / test); or
* no table, and one sub-folder per class (`left/clip1.mp4`, `right/clip2.mp4`): the folder
  name is the label.

The table may sit at the top of the folder or inside a single top-level directory (how most
people zip a folder). This module is the one place that reads the format: the validation DAG,
the training engine and the tests all go through it. Light: pandas only, no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pandas as pd

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".mov", ".avi")
TABLE_NAMES = ("metadata.csv", "metadata.jsonl")
SPLITS = ("train", "validation", "test")
TASK_COLUMNS = {"video_classification": "label", "video_captioning": "caption"}


class DatasetFormatError(ValueError):
    """The folder does not follow the dataset format; the message says what to fix."""


@dataclass(frozen=True)
class DatasetTable:
    #: folder the `file_name` paths are relative to
    root: Path
    #: where the annotations came from: `metadata.csv`, `metadata.jsonl` or `folders`
    source: str
    #: columns `file_name` plus any of `label`, `caption`, `split` (strings; missing as NA)
    frame: pd.DataFrame

    @property
    def has_labels(self) -> bool:
        return "label" in self.frame.columns

    @property
    def has_captions(self) -> bool:
        return "caption" in self.frame.columns

    def supports(self, task: str) -> bool:
        return TASK_COLUMNS[task] in self.frame.columns

    def clip_path(self, file_name: str) -> Path:
        return self.root / file_name


def is_video(path: str | Path) -> bool:
    return str(path).lower().endswith(VIDEO_EXTENSIONS)


def find_root(folder: Path) -> Path:
    """The folder holding the dataset: `folder`, or its single top-level directory when
    everything was zipped inside one (ignoring `__MACOSX` and dot-files)."""
    folder = Path(folder)
    entries = [p for p in folder.iterdir() if not p.name.startswith(".") and p.name != "__MACOSX"]
    if any((folder / name).is_file() for name in TABLE_NAMES):
        return folder
    if len(entries) == 1 and entries[0].is_dir():
        inner = entries[0]
        if any((inner / name).is_file() for name in TABLE_NAMES):
            return inner
        # a single directory of class folders or clips
        return inner if not any(is_video(p) for p in folder.iterdir()) else folder
    return folder


def _read_table(path: Path) -> pd.DataFrame:
    try:
        if path.suffix == ".csv":
            frame = pd.read_csv(path, dtype=object, keep_default_na=False, na_values=[""])
        else:
            frame = pd.read_json(path, lines=True, dtype=False)
    except Exception as exc:  # pandas raises many types for malformed files
        raise DatasetFormatError(f"{path.name}: cannot be parsed ({exc})") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    if "file_name" not in frame.columns:
        raise DatasetFormatError(f"{path.name}: the required column 'file_name' is missing "
                                 f"(columns found: {', '.join(frame.columns) or 'none'})")
    keep = [c for c in ("file_name", "label", "caption", "split") if c in frame.columns]
    frame = frame[keep].copy()
    for column in keep:  # plain strings, None where a cell is empty (pandas 3 would give NaN)
        frame[column] = pd.Series([None if pd.isna(v) else str(v) for v in frame[column]],
                                  index=frame.index, dtype="object")
    return frame


def _from_class_folders(root: Path) -> pd.DataFrame:
    rows = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for clip in sorted(class_dir.rglob("*")):
            if clip.is_file() and is_video(clip):
                rows.append({"file_name": clip.relative_to(root).as_posix(), "label": class_dir.name})
    if not rows:
        raise DatasetFormatError(
            "no annotation table (metadata.csv or metadata.jsonl) and no class sub-folders with "
            f"video clips ({', '.join(VIDEO_EXTENSIONS)}) were found")
    return pd.DataFrame(rows, dtype="object")


def read_dataset(folder: str | Path) -> DatasetTable:
    """Reads the annotations of the dataset in `folder` (an extracted archive)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetFormatError(f"{folder} is not a folder")
    root = find_root(folder)
    for name in TABLE_NAMES:
        if (root / name).is_file():
            frame = _read_table(root / name)
            frame["file_name"] = pd.Series([_normalise_file_name(v) for v in frame["file_name"]],
                                           index=frame.index, dtype="object")
            return DatasetTable(root=root, source=name, frame=frame)
    return DatasetTable(root=root, source="folders", frame=_from_class_folders(root))


def _normalise_file_name(value: str | None) -> str | None:
    if value is None:
        return None
    return PurePosixPath(value.strip().replace("\\", "/")).as_posix()
