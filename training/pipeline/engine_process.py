"""The engine (`python -m training ...`) as a child process of a task.

`run_engine` streams the child's output into the task log, forwards a stop (SIGTERM/SIGINT to
the task) to it, and makes sure it never outlives the task: the child is SIGKILLed by the
kernel when the task process dies, and is stopped (SIGTERM: it saves its adapter) when the
task's own supervisor (Airflow's task runner in the worker) dies.

The child is forked by the worker's warm engine server when one runs (`warm_engine`: no
import time; it dies with the task through a lifeline pipe instead of the kernel's parent-death
signal), else it is a new `python -m training` process.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import NamedTuple

from training.pipeline import warm_engine
from training.result import EXIT_BAD_INPUT

log = logging.getLogger(__name__)

#: how often the task checks that its supervisor still lives
SUPERVISOR_CHECK_S = 1.0
#: output lines kept for the failure message
TAIL_LINES = 40
#: after the task asked the engine to stop (`should_stop`), it is SIGKILLed if still alive this
#: much later (it saves its partial adapter first; a hung one must not hold the GPU)
STOP_KILL_AFTER_S = 120.0


class EngineExit(NamedTuple):
    #: the exit code (negative: killed by that signal)
    code: int
    #: monotonic time the task received SIGTERM/SIGINT (None: no stop was asked)
    stop_at: float | None
    #: the last lines of its output
    tail: list[str]
    #: the task's supervisor (Airflow's task runner parent) died while the engine ran
    orphaned: bool = False
    #: why the task itself asked the engine to stop (`should_stop`'s answer), e.g. its deadline
    asked: str | None = None

    @property
    def stopped(self) -> bool:
        """A stop was asked (by a signal to the task, or because its supervisor died)."""
        return self.stop_at is not None or self.orphaned


def die_with_parent() -> None:
    """In the child, before exec: receive SIGKILL when the task process dies (even by
    SIGKILL), so no orphan keeps a GPU; then a process group of its own (signals reach it only
    through us)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass
    os.setsid()


def stop_when_orphaned(process: subprocess.Popen | warm_engine.WarmProcess, state: dict,
                       check_s: float = SUPERVISOR_CHECK_S) -> None:
    """Watches the task's parent, Airflow's supervisor. If it dies (the Celery worker crashed
    or was OOM-killed), Airflow fails the task after its heartbeat timeout and may give the GPU
    to another training, while this process, reparented, would train on: so the engine is
    stopped (SIGTERM: it saves its adapter) as soon as the supervisor is gone. Sets
    `state["orphaned"]`."""
    supervisor = os.getppid()
    while process.poll() is None:
        if os.getppid() != supervisor:
            state["orphaned"] = True
            log.error("the Airflow supervisor of this task (pid %s) is gone: stopping the engine", supervisor)
            process.send_signal(signal.SIGTERM)
            return
        time.sleep(check_s)


def _read_lines(stream, lines: queue.Queue) -> None:
    try:
        for line in stream:
            lines.put(line)
    finally:
        lines.put(None)


def run_engine(command: list[str], env: dict[str, str], *, on_line: Callable[[str], None] | None = None,
               on_tick: Callable[[], None] | None = None, tick_s: float = 1.0,
               should_stop: Callable[[], str | None] | None = None,
               kill_after_s: float = STOP_KILL_AFTER_S, warm_wait_s: float | None = warm_engine.READY_WAIT_S
               ) -> EngineExit:
    """Runs `command`, logging each output line (`[engine] ...`; progress bars' `\\r` redraws
    split into lines) and returns how it ended. SIGTERM/SIGINT received meanwhile are
    forwarded to it as SIGTERM.

    `on_line(line)` is called for each line, `on_tick()` at least every `tick_s` while it runs
    (e.g. to read its result manifest); both in the calling thread. `should_stop()`, called at
    each tick too, returns why the engine must stop (a deadline passed, a stop was requested) or
    None: the first answer is kept as `EngineExit.asked` and the engine gets SIGTERM (it saves its
    adapter), then SIGKILL if it still runs `kill_after_s` later.

    An engine command (`python -m training ...`) is forked by the warm engine server when one
    runs for this environment (`training.pipeline.warm_engine`; waiting up to `warm_wait_s` for
    one that is still importing; None: never), else started as a new process.
    """
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    state = {"stop_at": None, "orphaned": False, "asked": None}
    asked_at = time.monotonic()
    process = warm_engine.spawn(command, env, ready_wait_s=warm_wait_s) if warm_wait_s is not None else None
    if process is None:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   bufsize=1, env=env, preexec_fn=die_with_parent, errors="replace")
    log.info("engine pid %d started %s in %.2f s", process.pid,
             "warm (forked by the warm engine server)" if isinstance(process, warm_engine.WarmProcess) else "cold",
             time.monotonic() - asked_at)
    threading.Thread(target=stop_when_orphaned, args=(process, state), daemon=True,
                     name="supervisor-watch").start()
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=_read_lines, args=(process.stdout, lines), daemon=True, name="engine-output").start()

    def forward(signum, _frame):
        if state["stop_at"] is None:
            state["stop_at"] = time.monotonic()
            log.warning("received %s: asking the engine to stop (it saves its adapter)", signal.Signals(signum).name)
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)

    previous = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            previous[sig] = signal.signal(sig, forward)
        except ValueError:  # not the main thread: rely on the process group's signals
            pass
    try:
        next_tick = time.monotonic() + tick_s
        while True:
            try:
                line = lines.get(timeout=max(0.0, next_tick - time.monotonic())
                                 if on_tick or should_stop else None)
            except queue.Empty:
                line = ""
            if line is None:  # end of output: the engine exited (or closed its output)
                break
            for part in line.rstrip("\n").split("\r"):
                if part.strip():
                    tail.append(part)
                    log.info("[engine] %s", part)
                    if on_line is not None:
                        on_line(part)
            if (on_tick is not None or should_stop is not None) and time.monotonic() >= next_tick:
                if on_tick is not None:
                    on_tick()
                _check_stop(process, state, should_stop, kill_after_s)
                next_tick = time.monotonic() + tick_s
        code = process.wait()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return EngineExit(code, state["stop_at"], list(tail), state["orphaned"], state["asked"])


def _check_stop(process: subprocess.Popen | warm_engine.WarmProcess, state: dict,
                should_stop: Callable[[], str | None] | None,
                kill_after_s: float) -> None:
    """Asks the engine to stop once `should_stop` gives a reason; SIGKILL once it ignored that
    for `kill_after_s`."""
    if process.poll() is not None:
        return
    if state["asked"] is None and should_stop is not None:
        try:
            reason = should_stop()
        except Exception as exc:  # noqa: BLE001 - a failing check never stops a training
            log.warning("could not check whether to stop the engine: %s", exc)
            reason = None
        if reason:
            state["asked"], state["asked_at"] = reason, time.monotonic()
            log.warning("stopping the engine (it saves its adapter): %s", reason)
            process.send_signal(signal.SIGTERM)
    elif state["asked"] is not None and time.monotonic() - state["asked_at"] > kill_after_s:
        log.error("the engine still runs %.0f s after it was asked to stop: killing it", kill_after_s)
        process.kill()


def describe_exit(code: int, tail: list[str], what: str = "the training") -> str:
    """Why the engine's `what` ("the training", "the evaluation") failed, from its exit code
    and last lines (its `error: ...` line when it printed one): for when no result manifest
    says why."""
    if code < 0:
        return f"{what} process was killed by {signal.Signals(-code).name}"
    errors = [line for line in tail if line.lower().startswith("error")]
    last = errors[-1] if errors else (tail[-1] if tail else "no output")
    if code == EXIT_BAD_INPUT:
        return f"{what} rejected its input: {last}"
    return f"{what} failed (exit code {code}): {last}"
