"""The worker cache stays under its size limit: least recently used models and datasets go
first; what the job needs and what a running training reads stay."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from training import cache
from training.settings import get_settings

HOUR = 3600.0


def _entry(root: Path, kind: str, name: str, megabytes: int, used_hours_ago: float) -> Path:
    entry = root / kind / name
    (entry / "files").mkdir(parents=True)
    (entry / "files" / "blob.bin").write_bytes(b"\0" * megabytes * 1024 * 1024)
    cache.touch(entry)
    stamp = time.time() - used_hours_ago * HOUR
    os.utime(entry / cache.LAST_USED, (stamp, stamp))
    return entry


def test_least_recently_used_go_first_until_under_the_limit(tmp_path):
    old_model = _entry(tmp_path, "models", "old-model", 3, used_hours_ago=48)
    old_data = _entry(tmp_path, "datasets", "old-data", 2, used_hours_ago=24)
    recent = _entry(tmp_path, "datasets", "recent", 2, used_hours_ago=5)
    needed = _entry(tmp_path, "models", "needed", 4, used_hours_ago=72)  # oldest, but this job's

    removed = cache.evict(tmp_path, limit=7 * 1024 * 1024, keep=[needed])

    assert [(e.name, size // 2**20) for e, size in removed] == [("old-model", 3), ("old-data", 2)]
    assert not old_model.exists() and not old_data.exists()
    assert recent.exists() and needed.exists()
    assert sum(cache.size_of(e) for e in cache.entries(tmp_path)) <= 7 * 1024 * 1024


def test_entries_in_use_are_never_evicted_even_over_the_limit(tmp_path):
    in_use = _entry(tmp_path, "models", "training-now", 3, used_hours_ago=0.1)
    assert cache.evict(tmp_path, limit=1024) == []
    assert in_use.exists()


def test_no_limit_evicts_nothing(tmp_path, monkeypatch):
    _entry(tmp_path, "models", "m", 1, used_hours_ago=1000)
    monkeypatch.setenv("QLORA_CACHE_MAX_GB", "0")
    assert get_settings().cache_max_bytes is None
    assert cache.evict(tmp_path, get_settings().cache_max_bytes) == []
    monkeypatch.setenv("QLORA_CACHE_MAX_GB", "1.5")
    assert get_settings().cache_max_bytes == int(1.5 * 1024**3)
    monkeypatch.delenv("QLORA_CACHE_MAX_GB")
    assert get_settings().cache_max_bytes == 200 * 1024**3
    monkeypatch.setenv("QLORA_CACHE_MAX_GB", "lots")
    with pytest.raises(ValueError, match="QLORA_CACHE_MAX_GB"):
        get_settings().cache_max_bytes


def test_a_running_training_keeps_its_entries_fresh(tmp_path):
    entry = _entry(tmp_path, "datasets", "being-read", 1, used_hours_ago=10)
    with cache.kept_fresh([entry, tmp_path / "datasets" / "not-here"], every_s=0.05):
        time.sleep(0.3)
        assert time.time() - cache.last_used(entry) < 1
        assert cache.evict(tmp_path, limit=0) == []
    assert not (tmp_path / "datasets" / "not-here").exists()  # only existing entries are touched
