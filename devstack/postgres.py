"""PostgreSQL 15 in a folder of its own on a loopback port.

PostgreSQL refuses to run as root: as root, every command runs as the `postgres` user
(`runuser -u postgres`) and the data folder belongs to it; as anyone else, as that user."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
from pathlib import Path

from devstack.ports import HOST, port_open
from devstack.processes import ServiceError, pid_alive, run_checked, stop_pid, wait_until

PG_USER = "postgres"


def _as_pg_user(argv: list[str]) -> list[str]:
    return ["runuser", "-u", PG_USER, "--", *argv] if os.geteuid() == 0 else argv


def _binary(name: str) -> str:
    for candidate in (shutil.which(name), f"/usr/lib/postgresql/15/bin/{name}"):
        if candidate and Path(candidate).exists():
            return candidate
    raise ServiceError(f"PostgreSQL's `{name}` not found (install PostgreSQL 15)")


class Postgres:
    """`start()` runs initdb once (trust auth, loopback only) and pg_ctl start; `url(db)`
    gives a SQLAlchemy URL; `create_database(name)` makes a fresh database."""

    name = "postgres"

    def __init__(self, folder: Path, port: int):
        self.folder = Path(folder)
        self.port = port
        self.data = self.folder / "data"
        self.log = self.folder / "postgres.log"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg2://{PG_USER}@{HOST}:{self.port}/{database}"

    def _own(self) -> None:
        """As root, the folder (and every parent it needs) must be usable by `postgres`."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if os.geteuid() != 0:
            return
        pw = pwd.getpwnam(PG_USER)
        os.chown(self.folder, pw.pw_uid, pw.pw_gid)
        for parent in self.folder.resolve().parents:  # the data dir must be reachable
            mode = parent.stat().st_mode
            if not mode & 0o001:
                raise ServiceError(f"{parent} is not traversable by {PG_USER}; put the PostgreSQL folder elsewhere")
        if self.log.exists():
            os.chown(self.log, pw.pw_uid, pw.pw_gid)

    def pid(self) -> int | None:
        try:
            pid = int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if pid_alive(pid) else None

    def start(self, timeout: float = 30) -> None:
        if self.pid() is not None:
            return
        self._own()
        if not (self.data / "PG_VERSION").exists():
            run_checked(_as_pg_user([_binary("initdb"), "-D", str(self.data), "-U", PG_USER, "--auth=trust",
                                     "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"]), timeout=120)
        options = f"-c listen_addresses={HOST} -p {self.port} -k {self.data} -c fsync=off"
        run_checked(_as_pg_user([_binary("pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w",
                                 "-t", str(int(timeout)), "-o", options, "start"]), timeout=timeout + 10)
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 30) -> None:
        wait_until(self.healthy, timeout=timeout, what="PostgreSQL")

    def healthy(self) -> bool:
        if not port_open(self.port):
            return False
        import psycopg2

        with psycopg2.connect(host=HOST, port=self.port, user=PG_USER, dbname="postgres", connect_timeout=2):
            return True

    def create_database(self, name: str, *, exist_ok: bool = False) -> str:
        """Makes database `name` (kept as it is when it exists and `exist_ok`); returns its URL."""
        import psycopg2

        conn = psycopg2.connect(host=HOST, port=self.port, user=PG_USER, dbname="postgres")
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cur.fetchone() is None or not exist_ok:
                    cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        return self.url(name)

    def stop(self, timeout: float = 15) -> bool:
        """Fast shutdown (SIGINT: disconnects clients) by pid, SIGKILL after `timeout`."""
        pid = self.pid()
        if pid is None:
            return False
        stop_pid(pid, signal.SIGINT, timeout)
        return True

    def pids(self) -> list[int]:
        return [p] if (p := self.pid()) else []
