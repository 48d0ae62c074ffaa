"""Fixtures of the training-engine tests: generated clips and tiny models (session-cached)."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.data.synthetic import make_dataset

ARCHITECTURES = ("video_llama", "flamingo")
TASKS = ("video_captioning", "video_classification")


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """Tiny models on a shared 2-core machine: one intra-op thread is fastest and steadiest."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def _cache_folder(tmp_path_factory):
    """The engine's frame stores (`training.data.frame_store`) go to a temporary cache folder,
    not the user's ~/.cache/qlora (a test may point QLORA_CACHE_DIR elsewhere itself)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("QLORA_CACHE_DIR", str(tmp_path_factory.mktemp("qlora-cache")))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def colour_dataset(tmp_path_factory) -> Path:
    """32 clips (32x32, 8 frames): red/blue squares moving left/right, labelled by colour,
    captioned "a {colour} square moves {direction}", 8 held out by the table's split column."""
    return make_dataset(tmp_path_factory.mktemp("colour"), 32, label_by="colour", size=32, frames=8)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """`tiny_models(architecture, task, catalog_id=None)` -> folder of a tiny model (built once)."""
    from training.build_tiny import build_tiny

    root = tmp_path_factory.mktemp("models")
    built: dict[tuple, Path] = {}

    def get(architecture: str, task: str, catalog_id: str | None = None) -> Path:
        key = (architecture, task, catalog_id)
        if key not in built:
            built[key] = build_tiny(architecture, task, root / "-".join(filter(None, key)), catalog_id=catalog_id)
        return built[key]

    return get
