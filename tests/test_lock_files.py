"""The lock files (`make lock`, by uv) against pyproject.toml's extras: every package pinned and
hashed, every direct dependency of every role locked, torch's CPU build, and the API's lock a
slim subset of the full one at the same versions."""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
EXTRAS = PROJECT["optional-dependencies"]
#: what the API's image must not install (the engine's and Airflow's packages, the MLflow server)
NOT_IN_API = ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "apache-airflow", "mlflow",
              "great-expectations", "celery")


def _entries(name: str) -> dict[str, tuple[str, list[str]]]:
    """{canonical name: (version, hashes)} of a hashed requirements file."""
    text = (REPO / name).read_text().replace("\\\n", " ")
    entries = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        requirement, *options = line.split()
        assert "==" in requirement and not requirement.startswith("-"), f"{name}: not pinned: {line}"
        project, version = requirement.split("==")
        hashes = [o.removeprefix("--hash=") for o in options if o.startswith("--hash=sha256:")]
        assert hashes and len(hashes) == len(options), f"{name}: {project} has no hash or other options: {line}"
        entries[canonicalize_name(project)] = (version, hashes)
    return entries


def _direct(*groups: str) -> set[str]:
    """Direct dependencies of the core and the given extras (the project's own extras left out)."""
    lines = list(PROJECT["dependencies"]) + [d for g in groups for d in EXTRAS[g]]
    return {canonicalize_name(r.name) for r in map(Requirement, lines) if r.name != PROJECT["name"]}


def test_the_roles_are_extras():
    assert set(EXTRAS) == {"api", "engine", "airflow", "dev"}
    assert not _direct("api") & {canonicalize_name(n) for n in NOT_IN_API}
    assert "qlora-orchestration[engine]" in EXTRAS["airflow"]  # the workers run the engine
    assert "qlora-orchestration[api,engine,airflow]" in EXTRAS["dev"]  # `make install`: one venv, every role


def test_every_role_is_locked_with_hashes():
    full = _entries("requirements.lock")
    missing = _direct(*EXTRAS) - set(full)
    assert not missing, f"not in requirements.lock (run `make lock`): {missing}"
    assert full["torch"][0].endswith("+cpu")  # the CPU build: an unpinned torch pulls CUDA wheels
    assert not [name for name in full if name.startswith("nvidia-")]


def test_the_api_lock_is_the_api_extra_at_the_full_locks_versions():
    full, api = _entries("requirements.lock"), _entries("requirements-api.lock")
    assert _direct("api") <= set(api), _direct("api") - set(api)
    assert {n: v for n, (v, _) in api.items()} == {n: full[n][0] for n in api if n in full}
    assert set(api) <= set(full), set(api) - set(full)
    heavy = [n for n in api if n in NOT_IN_API or n.startswith("apache-airflow")]
    assert heavy == [], heavy
    assert "mlflow-skinny" in api
