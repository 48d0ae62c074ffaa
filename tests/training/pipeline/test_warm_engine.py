"""The warm engine (`training.pipeline.warm_engine`): a real server, forked engines.

A forked engine trains exactly as a new `python -m training run` does (same adapter, same exit
codes), a stop reaches it and it saves its adapter, it dies with a task killed by SIGKILL, it
carries the engine's command line as its title, and anything unusual (another fingerprint, the
setting off, not an engine command) falls back to a cold start."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from devstack.processes import pid_alive, pids_with_args
from training.pipeline import warm_engine
from training.pipeline.engine_process import run_engine
from training.result import EXIT_OK, EXIT_STOPPED, RunStatus, read_result

TASK = "video_classification"


def _command(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "training", "run", "--model", str(model), "--data", str(data), "--task", TASK,
            "--output", str(out), "--epochs", "1", "--batch-size", "4", "--frames", "4", "--learning-rate", "2e-3",
            "--seed", "3", "--mlflow-uri", "", "--job-id", out.name, *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def server() -> int:
    """A warm engine server for this environment, ready (its pid)."""
    assert warm_engine.ensure_started(env=_env()) is True
    where = warm_engine.folder()
    fp = warm_engine.fingerprint(_env())
    deadline = time.monotonic() + 120
    while not (where / f"{fp}.sock").exists():
        assert time.monotonic() < deadline, (where / f"{fp}.log").read_text()
        time.sleep(0.2)
    pid = int((where / f"{fp}.pid").read_text())
    yield pid
    assert warm_engine.release(where.parent) == 1
    deadline = time.monotonic() + 10
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not pid_alive(pid), "the server did not leave once its socket was removed"


def test_a_forked_engine_trains_exactly_as_a_new_process(server, tmp_path, tiny_models, colour_dataset, caplog):
    model = tiny_models("video_llama", TASK)
    caplog.set_level(logging.INFO, logger="training.pipeline.engine_process")
    warm = run_engine(_command(model, colour_dataset, tmp_path / "warm"), _env())
    assert "started warm (forked by the warm engine server)" in caplog.text
    caplog.clear()
    cold = run_engine(_command(model, colour_dataset, tmp_path / "cold"), _env(), warm_wait_s=None)
    assert "started cold" in caplog.text
    assert warm.code == cold.code == EXIT_OK, warm.tail
    assert read_result(tmp_path / "warm").status == RunStatus.COMPLETED
    assert any("step 6/6" in line for line in warm.tail)  # its output reached the task
    forked, fresh = (load_file(str(tmp_path / name / "adapter_model.safetensors")) for name in ("warm", "cold"))
    assert forked.keys() == fresh.keys()
    for name in fresh:
        torch.testing.assert_close(forked[name], fresh[name], rtol=0, atol=0)


def test_a_stop_reaches_the_forked_engine_which_saves_its_adapter(server, tmp_path, tiny_models, colour_dataset):
    model = tiny_models("video_llama", TASK)
    out = tmp_path / "stopped-job"
    seen: dict[str, list[int]] = {}

    def on_line(line: str) -> None:
        if "step 2/" in line and "pids" not in seen:  # found by its arguments, as tests and operators do
            seen["pids"] = pids_with_args("training", "run", out.name)

    ended = run_engine(_command(model, colour_dataset, out, "--step-delay", "0.5"), _env(), on_line=on_line,
                       should_stop=lambda: "stop requested" if "pids" in seen else None)
    assert ended.code == EXIT_STOPPED and ended.asked == "stop requested", ended.tail
    assert len(seen["pids"]) >= 1 and not any(pid_alive(p) for p in seen["pids"])
    result = read_result(out)
    assert result.status == RunStatus.STOPPED and "adapter_model.safetensors" in result.adapter_files


TASK_PROCESS = r"""
import os, sys, time
from training.pipeline import warm_engine
process = warm_engine.spawn(sys.argv[1:], dict(os.environ))
print(process.pid if process else "cold", flush=True)
for line in process.stdout:
    if "step 1/" in line:
        print("training", flush=True)
time.sleep(600)
"""


def test_the_forked_engine_dies_with_a_task_killed_by_sigkill(server, tmp_path, tiny_models, colour_dataset):
    model = tiny_models("video_llama", TASK)
    task = subprocess.Popen([sys.executable, "-c", TASK_PROCESS,
                             *_command(model, colour_dataset, tmp_path / "orphan", "--step-delay", "1")],
                            stdout=subprocess.PIPE, text=True, env=_env())
    try:
        engine = int(task.stdout.readline())
        assert task.stdout.readline().strip() == "training"
        assert pid_alive(engine)
        task.kill()
        task.wait()
        deadline = time.monotonic() + 10
        while pid_alive(engine) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not pid_alive(engine), "the engine outlived its task"
    finally:
        task.kill()


def test_anything_unusual_starts_cold(server, tmp_path, monkeypatch):
    env = _env()
    command = [sys.executable, "-m", "training", "build-tiny", "--architecture", "flamingo", "--task", TASK,
               "--out", str(tmp_path / "tiny")]
    process = warm_engine.spawn(command, env)  # the server's fingerprint: forked
    assert isinstance(process, warm_engine.WarmProcess) and process.wait(timeout=60) == EXIT_OK
    assert (tmp_path / "tiny" / "config.json").is_file()
    # another import-time environment, another fingerprint: no server for it, no wait
    other = {**env, "HF_HUB_OFFLINE": "1" if env.get("HF_HUB_OFFLINE") != "1" else "0"}
    assert warm_engine.fingerprint(other) != warm_engine.fingerprint(env)
    started = time.monotonic()
    assert warm_engine.spawn(command, other) is None and time.monotonic() - started < 1
    # not the engine's command line
    assert warm_engine.spawn([sys.executable, "-c", "print(1)"], env) is None
    # the setting off
    monkeypatch.setenv("QLORA_WARM_ENGINE", "false")
    assert warm_engine.spawn(command, env) is None and warm_engine.ensure_started(env=env) is False
