"""Runs Airflow code in a subprocess with its own AIRFLOW_HOME (a migrated temp SQLite
database), so the configuration of other tests in the session cannot leak in or out. The
subprocess prints its result as one JSON line after MARK."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MARK = "@@RESULT@@"


def make_airflow_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLFLOW", "AWS_", "QLORA_"))}
    env.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "QLORA_CACHE_DIR": str(home / "cache"),
        # a warm engine server a test's train task started leaves soon after the session
        "QLORA_WARM_ENGINE_IDLE_S": "120",
        "GX_ANALYTICS_ENABLED": "False",
    })
    migrate = subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env=env,
                             capture_output=True, text=True, timeout=300)
    assert migrate.returncode == 0, migrate.stderr[-3000:]
    return env


def run_python(code: str, env: dict[str, str], *args: str, timeout: int = 300, cwd: Path | None = None,
               log: Path | None = None) -> dict:
    """Runs `code` (dedented) with `args`; returns the JSON it printed after MARK."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], env=env,
                          cwd=cwd or env["AIRFLOW_HOME"], capture_output=True, text=True, timeout=timeout)
    if log is not None:
        log.write_text(proc.stdout + proc.stderr)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(MARK)]
    assert proc.returncode == 0 and lines, (proc.stdout[-6000:], proc.stderr[-6000:])
    return json.loads(lines[-1][len(MARK):])
