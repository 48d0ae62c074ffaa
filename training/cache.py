"""The worker's local cache of models and datasets (`QLORA_CACHE_DIR`), kept under a size
limit (`QLORA_CACHE_MAX_GB`, default 200; 0 for no limit: `training.settings`) by evicting the
entries used least recently.

An entry is one model (`models/{model_id}/`), one dataset (`datasets/{dataset_id}/`) or one
store of decoded frames (`frames/{store}/`, `training.data.frame_store`). Its
`.last-used` file is touched when a task prepares it and, every few minutes, while a training
reads it; an entry used in the last `MIN_IDLE_S` is never evicted, so a running training never
loses its files. Eviction runs before each download (the `prepare` task).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

log = logging.getLogger(__name__)

#: models/{id}/, datasets/{id}/, and frames/{store}/ (decoded frames: `training.data.frame_store`)
ENTRY_KINDS = ("models", "datasets", "frames")
LAST_USED = ".last-used"
#: entries used more recently than this are never evicted (a training touches its entries
#: every TOUCH_EVERY_S)
MIN_IDLE_S = 3600.0
TOUCH_EVERY_S = 300.0


def touch(entry: Path) -> None:
    """Marks `entry` as used now (creating the folder if needed)."""
    entry.mkdir(parents=True, exist_ok=True)
    (entry / LAST_USED).touch()


def last_used(entry: Path) -> float:
    try:
        return (entry / LAST_USED).stat().st_mtime
    except OSError:
        return entry.stat().st_mtime


def size_of(entry: Path) -> int:
    total = 0
    for folder, _dirs, files in os.walk(entry):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(folder, name)).st_size
    return total


def entries(root: Path, kinds: Iterable[str] = ENTRY_KINDS) -> list[Path]:
    return [e for kind in kinds if (root / kind).is_dir() for e in (root / kind).iterdir() if e.is_dir()]


def evict(root: Path, limit: int | None, keep: Iterable[Path] = (), *, min_idle_s: float = MIN_IDLE_S,
          now: float | None = None, kinds: Iterable[str] = ENTRY_KINDS) -> list[tuple[Path, int]]:
    """Deletes the least recently used entries (of `kinds`) under `root` until they hold at most
    `limit` bytes, never one in `keep` nor one used in the last `min_idle_s`. Returns the
    deleted entries with their sizes."""
    if limit is None:
        return []
    now = time.time() if now is None else now
    kept = {Path(k).resolve() for k in keep}
    found = sorted(entries(root, tuple(kinds)), key=last_used)
    sizes = {e: size_of(e) for e in found}
    total = sum(sizes.values())
    removed = []
    for entry in found:
        if total <= limit:
            break
        idle = now - last_used(entry)
        if entry.resolve() in kept or idle < min_idle_s:
            continue
        shutil.rmtree(entry, ignore_errors=True)
        total -= sizes[entry]
        removed.append((entry, sizes[entry]))
    if total > limit:
        log.warning("cache: %.1f GB in %s is over the %.1f GB limit (the rest is in use)", total / 1024**3,
                    root, limit / 1024**3)
    return removed


@contextlib.contextmanager
def kept_fresh(entries_in_use: Iterable[Path], every_s: float = TOUCH_EVERY_S) -> Iterator[None]:
    """Touches `entries_in_use` every `every_s` while the block runs (a training reading them),
    so no other task evicts them."""
    in_use = [Path(e) for e in entries_in_use if Path(e).is_dir()]
    done = threading.Event()

    def refresh() -> None:
        while not done.wait(every_s):
            for entry in in_use:
                with contextlib.suppress(OSError):
                    touch(entry)

    for entry in in_use:
        touch(entry)
    thread = threading.Thread(target=refresh, daemon=True, name="cache-keep-fresh")
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(timeout=5)
