"""A bounded, reusable on-disk store of decoded frames, per dataset and frame setting.

Decoding is the cost of a training step on real videos (a 10 s 1080p clip takes ~0.6 s on one
core); the sampled frames of a clip, once decoded and scaled to the model's size, are a few
hundred KB. The engine keeps them here (uint8 `(T, 3, H, W)` as `.npy`) so that the epochs after
the first, the `evaluate` task, and later jobs on the same dataset with the same frame setting
read them back instead of decoding the videos again.

Layout, under the worker's cache folder (`QLORA_CACHE_DIR`, `training.settings`):

    frames/{dataset}-{hash of its folder}-{frames}f-{W}x{H}-{interpolation}/{hash of clip}.npy
    (fps sampling: `max{frames}f-{fps}fps` in place of `{frames}f`)

One store is one cache entry of `training.cache` (kind `frames`): its `.last-used` is touched
while a training or an evaluation reads it, and the least recently used stores are evicted
first (`get` touches it every `training.cache.TOUCH_EVERY_S`). Two bounds apply:

* `QLORA_FRAME_STORE_MAX_GB` (default 20; 0 disables the store): all frame stores together.
  Opening a store evicts other stores (least recently used first, never one used in the last
  `training.cache.MIN_IDLE_S`) until they fit; a store that reaches the bound stops adding clips
  (those are decoded each time, as without a store).
* `QLORA_CACHE_MAX_GB`: the whole cache (models, datasets and frames), enforced by `prepare`.

A clip's key is its path relative to the dataset folder, its size and modification time, so a
replaced clip is decoded afresh. Writes go to a temporary file renamed into place (atomic), so
concurrent jobs on the same worker never read half a file; a file another process evicted
meanwhile is simply decoded again.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import time
import uuid
from pathlib import Path

import numpy as np
import torch

from training import cache

log = logging.getLogger("training")

KIND = "frames"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._")[:40] or "data"


def store_name(data_dir: Path, frames: int, size: tuple[int, int], interpolation: str = "BILINEAR",
               fps: float | None = None) -> str:
    """The store's folder name: the dataset (its folder) and the frame setting (`frames`
    uniformly, or with `fps` at most `frames` at that rate)."""
    data_dir = Path(data_dir).resolve()
    label = data_dir.parent.name if data_dir.name == "files" else data_dir.name  # datasets/{id}/files
    digest = hashlib.sha1(str(data_dir).encode()).hexdigest()[:10]
    sampling = f"{frames}f" if not fps else f"max{frames}f-{fps:g}fps"
    return f"{_slug(label)}-{digest}-{sampling}-{size[0]}x{size[1]}-{interpolation}"


class FrameStore:
    """Frames of the clips of one dataset at one frame setting, on disk (see module doc)."""

    def __init__(self, folder: Path, data_dir: Path, max_bytes: int | None) -> None:
        self.folder, self.data_dir, self.max_bytes = Path(folder), Path(data_dir).resolve(), max_bytes
        self.folder.mkdir(parents=True, exist_ok=True)
        cache.touch(self.folder)
        self._used = _size_of_stores(self.folder.parent) if max_bytes is not None else 0
        self._full_logged = False
        self._touched = time.monotonic()
        self.hits = self.misses = self.writes = 0

    @classmethod
    def open(cls, data_dir: str | Path, frames: int, size: tuple[int, int], interpolation: str = "BILINEAR",
             fps: float | None = None) -> FrameStore | None:
        """The store for `data_dir` at this frame setting under the worker's cache, after
        evicting other stores beyond `QLORA_FRAME_STORE_MAX_GB`; None when that is 0 (disabled)
        or the cache folder cannot be written (the engine then decodes every time)."""
        from training.settings import get_settings

        settings = get_settings()
        limit = settings.frame_store_max_bytes
        if limit == 0:
            return None
        root = settings.cache_dir / KIND
        folder = root / store_name(Path(data_dir), frames, size, interpolation, fps)
        try:
            root.mkdir(parents=True, exist_ok=True)
            cache.touch(folder)
            for entry, freed in evict_stores(root, limit, keep=(folder,)):
                log.info("frame store: evicted %s (%.1f MB) to stay under QLORA_FRAME_STORE_MAX_GB", entry.name,
                         freed / 1e6)
            return cls(folder, Path(data_dir), limit)
        except OSError as exc:
            log.warning("frame store disabled: cannot use %s (%s)", folder, exc)
            return None

    def key(self, clip: Path) -> str | None:
        try:
            stat = clip.stat()
        except OSError:
            return None
        try:
            rel = clip.resolve().relative_to(self.data_dir).as_posix()
        except ValueError:
            rel = str(clip.resolve())
        return hashlib.sha1(f"{rel}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()).hexdigest()

    def get(self, clip: Path) -> torch.Tensor | None:
        """The clip's stored frames, or None (not stored yet, evicted, or unreadable)."""
        key = self.key(clip)
        if key is None:
            return None
        if time.monotonic() - self._touched > cache.TOUCH_EVERY_S:  # in use: not evicted by other jobs
            self._touched = time.monotonic()
            with contextlib.suppress(OSError):
                cache.touch(self.folder)
        try:
            array = np.load(self.folder / f"{key}.npy", allow_pickle=False)
        except (OSError, ValueError, EOFError):
            self.misses += 1
            return None
        self.hits += 1
        return torch.from_numpy(array)

    def put(self, clip: Path, frames: torch.Tensor) -> bool:
        """Stores the clip's frames (atomically); False when the store is full or the disk
        refused (never raises: the store only saves time)."""
        key = self.key(clip)
        if key is None:
            return False
        array = frames.numpy()
        size = array.nbytes + 128
        if self.max_bytes is not None and self._used + size > self.max_bytes:
            if not self._full_logged:
                self._full_logged = True
                log.warning("frame store %s is full (QLORA_FRAME_STORE_MAX_GB): further clips are decoded each "
                            "time", self.folder.name)
            return False
        final = self.folder / f"{key}.npy"
        tmp = self.folder / f".{key}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            with open(tmp, "wb") as handle:
                np.save(handle, array, allow_pickle=False)
            os.replace(tmp, final)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            log.warning("frame store: cannot write %s (%s)", final.name, exc)
            return False
        self._used += size
        self.writes += 1
        return True

def _size_of_stores(root: Path) -> int:
    return sum(cache.size_of(e) for e in root.iterdir() if e.is_dir()) if root.is_dir() else 0


def evict_stores(root: Path, limit: int | None, keep=(), **kwargs) -> list[tuple[Path, int]]:
    """Deletes the least recently used stores under `root` (the `frames/` folder) until they hold
    at most `limit` bytes (`training.cache.evict` on the `frames` entries alone)."""
    return cache.evict(root.parent, limit, keep, kinds=(KIND,), **kwargs)
