"""Background processes with pid files and log files: start detached, wait until ready,
stop by pid (SIGTERM to the process group, SIGKILL after a grace period)."""

from __future__ import annotations

import ctypes
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path


#: Test sessions set this: services they start get SIGTERM when the test process dies, so a
#: killed pytest leaves no orphans. `make up` leaves it off (its services outlive the command).
DIE_WITH_PARENT = False


def _die_with_parent() -> None:  # runs in the child between fork and exec
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


class ServiceError(RuntimeError):
    """A service did not start or did not become ready; the message holds its log tail."""


def _start_time(pid: int) -> str | None:
    """The kernel's start time of `pid` (field 22 of /proc/PID/stat), None if gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):
        return None
    return fields[19]


def pid_alive(pid: int) -> bool:
    return _start_time(pid) is not None


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class Process:
    """One long-running command. Its pid file holds `pid start_time` so a recycled pid is
    never mistaken for it; its output goes to `log`."""

    def __init__(self, name: str, argv: Sequence[str], *, run_dir: Path, env: Mapping[str, str] | None = None,
                 cwd: Path | None = None, stop_signal: int = signal.SIGTERM, stop_timeout: float = 10.0,
                 stop_leftovers_on_start: bool = True):
        self.name = name
        self.argv = [str(a) for a in argv]
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.stop_signal = stop_signal
        self.stop_timeout = stop_timeout
        self.pid_file = Path(run_dir) / f"{name}.pid"
        self.log = Path(run_dir) / f"{name}.log"
        #: whether `start` first stops what a dead previous instance left in its process group
        #: (a server's worker that still holds the port); off for the scheduler, whose orphaned
        #: task processes still finish their task and report it to Airflow's API
        self.stop_leftovers_on_start = stop_leftovers_on_start
        self._popen: subprocess.Popen | None = None

    # -- state ---------------------------------------------------------------------------
    def pid(self) -> int | None:
        """The pid if the process recorded in the pid file still runs, else None."""
        if self._popen is not None and self._popen.poll() is not None:
            return None
        try:
            pid_text, start = self.pid_file.read_text().split()
        except (OSError, ValueError):
            return None
        pid = int(pid_text)
        return pid if _start_time(pid) == start else None

    def running(self) -> bool:
        return self.pid() is not None

    def leftover_pids(self) -> list[int]:
        """The live processes a dead instance left behind: its main process (recorded in the pid
        file, leader of its own process group since `start` spawns a new session) is gone, its
        group is not (e.g. MLflow's or uvicorn's worker after a SIGKILL of the main process only).
        A group id is not reused while the group has members, so these are its own."""
        try:
            pgid = int(self.pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return []
        if self.pid() is not None:
            return []
        return [p for p in _all_pids() if p != os.getpid() and _pgid_of(p) == pgid and pid_alive(p)]

    def stop_leftovers(self) -> list[int]:
        """Stops `leftover_pids` (SIGTERM to the group, SIGKILL after `stop_timeout`); returns them."""
        leftovers = self.leftover_pids()
        if leftovers:
            pgid = int(self.pid_file.read_text().split()[0])
            _stop_group(pgid, self.stop_signal, self.stop_timeout)
        return leftovers

    # -- start / stop --------------------------------------------------------------------
    def start(self) -> int:
        """Spawns the command in its own session (it outlives the caller) unless it runs."""
        if (pid := self.pid()) is not None:
            return pid
        if self.stop_leftovers_on_start:
            self.stop_leftovers()
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            log.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} start: {' '.join(self.argv)}\n".encode())
            log.flush()
            self._popen = subprocess.Popen(self.argv, env=self.env, cwd=self.cwd, stdin=subprocess.DEVNULL,
                                           stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                           preexec_fn=_die_with_parent if DIE_WITH_PARENT else None)
        pid = self._popen.pid
        for _ in range(100):  # /proc entry appears at once; loop only guards a race
            if (start := _start_time(pid)) is not None:
                break
            time.sleep(0.01)
        else:
            raise ServiceError(f"{self.name} exited at once:\n{log_tail(self.log)}")
        self.pid_file.write_text(f"{pid} {start}\n")
        return pid

    def stop(self) -> bool:
        """SIGTERM (or `stop_signal`) to the process group, SIGKILL after `stop_timeout`.
        Returns True if something was running."""
        pid = self.pid()
        if pid is None:
            stopped = bool(self.stop_leftovers())
            self.pid_file.unlink(missing_ok=True)
            return stopped
        stop_pid(pid, self.stop_signal, self.stop_timeout, popen=self._popen)
        self.pid_file.unlink(missing_ok=True)
        return True

    def check_alive(self) -> None:
        if not self.running():
            raise ServiceError(f"{self.name} is not running; last lines of {self.log}:\n{log_tail(self.log)}")


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    # members may all be zombies waiting for a reaper: count only live ones
    return any(_pgid_of(p) == pgid and pid_alive(p) for p in _all_pids())


def _stop_group(pgid: int, sig: int, timeout: float) -> None:
    """`sig` to every member of process group `pgid` (its leader is gone), SIGKILL after `timeout`."""
    for s, wait in ((sig, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, s)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while _group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not _group_alive(pgid):
            return


def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def pids_with_args(*args: str) -> list[int]:
    """The processes whose command line holds every one of `args` as a whole argument (e.g. the
    training engine of one job: `pids_with_args("training", "run", job_id)` matches its `--job-id`).
    A process title set with setproctitle (the engines the warm engine server forks:
    `training.pipeline.warm_engine`) is one string: its words count as arguments."""
    found = []
    for pid in _all_pids():
        try:
            argv = re.split(rb"[\0 ]", Path(f"/proc/{pid}/cmdline").read_bytes())
        except OSError:
            continue
        if all(a.encode() in argv for a in args):
            found.append(pid)
    return found


def root_pids_with_args(*args: str) -> list[int]:
    """`pids_with_args` without the children of another match: the training engine itself, not
    its DataLoader workers (forked, they carry the engine's command line)."""
    found = pids_with_args(*args)
    return [pid for pid in found if _ppid_of(pid) not in found]


def _ppid_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])  # after "pid (comm) state": the parent's pid


def _pgid_of(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def stop_pid(pid: int, sig: int = signal.SIGTERM, timeout: float = 10.0,
             popen: subprocess.Popen | None = None) -> None:
    """Stops `pid` and, if it leads a process group, every process of that group."""
    group = _pgid_of(pid) == pid
    send = (lambda s: os.killpg(pid, s)) if group else (lambda s: os.kill(pid, s))

    def alive() -> bool:
        if popen is not None:
            popen.poll()
        return pid_alive(pid) or (group and _group_alive(pid))

    try:
        send(sig)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    if alive():
        try:
            send(signal.SIGKILL)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 5
        while alive() and time.monotonic() < deadline:
            time.sleep(0.05)
    if popen is not None:
        try:
            popen.wait(timeout=1)
        except subprocess.TimeoutExpired:
            pass


def wait_until(ready: Callable[[], bool], *, timeout: float, what: str,
               processes: Sequence[Process] = (), interval: float = 0.25) -> float:
    """Polls `ready()` (exceptions count as not ready) until True; fails fast if one of
    `processes` dies. Returns the seconds waited."""
    started = time.monotonic()
    last_error: Exception | None = None
    while True:
        for proc in processes:
            proc.check_alive()
        try:
            if ready():
                return time.monotonic() - started
        except Exception as exc:  # not ready yet
            last_error = exc
        if time.monotonic() - started > timeout:
            logs = "\n".join(f"--- {p.log}:\n{log_tail(p.log)}" for p in processes)
            raise ServiceError(f"{what} not ready after {timeout:.0f} s (last error: {last_error})\n{logs}")
        time.sleep(interval)


def run_checked(argv: Sequence[str], *, env: Mapping[str, str] | None = None, log: Path | None = None,
                timeout: float = 300, cwd: Path | None = None) -> None:
    """Runs a one-off command to completion; on failure raises with its output."""
    result = subprocess.run([str(a) for a in argv], env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=timeout)
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a") as f:
            f.write(f"\n--- {' '.join(map(str, argv))} -> {result.returncode}\n{result.stdout}{result.stderr}")
    if result.returncode != 0:
        out = (result.stdout + result.stderr).strip().splitlines()[-30:]
        raise ServiceError(f"{' '.join(map(str, argv))} failed ({result.returncode}):\n" + "\n".join(out))


class ProcessService:
    """A service that is one background `Process`: subclasses set `name`, `what`, `folder`,
    `process` and `ready_timeout`, and define `healthy()` (exceptions count as not healthy)."""

    name: str
    #: how errors name it ("MLflow not ready after ...")
    what: str
    ready_timeout: float = 60
    folder: Path
    process: Process

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.process.start()

    def healthy(self) -> bool:
        raise NotImplementedError

    def wait_ready(self, timeout: float | None = None) -> float:
        """Seconds until healthy; fails fast with the log tail if the process dies."""
        return wait_until(self.healthy, timeout=timeout or self.ready_timeout, what=self.what,
                          processes=[self.process])

    def stop(self) -> bool:
        return self.process.stop()

    def pids(self) -> list[int]:
        return [p] if (p := self.process.pid()) else []
