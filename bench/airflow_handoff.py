"""Airflow's hand-off between tasks (issue 16): how long a finished task waits before the next one
is queued and started, with the scheduler's idle sleep at Airflow's default and at tuned values,
side by side in one run, and what the faster loop costs while nothing runs.

A private Airflow 3.3 (api-server, scheduler, dag-processor; LocalExecutor as on `make up`; the
metadata DB in SQLite as on `make up`, or PostgreSQL with `--db postgres` as in docker-compose)
runs a DAG of `--tasks` short Python tasks in a chain. Only the scheduler is restarted between
variants (`AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME`, Airflow's default 1 s: the loop sleeps
that long after a pass that queued and finished nothing), in rounds that alternate the variants.
Per variant:

- idle cost: CPU seconds per minute of the scheduler's process tree (and of the PostgreSQL server
  with `--db postgres`), from /proc/PID/stat (utime + stime) over `--idle` seconds with no run;
- per hop (`--runs` runs): the previous task's end -> this task's `queued` (the scheduler's loop),
  `queued` -> start (the executor's pick-up and the task supervisor's start), end -> start;
  trigger (the POST) -> first task queued; last task end -> run ended (the run's state; the API
  reads `completed` from the task states already).
  Each task sleeps a random 0.5-1.5 s (`--task-s`) so that it ends at any phase of the loop.

    python -m bench.airflow_handoff [--values default,0.5,0.2] [--runs 3] [--idle 60] [--rounds 1]
                                    [--db sqlite|postgres]

'default' is Airflow's own 1 s (the variable removed), whatever `make up` sets (0.5 s). About 2 min
per variant and round on a loaded 2-core machine.

Measures; asserts nothing. Prints the load average beside the figures (2 shared cores here).
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from devstack.airflow import Airflow  # noqa: E402
from devstack.ports import free_ports  # noqa: E402
from devstack.processes import wait_until  # noqa: E402

DAG_ID = "bench_handoff_chain"
SETTING = "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME"
DAG_FILE = '''
import random
import time
from datetime import datetime

from airflow.sdk import dag, task


@dag(dag_id="{dag_id}", schedule=None, start_date=datetime(2026, 1, 1), catchup=False)
def chain():
    @task
    def hop():
        time.sleep(random.uniform({low}, {high}))  # ends at any phase of the scheduler's loop

    previous = None
    for i in range({tasks}):
        current = hop.override(task_id=f"t{{i}}")()
        if previous is not None:
            previous >> current
        previous = current


chain()
'''
TICKS = os.sysconf("SC_CLK_TCK")


def _ts(value: str | None) -> float | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() if value else None


# ---- CPU of process trees ---------------------------------------------------------------------
def _stat(pid: int) -> tuple[int, float] | None:
    """(ppid, CPU seconds) of a live process."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / TICKS


def _tree_cpu(root: int) -> dict[int, float]:
    """CPU seconds of `root` and each live descendant, by pid."""
    stats = {int(p): s for p in os.listdir("/proc") if p.isdigit() and (s := _stat(int(p))) is not None}
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = {}, [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            out[pid] = stats[pid][1]
            todo.extend(children.get(pid, []))
    return out


def _cpu_per_minute(roots: dict[str, int], seconds: float) -> dict[str, float]:
    """CPU seconds per minute of each named process tree over `seconds` (processes alive at both ends)."""
    before = {name: _tree_cpu(pid) for name, pid in roots.items()}
    started = time.monotonic()
    time.sleep(seconds)
    after = {name: _tree_cpu(pid) for name, pid in roots.items()}
    elapsed = time.monotonic() - started
    return {name: sum(after[name][p] - before[name][p] for p in after[name] if p in before[name]) * 60 / elapsed
            for name in roots}


# ---- one run ----------------------------------------------------------------------------------
def _run_once(api: httpx.Client, tasks: int) -> dict[str, list[float]]:
    posted = time.time()
    resp = api.post(f"/api/v2/dags/{DAG_ID}/dagRuns", json={"logical_date": None})
    resp.raise_for_status()
    answered = time.time()
    run_id = resp.json()["dag_run_id"]

    def ended() -> bool:
        return api.get(f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}").json()["state"] in ("success", "failed")

    wait_until(ended, timeout=300, what=f"run {run_id}", interval=0.1)
    run_end = _ts(api.get(f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}").json()["end_date"])
    tis = {t["task_id"]: t for t in api.get(f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances").json()[
        "task_instances"]}
    if any(t["state"] != "success" for t in tis.values()):
        raise RuntimeError(f"run {run_id}: {[(k, t['state']) for k, t in tis.items()]}")
    times = [tuple(_ts(tis[f"t{i}"][k]) for k in ("queued_when", "start_date", "end_date")) for i in range(tasks)]
    out: dict[str, list[float]] = {"end -> queued": [], "queued -> start": [], "end -> start": [],
                                   "POST answered": [answered - posted],
                                   "POST -> first queued": [times[0][0] - posted],
                                   "last end -> run ended": [run_end - times[-1][2]],
                                   "POST -> run ended": [run_end - posted]}
    out["queued -> start"].append(times[0][1] - times[0][0])
    for (_, _, prev_end), (queued, start, _) in zip(times, times[1:], strict=False):
        out["end -> queued"].append(queued - prev_end)
        out["queued -> start"].append(start - queued)
        out["end -> start"].append(start - prev_end)
    return out


def _variant_env(base: dict[str, str], value: str) -> dict[str, str]:
    env = dict(base)
    env.pop(SETTING, None)
    if value != "default":
        env[SETTING] = value
    return env


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--values", default="default,0.5,0.2",
                    help="idle sleep values in seconds, comma-separated; 'default' leaves Airflow's (1 s)")
    ap.add_argument("--tasks", type=int, default=6, help="tasks in the chain (the training DAG has 6)")
    ap.add_argument("--runs", type=int, default=3, help="runs per variant and round")
    ap.add_argument("--rounds", type=int, default=1, help="rounds over the variants (alternating)")
    ap.add_argument("--idle", type=float, default=60, help="seconds of idle CPU measurement per variant and round")
    ap.add_argument("--task-s", type=float, nargs=2, default=(0.5, 1.5), metavar=("LOW", "HIGH"),
                    help="each task sleeps a uniform random time in this range, so that tasks end at any phase "
                         "of the scheduler's loop (a no-op task ends in step with it: its hop reads ~0.9 s at 1 s)")
    ap.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    args = ap.parse_args()
    values = [v.strip() for v in args.values.split(",") if v.strip()]

    with tempfile.TemporaryDirectory(prefix="bench-handoff-") as tmp:
        tmp_path = Path(tmp)
        os.chmod(tmp_path, 0o755)  # PostgreSQL (run as its own user) must reach its folder
        (tmp_path / "dags").mkdir()
        (tmp_path / "plugins").mkdir()
        (tmp_path / "dags" / "chain.py").write_text(DAG_FILE.format(dag_id=DAG_ID, tasks=args.tasks,
                                                                        low=args.task_s[0], high=args.task_s[1]))
        airflow_port, pg_port = free_ports(2)
        postgres = None
        database_url = None
        if args.db == "postgres":
            from devstack.postgres import Postgres

            postgres = Postgres(tmp_path / "postgres", pg_port)
            postgres.start()
            database_url = postgres.create_database("airflow")
        airflow = Airflow(tmp_path / "airflow", airflow_port, password=secrets.token_urlsafe(12),
                          jwt_secret=secrets.token_urlsafe(32), secret_key=secrets.token_urlsafe(32),
                          database_url=database_url, dags_folder=tmp_path / "dags",
                          plugins_folder=tmp_path / "plugins")
        scheduler = next(p for p in airflow.processes if p.name == "airflow-scheduler")
        figures: dict[str, dict[str, list[float]]] = {v: {} for v in values}
        idle: dict[str, dict[str, list[float]]] = {v: {} for v in values}
        loads: list[float] = []
        try:
            started = time.monotonic()
            scheduler.env = _variant_env(airflow.env, values[0])
            airflow.start()
            airflow.wait_ready(300)
            api = httpx.Client(base_url=airflow.url, headers={"Authorization": f"Bearer {airflow.token()}"},
                               timeout=30)
            wait_until(lambda: api.get(f"/api/v2/dags/{DAG_ID}").status_code == 200, timeout=180,
                       what="the bench DAG parsed", interval=1)
            print(f"Airflow up in {time.monotonic() - started:.0f} s (db {args.db}, LocalExecutor, "
                  f"a chain of {args.tasks} tasks of {args.task_s[0]}-{args.task_s[1]} s)", flush=True)
            _run_once(api, args.tasks)  # warm-up: first parse of the DAG in a task process, DB caches
            for round_no in range(args.rounds):
                for value in values:
                    if round_no or value != values[0]:
                        scheduler.stop()
                        scheduler.env = _variant_env(airflow.env, value)
                        scheduler.start()
                        wait_until(lambda: airflow.health().get("scheduler", {}).get("status") == "healthy"
                                   and scheduler.running(), timeout=180, what="the scheduler", interval=0.5)
                    time.sleep(5)  # the scheduler's start-up work (adoption, first loops) settles
                    loads.append(os.getloadavg()[0])
                    roots = {"scheduler": scheduler.pid()}
                    if postgres is not None:
                        roots["postgres"] = postgres.pid()
                    for name, per_minute in _cpu_per_minute(roots, args.idle).items():
                        idle[value].setdefault(name, []).append(per_minute)
                    for _ in range(args.runs):
                        for hop, seconds in _run_once(api, args.tasks).items():
                            figures[value].setdefault(hop, []).extend(seconds)
                    loads.append(os.getloadavg()[0])
                    print(f"  round {round_no + 1}, idle sleep {value}: done (load {loads[-1]:.1f})", flush=True)
        finally:
            airflow.stop()
            if postgres is not None:
                postgres.stop()

    label = {v: ("1 (default)" if v == "default" else v) for v in values}
    width = max(12, *(len(label[v]) + 2 for v in values))
    print(f"\nscheduler_idle_sleep_time [s]{''.join(f'{label[v]:>{width}}' for v in values)}")
    hops = list(next(iter(figures.values())))
    for hop in hops:
        for stat, fn in (("mean", statistics.fmean), ("max", max)):
            cells = "".join(f"{fn(figures[v][hop]):>{width}.3f}" for v in values)
            print(f"  {hop + ' ' + stat:<27}{cells}")
    n = {v: len(figures[v]["end -> queued"]) for v in values}
    print(f"  {'hops measured':<27}{''.join(f'{n[v]:>{width}}' for v in values)}")
    per_job = {v: statistics.fmean(figures[v]["end -> start"]) * (args.tasks - 1)
               + statistics.fmean(figures[v]["POST -> first queued"]) + statistics.fmean(figures[v]["queued -> start"])
               + statistics.fmean(figures[v]["last end -> run ended"]) for v in values}
    print(f"  {'hand-offs per run (sum)':<27}{''.join(f'{per_job[v]:>{width}.2f}' for v in values)}")
    for name in next(iter(idle.values())):
        cells = "".join(f"{statistics.fmean(idle[v][name]):>{width}.2f}" for v in values)
        print(f"  {'idle CPU s/min ' + name:<27}{cells}")
    print(f"load average (1 min) during the run: {min(loads):.1f}-{max(loads):.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
