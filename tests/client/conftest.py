"""Helpers of the `qlora` command tests: the real installed command (`.venv/bin/qlora`, put
there by `make install`) run as a subprocess with its own config folder."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

SHIM = Path(__file__).with_name("shim")


def qlora_binary() -> str:
    path = Path(sys.executable).with_name("qlora")
    if not path.exists():
        pytest.fail(f"{path} is missing: `make install` installs the client (pip install -e ./client)")
    return str(path)


def base_env(config_home: Path, api_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("QLORA_", "AWS_", "MLFLOW_")) and k not in ("NO_COLOR", "FORCE_COLOR")}
    env.update(QLORA_API_URL=api_url, XDG_CONFIG_HOME=str(config_home), QLORA_POLL_S="0.5", COLUMNS="120",
               PYTHONPATH=str(SHIM))
    return env


Run = Callable[..., subprocess.CompletedProcess]


@pytest.fixture
def make_runner(tmp_path: Path) -> Callable[[str], Run]:
    """`make_runner(api_url)` -> `run(*args, env=..., stdin=..., timeout=...)`: `qlora ARGS` with a
    config folder of this test, stdin not a terminal."""

    def make(api_url: str) -> Run:
        env0 = base_env(tmp_path / "config", api_url)

        def run(*args: str, env: dict[str, str] | None = None, stdin: str | None = None,
                timeout: float = 120) -> subprocess.CompletedProcess:
            return subprocess.run([qlora_binary(), *args], env={**env0, **(env or {})}, input=stdin,
                                  stdin=None if stdin is not None else subprocess.DEVNULL,
                                  capture_output=True, text=True, timeout=timeout, cwd=tmp_path)

        run.env = env0  # type: ignore[attr-defined]
        run.config = tmp_path / "config" / "qlora"  # type: ignore[attr-defined]
        return run

    return make
