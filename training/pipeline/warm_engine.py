"""A warm engine: the training engine forked from a process that imported its libraries already.

A fresh `python -m training run` spends most of its start importing torch, transformers, peft
and mlflow: ~7 s on an idle 2-core machine, ~28 s on a busy one, before it reads a clip. The
warm engine server (`serve`) is one long-lived process per worker host and code version that
imports them once and, for each engine a task asks for (`spawn`), forks a child that runs the
engine's command line (`training.cli.main`) with the task's environment and working folder.
To the task (`engine_process.run_engine`) the child behaves as the cold engine does: the same
exit codes, its output on a pipe the task streams into its log, SIGTERM saves the adapter, and it
dies with the task (a lifeline pipe whose only writer is the task: when the task process dies,
even by SIGKILL, the child kills its own process group). Its process title is the engine's
command line (`ps`, and tests find it by its arguments).

Nothing here schedules or queues anything: Airflow still decides what runs where (tasks,
pools, retries); this only replaces the `exec` of a new interpreter by a `fork` of a prepared
one. The `prepare` task starts the server (`ensure_started`) so that it imports while the data
downloads; the `train` task waits for it if it is still importing (it would be slower to import
again beside it) and otherwise starts the engine cold, as it does with `QLORA_WARM_ENGINE=false`
or when anything about the server is off.

Safety: the server never runs torch code (no thread pools in use, no CUDA context: it refuses
to serve if CUDA was initialised by an import), so forking it is what torch's own DataLoader
does with every training process. A server answers only for the fingerprint it was started
with (the interpreter, the engine's source files, the environment variables read at import
time): a deployment that changed gets its own server, and the old one leaves once idle
(`QLORA_WARM_ENGINE_IDLE_S`) or as soon as its folder is removed. One server per fingerprint
(a lock file); its folder is `$QLORA_CACHE_DIR/warm-engine/`: `{fingerprint}.sock|.lock|.log`.

    python -m training.pipeline.warm_engine serve --folder DIR --fingerprint FP [--idle-s S]
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import select
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

#: what the server imports before it serves: the engine's command line and everything heavy
#: `run`, `evaluate` and the tracking import (the imports stay unused until a child runs them)
PRELOAD = ("training.cli", "training.trainer", "training.inference", "training.tracking", "mlflow", "boto3", "av")
#: imported too where there is no NVIDIA GPU: peft imports bitsandbytes (1.6 s together on the
#: CPU), which on a GPU host queries the device and so initialises CUDA, after which forking is
#: unsafe; there the engine imports them itself
PRELOAD_WITHOUT_GPU = ("peft",)
#: environment variables read when those modules are imported: part of the fingerprint
IMPORT_TIME_ENV_PREFIXES = ("HF_", "TRANSFORMERS_", "TORCH", "PYTORCH_", "CUDA_", "NVIDIA_", "OMP_", "MKL_",
                            "BNB_", "TOKENIZERS_", "LD_", "MLFLOW_ENABLE", "GIT_PYTHON")
IMPORT_TIME_ENV = ("PYTHONPATH", "PYTHONHASHSEED", "VIRTUAL_ENV")
#: how long the train task waits for a server that is still importing, before starting cold
READY_WAIT_S = 90.0
#: this module, as `python -m` runs it (where it runs as `__main__`)
SERVER_MODULE = "training.pipeline.warm_engine"
#: the engine's command line as the cold path runs it (`engine_jobs.ENGINE` + arguments)
_MODULE = "training"
_MAX_MESSAGE = 1 << 20
_SOURCE_SUFFIXES = (".py", ".toml", ".json")
#: the server's lock file and its SIGCHLD wake-up pipe (only in the server)
_LOCK = None
_WAKE: tuple[int, int] | None = None


def folder(cache_dir: Path | None = None) -> Path:
    from training.settings import get_settings

    return Path(cache_dir or get_settings().cache_dir) / "warm-engine"


def fingerprint(env: dict[str, str] | None = None) -> str:
    """What a server's imports depend on: the interpreter, the engine's files (`training/`,
    their sizes and modification times), and the import-time environment variables."""
    env = os.environ if env is None else env
    digest = hashlib.sha256(f"{sys.executable}\0{sys.version}\0".encode())
    package = Path(__file__).resolve().parents[1]
    for path in sorted(p for p in package.rglob("*") if p.suffix in _SOURCE_SUFFIXES and "__pycache__" not in p.parts):
        stat = path.stat()
        digest.update(f"{path.relative_to(package)}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
    for name in sorted(n for n in env if n.startswith(IMPORT_TIME_ENV_PREFIXES) or n in IMPORT_TIME_ENV):
        digest.update(f"{name}={env[name]}\0".encode())
    return digest.hexdigest()[:16]


def _settings(env: dict[str, str]):
    """The pipeline settings, with the warm engine's own read from `env` (the worker's, which may
    not be this process's: `make up` starts the servers of its workers)."""
    from training.settings import PipelineSettings

    names = ("QLORA_WARM_ENGINE", "QLORA_WARM_ENGINE_IDLE_S")
    return PipelineSettings(**{name: env[name] for name in names if env.get(name)})


def release(cache_dir: Path) -> int:
    """Asks every server under `cache_dir` to leave (`make down`): its socket is removed, so it
    takes no new engine and exits once its engines ended; one still importing is terminated.
    Returns how many were asked."""
    where = folder(cache_dir)
    if not where.is_dir():
        return 0
    asked = 0
    for pid_file in where.glob("*.pid"):
        sock = pid_file.with_suffix(".sock")
        if sock.exists():
            sock.unlink(missing_ok=True)
            asked += _server_alive(pid_file.with_suffix(".lock"))
            continue
        with contextlib.suppress(OSError, ValueError):  # still importing: it has no engine yet
            pid = int(pid_file.read_text())
            if _alive(pid) and b"warm_engine" in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, signal.SIGTERM)
                asked += 1
    return asked


# ---------------------------------------------------------------------------------------------
# The task's side

def _paths(where: Path, fp: str) -> tuple[Path, Path, Path]:
    return where / f"{fp}.sock", where / f"{fp}.lock", where / f"{fp}.log"


def _server_alive(lock_path: Path) -> bool:
    """Whether a server runs: it holds the lock (it takes it before importing and keeps it for
    its life), or the process `ensure_started` spawned (`.pid`) has not reached the lock yet."""
    try:
        pid = int(lock_path.with_suffix(".pid").read_text())
        if _alive(pid) and b"warm_engine" in Path(f"/proc/{pid}/cmdline").read_bytes():
            return True
    except (OSError, ValueError):
        pass
    try:
        with open(lock_path, "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(lock, fcntl.LOCK_UN)
            return False
    except OSError:
        return False


def ensure_started(cache_dir: Path | None = None, env: dict[str, str] | None = None) -> bool:
    """Starts the server for this environment's fingerprint unless one runs (or is starting).
    Returns at once (the server imports in the background); True if it started one. Never
    raises: without a server, engines start cold."""
    try:
        env = dict(os.environ if env is None else env)
        settings = _settings(env)
        if not settings.warm_engine:
            return False
        where = folder(cache_dir)
        where.mkdir(parents=True, exist_ok=True)
        fp = fingerprint(env)
        _, lock_path, log_path = _paths(where, fp)
        if _server_alive(lock_path):
            return False
        with open(log_path, "ab") as out:
            argv = [sys.executable, "-m", SERVER_MODULE, "serve", "--folder", str(where), "--fingerprint", fp,
                    "--idle-s", str(settings.warm_engine_idle_s)]
            server = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                                      start_new_session=True, close_fds=True)
        lock_path.with_suffix(".pid").write_text(f"{server.pid}\n")
        log.info("warm engine server starting (fingerprint %s, log %s)", fp, log_path)
        return True
    except Exception as exc:  # noqa: BLE001 - an optimisation never fails a task
        log.warning("could not start the warm engine server: %s", exc)
        return False


class WarmProcess:
    """The engine forked by the server, with the part of `subprocess.Popen` that `run_engine`
    uses: `pid`, `stdout` (text lines), `poll`, `wait`, `send_signal`, `kill`, `terminate`. The
    exit code comes from the server, which reaps it (negative: killed by that signal)."""

    def __init__(self, conn: socket.socket, pid: int, stdout_fd: int, lifeline_fd: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self.stdout = open(stdout_fd, "r", buffering=1, errors="replace", closefd=True)  # noqa: SIM115
        self._conn = conn
        self._lifeline = lifeline_fd  # held open while the engine runs: closing it kills the engine
        self._server_gone = False

    def poll(self) -> int | None:
        if self.returncode is not None:
            return self.returncode
        try:
            self._conn.setblocking(False)
            data = self._conn.recv(_MAX_MESSAGE)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            data = b""
        if data:
            self._set_code(json.loads(data)["exit"])
        else:
            self._server_gone = True
            if not _alive(self.pid):  # the server died: the exit code is lost, the engine is gone
                self._set_code(-signal.SIGKILL)
        return self.returncode

    def _set_code(self, code: int) -> None:
        self.returncode = code
        self._conn.close()
        if self._lifeline >= 0:
            os.close(self._lifeline)
            self._lifeline = -1

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise subprocess.TimeoutExpired("warm engine", timeout)
            if self._server_gone:  # nothing will arrive on the connection: watch the pid
                time.sleep(0.05)
            else:  # the server sends the exit code as soon as it reaped the engine
                select.select([self._conn], [], [], 0.5 if left is None else min(left, 0.5))
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def spawn(command: list[str], env: dict[str, str], cwd: str | None = None,
          ready_wait_s: float = READY_WAIT_S) -> WarmProcess | None:
    """The engine `command` (`python -m training ...`) forked by the server for `env`'s
    fingerprint, or None when there is none (then the caller starts it cold): disabled, no server
    running or starting, or the server did not answer. Waits up to `ready_wait_s` for a server
    that is still importing."""
    if command[1:3] != ["-m", _MODULE] or command[0] != sys.executable:
        return None
    try:
        if not _settings(env).warm_engine:
            return None
        where = folder()
        sock_path, lock_path, _ = _paths(where, fingerprint(env))
        deadline = time.monotonic() + ready_wait_s
        while not sock_path.exists():
            if not _server_alive(lock_path) or time.monotonic() > deadline:
                return None
            time.sleep(0.1)
        return _request(sock_path, command[3:], env, cwd or os.getcwd())
    except Exception as exc:  # noqa: BLE001 - fall back to a cold start
        log.warning("the warm engine server did not start the engine (%s): starting it cold", exc)
        return None


def _request(sock_path: Path, args: list[str], env: dict[str, str], cwd: str) -> WarmProcess:
    out_r, out_w = os.pipe()
    life_r, life_w = os.pipe()
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        conn.settimeout(10)
        conn.connect(str(sock_path))
        socket.send_fds(conn, [json.dumps({"args": args, "env": env, "cwd": cwd}).encode()], [out_w, life_r])
        reply = conn.recv(_MAX_MESSAGE)
        if not reply:
            raise ConnectionError("the server closed the connection")
        pid = json.loads(reply)["pid"]
    except BaseException:
        conn.close()
        for fd in (out_r, life_w):
            os.close(fd)
        raise
    finally:
        os.close(out_w)  # the child holds the write end now: EOF when it (and its workers) exit
        os.close(life_r)
    return WarmProcess(conn, pid, out_r, life_w)


# ---------------------------------------------------------------------------------------------
# The server

def _preload() -> tuple[str, ...]:
    import importlib

    names = PRELOAD if Path("/dev/nvidiactl").exists() else PRELOAD + PRELOAD_WITHOUT_GPU
    for name in names:
        importlib.import_module(name)
    return names


def _die_with_task(lifeline_fd: int) -> None:
    """In the child: block on the lifeline; EOF means the task process is gone."""
    while True:
        try:
            if not os.read(lifeline_fd, 1):
                break
        except InterruptedError:
            continue
        except OSError:
            break
    os.killpg(0, signal.SIGKILL)  # the engine and its data-loading workers


def _set_title(title: str) -> None:
    """The process title `ps` and /proc/PID/cmdline show (setproctitle, an Airflow dependency;
    it must first run while the process's environment is still the one it started with)."""
    with contextlib.suppress(Exception):
        import setproctitle

        setproctitle.setproctitle(title)


def _child(args: list[str], env: dict[str, str], cwd: str, stdout_fd: int, lifeline_fd: int) -> None:
    """Runs in the forked child; never returns."""
    code = 1
    try:
        os.setsid()  # signals to the task's process group never reach it; its workers join its group
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(stdout_fd, 1)
        os.dup2(stdout_fd, 2)
        os.close(devnull)
        os.close(stdout_fd)
        sys.stdout = open(1, "w", buffering=1, errors="backslashreplace", closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, errors="backslashreplace", closefd=False)  # noqa: SIM115
        _set_title(" ".join([sys.executable, "-m", _MODULE, *args]))  # before the environment changes
        os.environ.clear()
        os.environ.update(env)
        os.chdir(cwd)
        threading.Thread(target=_die_with_task, args=(lifeline_fd,), daemon=True, name="lifeline").start()
        root = logging.getLogger()
        for handler in list(root.handlers):
            root.removeHandler(handler)
        from training.catalog import load_catalog

        load_catalog.cache_clear()
        sys.argv = [str(Path(__file__).resolve().parents[1] / "__main__.py"), *args]
        from training.cli import main

        code = main(args)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - as an uncaught error in `python -m training`
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        with contextlib.suppress(Exception):
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def serve(where: Path, fp: str, idle_s: float) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s warm-engine: %(message)s")
    where.mkdir(parents=True, exist_ok=True)
    sock_path, lock_path, _ = _paths(where, fp)
    global _LOCK
    lock = _LOCK = open(lock_path, "a")  # noqa: SIM115 - held for the server's life (not by its children)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        log.info("another server serves fingerprint %s", fp)
        return 0
    # its own command line again; setting it first, with the environment it started with, lets
    # the engines it forks show theirs (`_child`)
    _set_title(f"{sys.executable} -m {SERVER_MODULE} serve --folder {where} --fingerprint {fp}")
    started = time.monotonic()
    preloaded = _preload()
    import torch

    if torch.cuda.is_initialized():
        log.error("an import initialised CUDA: forking this process is unsafe, not serving")
        return 1
    log.info("imported %s in %.1f s (pid %d, fingerprint %s)", ", ".join(preloaded), time.monotonic() - started,
             os.getpid(), fp)
    sock_path.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    tmp = sock_path.with_suffix(f".{os.getpid()}.tmp")
    listener.bind(str(tmp))
    listener.listen(16)
    os.rename(tmp, sock_path)  # clients see the socket only once it accepts
    inode = sock_path.stat().st_ino
    children: dict[int, socket.socket] = {}
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    # an engine's exit wakes the loop at once (its task waits for the exit code)
    global _WAKE
    _WAKE = os.pipe()
    for fd in _WAKE:
        os.set_blocking(fd, False)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(_WAKE[1])
    selector.register(_WAKE[0], selectors.EVENT_READ)
    last_active = time.monotonic()
    try:
        while True:
            for key, _ in selector.select(timeout=0.2):
                if key.fileobj == _WAKE[0]:
                    with contextlib.suppress(BlockingIOError):
                        while os.read(_WAKE[0], 512):
                            pass
                    continue
                conn, _ = listener.accept()
                with conn:
                    pid = _fork_engine(conn, listener, children)
                if pid:
                    last_active = time.monotonic()
            for pid, code in _reaped():
                conn = children.pop(pid, None)
                if conn is not None:
                    with contextlib.suppress(OSError), conn:
                        conn.send(json.dumps({"exit": code}).encode())
                log.info("engine %d exited with %s", pid, code)
                last_active = time.monotonic()
            if children:
                continue
            if time.monotonic() - last_active > idle_s:
                log.info("idle for %.0f s: leaving", idle_s)
                break
            try:
                if sock_path.stat().st_ino != inode:
                    log.info("%s was replaced: leaving", sock_path)
                    break
            except OSError:
                log.info("%s is gone: leaving", sock_path)
                break
    finally:
        with contextlib.suppress(OSError):
            if sock_path.stat().st_ino == inode:
                sock_path.unlink()
    return 0


def _fork_engine(conn: socket.socket, listener: socket.socket, children: dict[int, socket.socket]) -> int | None:
    conn.settimeout(10)
    try:
        data, fds, _, _ = socket.recv_fds(conn, _MAX_MESSAGE, 2)
        request = json.loads(data)
        if len(fds) != 2:
            raise ValueError(f"expected 2 file descriptors, got {len(fds)}")
    except Exception as exc:  # noqa: BLE001 - a bad request ends its connection, not the server
        log.warning("bad request: %s", exc)
        return None
    stdout_fd, lifeline_fd = fds
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        if _LOCK is not None:
            _LOCK.close()  # a child that outlives the server must not make it look alive
        signal.set_wakeup_fd(-1)
        for fd in _WAKE or ():
            os.close(fd)
        listener.close()
        for other in children.values():
            other.close()
        conn.detach()  # keep no reference to the task's connection in the engine
        _child(request["args"], request["env"], request["cwd"], stdout_fd, lifeline_fd)
    os.close(stdout_fd)
    os.close(lifeline_fd)
    try:
        conn.send(json.dumps({"pid": pid}).encode())
    except OSError:  # the task is gone already: so is the lifeline, the child kills itself
        pass
    children[pid] = socket.socket(fileno=os.dup(conn.fileno()))
    log.info("engine %d forked: %s", pid, " ".join(request["args"][:2]))
    return pid


def _reaped() -> list[tuple[int, int]]:
    found = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
        found.append((pid, os.waitstatus_to_exitcode(status)))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {SERVER_MODULE}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("serve", help="import the engine's libraries and fork engines for tasks")
    run.add_argument("--folder", required=True, type=Path)
    run.add_argument("--fingerprint", required=True)
    run.add_argument("--idle-s", type=float, default=1800)
    args = parser.parse_args(argv)
    return serve(args.folder, args.fingerprint, args.idle_s)


if __name__ == "__main__":
    sys.exit(main())
