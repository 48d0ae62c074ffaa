"""docker-compose.yaml cannot run where the tests run (no Docker engine), so these checks keep it
in step with the code it deploys: the variables the API reads, the Celery queues and the pool the
DAGs use, the secrets the header asks for, the lock files as the only source of versions, and
the API's slim image (no torch, no Airflow)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import yaml

from api.core.config import Settings
from devstack.airflow import CELERY_QUEUES, GPU_POOL, SCHEDULER_IDLE_SLEEP_S

REPO = Path(__file__).resolve().parents[1]
TEXT = (REPO / "docker-compose.yaml").read_text()
COMPOSE = yaml.safe_load(TEXT)
SERVICES = COMPOSE["services"]


def _settings_env_names() -> set[str]:
    names = set()
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        names |= set(getattr(alias, "choices", None) or ([alias] if alias else [])) | {f"QLORA_{name.upper()}"}
    return names


def test_every_api_variable_is_a_setting():
    env = SERVICES["api"]["environment"]
    ours = {k for k in env if k.startswith(("QLORA_", "MLFLOW_TRACKING_URI"))}
    assert ours and ours <= _settings_env_names(), ours - _settings_env_names()
    assert env["QLORA_ENV"] == "production"


def test_workers_serve_every_queue_and_the_gpu_pool_exists():
    queues = {}
    for name, service in SERVICES.items():
        if "celery worker" in str(service.get("command", "")):
            queues[re.search(r"--queues (\S+)", service["command"]).group(1)] = service
    assert set(queues) == set(CELERY_QUEUES)
    assert queues[GPU_POOL]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert f"airflow pools set {GPU_POOL} " in SERVICES["airflow-init"]["command"]
    executor = {s["environment"]["AIRFLOW__CORE__EXECUTOR"] for s in SERVICES.values()
                if "AIRFLOW__CORE__EXECUTOR" in s.get("environment", {})}
    assert executor == {"CeleryExecutor"}


def test_the_scheduler_loops_as_on_the_local_stack():
    """The scheduler's idle sleep (the wait between one task's end and the next one's start) is the
    one measured and set for `make up` (devstack/airflow.py, bench.airflow_handoff)."""
    env = SERVICES["airflow-scheduler"]["environment"]
    assert env["AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME"] == SCHEDULER_IDLE_SLEEP_S


def test_required_secrets_are_the_documented_ones():
    config = "\n".join(line for line in TEXT.splitlines() if not line.lstrip().startswith("#"))
    required = set(re.findall(r"\$\{(\w+):\?", config))
    usage = TEXT.split("must be set):", 1)[1].split("\n# and,", 1)[0]  # the header's list of secrets
    documented = set(re.findall(r"\b[A-Z][A-Z0-9_]{3,}\b", usage))
    assert required == documented, (required ^ documented)


def _pinned_in_pip_installs(dockerfile: str) -> set[str]:
    installs = [line for line in dockerfile.replace("\\\n", " ").splitlines() if "pip install" in line]
    return {m for line in installs for m in re.findall(r"([A-Za-z0-9_.\[\]-]+)==", line)}


def test_the_image_takes_every_version_from_the_lock_file():
    dockerfile = COMPOSE["x-app-build"]["dockerfile_inline"]
    assert _pinned_in_pip_installs(dockerfile) == {"torch"}  # torch by variant (cpu/cu128); its version is the lock's
    assert "requirements.lock" in dockerfile
    assert "--no-deps --require-hashes -r /tmp/requirements.txt" in dockerfile  # the rest: hashed
    assert "--no-deps --require-hashes -r /tmp/torch.txt" in dockerfile  # the CPU build: the lock's hash


def test_the_api_image_is_slim():
    """The API's image installs the `api` extra's lock file (no torch, no Airflow) and copies
    every first-party package the API imports."""
    api = SERVICES["api"]
    assert api["build"] == COMPOSE["x-api-build"] and api["image"] != SERVICES["airflow-scheduler"]["image"]
    dockerfile = COMPOSE["x-api-build"]["dockerfile_inline"]
    assert "pip install --no-cache-dir --no-deps --require-hashes -r requirements-api.lock" in dockerfile
    assert _pinned_in_pip_installs(dockerfile) == set()
    assert not re.search(r"torch|airflow|requirements\.lock|TORCH", dockerfile), dockerfile
    copied = set(re.findall(r"^COPY (\w+) ", dockerfile, re.M))
    first_party = {p.name for p in REPO.iterdir() if (p / "__init__.py").exists()}
    imported = set()
    for path in (REPO / "api").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.partition(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.partition(".")[0])
    assert imported & first_party <= copied, (imported & first_party) - copied
