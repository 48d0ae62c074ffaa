"""`devstack.processes.Process`: a server whose main process was killed alone leaves its worker
holding the port (MLflow's and uvicorn's workers do); starting it again stops those leftovers
first, so the new instance binds instead of failing, and `stop` stops them too."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from devstack.ports import free_port, port_open
from devstack.processes import Process, pid_alive

#: starts toy processes (a second or two each), no real service
pytestmark = pytest.mark.stack

#: binds the port, forks a worker that keeps the socket (as `mlflow server` -> uvicorn does),
#: and both sleep; a second instance binding the same port while the worker lives exits 1
SERVER = """
import os, socket, sys, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError as exc:
    print("cannot bind:", exc, flush=True)
    sys.exit(1)
s.listen()
if os.fork() == 0:
    time.sleep(600)
time.sleep(600)
"""


def _wait(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return condition()


def _server(tmp_path: Path, port: int, **kwargs) -> Process:
    return Process("server", [sys.executable, "-c", SERVER, str(port)], run_dir=tmp_path, stop_timeout=2, **kwargs)


def _kill_main_only(process: Process, port: int) -> int:
    """SIGKILL to the main process alone; returns its worker, left running with the port."""
    main = process.pid()
    assert _wait(lambda: port_open(port) and len(_group(main)) == 2), "the server did not fork its worker"
    os.kill(main, signal.SIGKILL)
    assert _wait(lambda: process.pid() is None)
    leftovers = process.leftover_pids()
    assert len(leftovers) == 1 and leftovers[0] != main
    assert port_open(port)
    return leftovers[0]


def _group(pgid: int) -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and _pgid(int(p)) == pgid]


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def test_restart_after_the_main_process_was_killed_stops_its_worker(tmp_path):
    port = free_port()
    server = _server(tmp_path, port)
    server.start()
    try:
        worker = _kill_main_only(server, port)
        new_main = server.start()
        assert not pid_alive(worker)
        time.sleep(1.0)  # long enough for a failed bind to show: the process would have exited
        log = (tmp_path / "server.log").read_text()
        assert server.pid() == new_main and "cannot bind: [Errno" not in log, log
        assert port_open(port)
    finally:
        server.stop()
    assert not port_open(port)


def test_stop_after_the_main_process_was_killed_stops_its_worker(tmp_path):
    port = free_port()
    server = _server(tmp_path, port)
    server.start()
    worker = _kill_main_only(server, port)
    assert server.stop() is True
    assert not pid_alive(worker) and not port_open(port)
    assert server.leftover_pids() == [] and server.stop() is False


def test_a_process_that_keeps_its_leftovers_starts_beside_them(tmp_path):
    """The scheduler's setting: its orphaned task processes are left to finish their task (they
    report to Airflow's API, not to the scheduler)."""
    port = free_port()
    server = _server(tmp_path, port, stop_leftovers_on_start=False)
    server.start()
    worker = _kill_main_only(server, port)
    try:
        server.start()
        assert pid_alive(worker)
        assert _wait(lambda: "cannot bind: [Errno" in (tmp_path / "server.log").read_text())  # the toy server's fate
    finally:
        server.stop()
        os.kill(worker, signal.SIGKILL)
