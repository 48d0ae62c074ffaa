"""Fixtures of the documentation tests: the site's folder and the generator of `make docs`."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


def load_generator() -> ModuleType:
    """`docs/scripts/generate.py` (what `make docs` runs) as a module."""
    spec = importlib.util.spec_from_file_location("docs_generate", DOCS / "scripts" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def generator() -> ModuleType:
    return load_generator()


@pytest.fixture(scope="session")
def openapi(generator: ModuleType) -> dict:
    """The schema the application serves (built from the routes; no service started)."""
    return generator.openapi_schema()
