"""The engine as a child process of a task (`training.pipeline.engine_process`): its output is
streamed line by line (progress bars' `\\r` split), a stop (SIGTERM to the task) reaches it so it
saves its adapter, it is stopped when the task's supervisor dies and killed with the task
process, and its exit is described in words. No Airflow: each case runs in a fresh Python
process, as a task process would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from training.pipeline.engine_process import EngineExit, describe_exit, run_engine
from training.result import EXIT_BAD_INPUT

REPO = Path(__file__).resolve().parents[3]
MARK = "@@RESULT@@"

FAKE_ENGINE = r"""
import os, signal, sys, time
out = sys.argv[1]
def on_term(signum, frame):
    print("stopping: saving the adapter", flush=True)
    open(os.path.join(out, "adapter_config.json"), "w").write("{}")
    sys.exit(75)
signal.signal(signal.SIGTERM, on_term)
print(f"pid {os.getpid()}", flush=True)
for step in range(1, 10_000):
    print(f"step {step}\rstep {step} loss 0.5", flush=True)
    time.sleep(0.05)
"""

#: a task process: runs the fake engine through run_engine and does `mode` at step 3
TASK = f"""
    import json, os, signal, sys, time
    from training.pipeline.engine_process import describe_exit, run_engine
    mode, engine, out = sys.argv[1], sys.argv[2], sys.argv[3]
    lines = []
    def on_line(line):
        lines.append(line)
        if line.startswith("step 3 loss"):
            if mode == "stop":
                os.kill(os.getpid(), signal.SIGTERM)  # what Airflow does to the task process
            elif mode == "kill-child":
                os.kill(int(lines[0].split()[1]), signal.SIGKILL)
            elif mode == "kill-parent":
                print("child " + lines[0].split()[1], flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
            elif mode == "kill-supervisor":
                os.kill(os.getppid(), signal.SIGKILL)  # the Celery worker above the task dies
    start = time.monotonic()
    ended = run_engine([sys.executable, engine, out], dict(os.environ), on_line=on_line)
    print({MARK!r} + json.dumps({{"code": ended.code, "stopped": ended.stop_at is not None, "tail": ended.tail,
                                  "orphaned": ended.orphaned, "reason": describe_exit(ended.code, ended.tail),
                                  "seconds": time.monotonic() - start,
                                  "saved": os.path.exists(os.path.join(out, "adapter_config.json"))}}))
"""


@pytest.fixture
def fake_engine(tmp_path) -> Path:
    path = tmp_path / "fake_engine.py"
    path.write_text(FAKE_ENGINE)
    return path


def _task(mode: str, engine: Path, out: Path, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(TASK), mode, str(engine), str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=60, **kwargs)


def _result(stdout: str) -> dict:
    line = next(line for line in stdout.splitlines() if line.startswith(MARK))
    return json.loads(line[len(MARK):])


def test_sigterm_is_forwarded_and_the_engine_saves_its_adapter(fake_engine, tmp_path):
    proc = _task("stop", fake_engine, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = _result(proc.stdout)
    assert result["code"] == 75 and result["stopped"] is True
    assert result["saved"] is True
    assert result["tail"][-1] == "stopping: saving the adapter"
    assert "step 2" in result["tail"] and "step 2 loss 0.5" in result["tail"]  # \r split, streamed
    assert result["seconds"] < 5


def test_the_engine_is_stopped_when_the_task_supervisor_dies(fake_engine, tmp_path):
    """A task process whose supervisor (Airflow's, in the Celery worker) is SIGKILLed stops its
    engine at once (it saves its adapter) instead of training on as an orphan."""
    result_file = tmp_path / "result.txt"
    supervisor = (f"import subprocess, sys\n"
                  f"with open({str(result_file)!r}, 'w') as out:\n"
                  f"    subprocess.run(sys.argv[1:], stdout=out, stderr=subprocess.STDOUT)\n")
    proc = subprocess.run([sys.executable, "-c", supervisor, sys.executable, "-c", textwrap.dedent(TASK),
                           "kill-supervisor", str(fake_engine), str(tmp_path)], cwd=REPO, timeout=60)
    assert proc.returncode == -9  # the supervisor is gone; the task process lives on, orphaned
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and MARK not in result_file.read_text():
        time.sleep(0.2)
    result = _result(result_file.read_text())
    assert result["orphaned"] is True and result["stopped"] is False
    assert result["code"] == 75 and result["saved"] is True  # stopped by SIGTERM: the adapter is saved
    assert result["tail"][-1] == "stopping: saving the adapter"


def test_a_child_killed_by_sigkill_is_reported(fake_engine, tmp_path):
    proc = _task("kill-child", fake_engine, tmp_path)
    result = _result(proc.stdout)
    assert result["code"] == -9 and result["stopped"] is False
    assert result["reason"] == "the training process was killed by SIGKILL"


def test_the_child_dies_with_a_killed_task_process(fake_engine, tmp_path):
    proc = _task("kill-parent", fake_engine, tmp_path)
    assert proc.returncode == -9
    child = int(next(line for line in proc.stdout.splitlines() if line.startswith("child ")).split()[1])
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and Path(f"/proc/{child}").exists() \
            and "zombie" not in Path(f"/proc/{child}/status").read_text().lower():
        time.sleep(0.1)
    alive = Path(f"/proc/{child}").exists() and "zombie" not in Path(f"/proc/{child}/status").read_text().lower()
    if alive:
        os.kill(child, signal.SIGKILL)
    assert not alive, "the engine outlived the task process (orphan)"


def test_exit_code_output_and_ticks_in_process(tmp_path):
    """A child that prints (with a `\\r` redraw), sleeps and exits 3: every line reaches
    `on_line`, `on_tick` runs while it is silent, the exit code and tail come back."""
    child = ("import sys, time\n"
             "print('first', flush=True)\n"
             "print('10%\\r20%', flush=True)\n"
             "time.sleep(0.6)\n"
             "print('error: the data has no clips', flush=True)\n"
             "sys.exit(3)\n")
    lines, ticks = [], []
    ended = run_engine([sys.executable, "-c", child], dict(os.environ), on_line=lines.append,
                       on_tick=lambda: ticks.append(time.monotonic()), tick_s=0.1)
    assert ended == EngineExit(3, None, ["first", "10%", "20%", "error: the data has no clips"], False)
    assert lines == ended.tail
    assert len(ticks) >= 3  # the 0.6 s of silence ticked
    assert describe_exit(ended.code, ended.tail) == "the training failed (exit code 3): error: the data has no clips"


def test_describe_exit():
    assert describe_exit(EXIT_BAD_INPUT, ["loading", "error: --data x is not a folder"]) == \
        "the training rejected its input: error: --data x is not a folder"
    assert describe_exit(1, ["Traceback", "ValueError: boom"], "the evaluation") == \
        "the evaluation failed (exit code 1): ValueError: boom"
    assert describe_exit(-signal.SIGTERM, []) == "the training process was killed by SIGTERM"
    assert describe_exit(1, []) == "the training failed (exit code 1): no output"
