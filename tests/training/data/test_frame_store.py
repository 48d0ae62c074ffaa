"""The on-disk store of decoded frames (`training.data.frame_store`) and the loader's reading of
clips as batches need them (`ClipDataset.items`, `BadClips`)."""

from __future__ import annotations

import os
import time

import pytest
import torch

from training.data.frame_store import FrameStore, evict_stores, store_name
from training.data.loader import BadClips, ClipDataset, TooManyBadClips, read_examples
from training.data.synthetic import make_dataset
from training.errors import InputError
from training.loading import read_base_model


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("QLORA_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("QLORA_FRAME_STORE_MAX_GB", raising=False)
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("store") / "ds", 6, size=32, frames=8)


@pytest.fixture(scope="module")
def base(tiny_models):
    return read_base_model(tiny_models("video_llama", "video_classification"))


def _dataset(base, data, **kwargs) -> ClipDataset:
    examples = [e for e, _ in read_examples(data, "video_classification")]
    labels = sorted({e.label for e in examples})
    return ClipDataset(examples, task="video_classification", family=base.family, prep=base.prep,
                       tokenizer=base.tokenizer, frames=4, label2id={l: i for i, l in enumerate(labels)}, **kwargs)


def test_a_second_reader_gets_the_frames_from_disk_without_decoding(cache, base, data):
    size = (base.prep.image_size, base.prep.image_size)
    first = _dataset(base, data, store=FrameStore.open(data, 4, size))
    frames = [first.clip_frames(e.path) for e in first.examples]
    assert first.decoded == 6
    store = FrameStore.open(data, 4, size)
    assert store.folder.parent == cache / "frames" and store.folder.name == store_name(data, 4, size)
    assert len(list(store.folder.glob("*.npy"))) == 6 and not list(store.folder.glob(".*.tmp"))
    second = _dataset(base, data, store=store)  # a new process: empty memory cache
    again = [second.clip_frames(e.path) for e in second.examples]
    assert second.decoded == 0 and store.hits == 6
    assert all(torch.equal(a, b) for a, b in zip(frames, again))
    # another frame setting is another store
    assert FrameStore.open(data, 8, size).folder != store.folder


def test_a_replaced_clip_is_decoded_again(cache, base, tmp_path):
    data = make_dataset(tmp_path / "ds", 2, size=32, frames=8)
    size = (base.prep.image_size, base.prep.image_size)
    ds = _dataset(base, data, store=FrameStore.open(data, 4, size))
    clip = ds.examples[0].path
    ds.clip_frames(clip)
    from training.data.synthetic import write_clip

    write_clip(clip, "blue", "left", frames=12, size=32, seed=9)
    os.utime(clip, ns=(time.time_ns(), time.time_ns() + 10**9))
    fresh = _dataset(base, data, store=FrameStore.open(data, 4, size))
    fresh.clip_frames(clip)
    assert fresh.decoded == 1


def test_the_store_is_bounded(cache, base, data, monkeypatch):
    size = (base.prep.image_size, base.prep.image_size)
    # a clip's stored size (VideoLLaMA 3 sizes each clip within its pixel budget): measured, then removed
    probe = _dataset(base, data, store=FrameStore.open(data, 4, size))
    probe.clip_frames(probe.examples[0].path)
    (stored,) = probe.store.folder.glob("*.npy")
    one_clip = stored.stat().st_size
    stored.unlink()
    monkeypatch.setenv("QLORA_FRAME_STORE_MAX_GB", str(2.5 * one_clip / 1024**3))
    ds = _dataset(base, data, store=FrameStore.open(data, 4, size))
    for e in ds.examples:
        ds.clip_frames(e.path)
    assert len(list(ds.store.folder.glob("*.npy"))) == 2  # full: the rest is decoded each time
    monkeypatch.setenv("QLORA_FRAME_STORE_MAX_GB", "0")
    assert FrameStore.open(data, 4, size) is None  # 0 disables it


def test_least_recently_used_stores_are_evicted_but_not_one_in_use(tmp_path):
    root = tmp_path / "frames"
    now = time.time()
    for i, name in enumerate(("old", "newer", "busy")):
        (root / name).mkdir(parents=True)
        (root / name / "x.npy").write_bytes(b"0" * 1000)
        (root / name / ".last-used").touch()
        stamp = now - 10_000 + i * 1000 if name != "busy" else now - 10
        os.utime(root / name / ".last-used", (stamp, stamp))
    removed = evict_stores(root, 1500, now=now)
    assert [p.name for p, _ in removed] == ["old", "newer"]
    assert (root / "busy").is_dir()


def test_bad_clips_are_skipped_counted_and_fail_only_past_the_threshold(cache, base, tmp_path):
    data = make_dataset(tmp_path / "ds", 6, size=32, frames=8)
    ds = _dataset(base, data, bad_clips=BadClips(6, 0.2))  # 1 of 6 allowed
    seen = []
    ds.bad_clips.on_skip = lambda name, reason, count: seen.append((name, count))
    victims = [ds.examples[1], ds.examples[4]]
    for v in victims:
        v.path.write_bytes(b"\0" * 64)
    assert [i["index"] for i in ds.items([0, 1, 2])] == [0, 2]
    assert seen == [(victims[0].file_name, 1)]
    assert ds.items([1]) == [] and len(seen) == 1  # counted once
    with pytest.raises(TooManyBadClips) as raised:
        ds.items([3, 4])
    message = str(raised.value)
    assert "2 of 6 clips could not be decoded" in message and victims[1].file_name in message
    assert "QLORA_MAX_BAD_CLIP_FRACTION" in message
    # without a BadClips the first bad clip is an input error, as before
    with pytest.raises(InputError, match="unreadable clip"):
        _dataset(base, data).items([1])
