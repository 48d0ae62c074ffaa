"""The API under load, on a private full stack (PostgreSQL for the API and for Airflow's
metadata, SeaweedFS, MLflow with auth, Airflow LocalExecutor, uvicorn 1 worker; ports shifted by QLORA_STACK_PORT_OFFSET, default
420; a temp folder; taken down at the end):

1. `--users` users (default 20) sign up, each uploads one small dataset (`qlora`'s path: declared
   size, `Idempotency-Key`) and waits for its validation (the real `dataset_validation` DAG);
2. baseline: `--pollers` clients (default 50) poll `GET /v1/trainings` and the detail of one of
   their user's jobs for `--seconds`, nothing else running; then one client alone;
3. load: the users submit `--jobs` training jobs in all (default 200, tiny model, each stopped
   right away: what matters is the API) while the same pollers poll; a 429 is waited out
   (`Retry-After`, capped) and a 503 retried with the same `Idempotency-Key`;
4. the same baseline again once every job settled (same list sizes as under load).

Prints the count of every status code per kind of request (goal: nothing but 2xx and 429),
p50/p99 of the polls in each phase, and what the submissions took.

    python -m bench.load [--users 20] [--jobs 200] [--pollers 50] [--seconds 20] [--max-load-s 300]

Not part of a bare `make bench` (a full stack; 25 min on the loaded 2-core dev machine, 10 of them validating the 20 datasets); run it by name. Measures; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import signal
import statistics
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

MODEL = "flamingo-tiny-classification"
PARAMS = {"epochs": 1, "batch_size": 2, "lora_rank": 4}
PASSWORD = "bench-password-123"
OFFSET = 420
RETRY_AFTER_CAP_S = 5.0
#: set on SIGINT/SIGTERM: every loop ends, the stack is taken down
ABORT = threading.Event()
#: set when --max-load-s has passed: submitters stop submitting
LOAD_OVER = threading.Event()


class Tally:
    """Status codes per kind of request, and latencies per (phase, kind) — thread-safe."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.codes: dict[str, Counter] = defaultdict(Counter)
        self.latency: dict[tuple[str, str], list[float]] = defaultdict(list)
        #: the `detail` of every 5xx answer, per kind of request (what to fix)
        self.errors: dict[str, Counter] = defaultdict(Counter)
        #: job details per phase: read fresh, or with fields shown as last stored (`stale`)
        self.freshness: dict[str, Counter] = defaultdict(Counter)
        #: per (phase, kind): each answer's Server-Timing parts (ms) and `outside` (the client's time
        #: minus `app`: the connection, uvicorn's event loop), with the client's latency
        self.timings: dict[tuple[str, str], list[tuple[float, dict[str, float]]]] = defaultdict(list)

    def call(self, client: httpx.Client, kind: str, method: str, url: str, phase: str | None = None,
             **kwargs) -> httpx.Response | None:
        started = time.perf_counter()
        try:
            resp = client.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            with self.lock:
                self.codes[kind][type(exc).__name__] += 1
            return None
        elapsed = (time.perf_counter() - started) * 1000
        detail = None
        if resp.status_code >= 500:
            try:
                detail = str(resp.json().get("detail"))[:160]
            except ValueError:
                detail = resp.text[:160]
        with self.lock:
            self.codes[kind][resp.status_code] += 1
            if detail is not None:
                self.errors[kind][detail] += 1
            if phase:
                self.latency[(phase, kind)].append(elapsed)
                if (parts := server_timing(resp)) is not None:
                    parts["outside"] = max(elapsed - parts.get("app", 0.0), 0.0)
                    self.timings[(phase, kind)].append((elapsed, parts))
        return resp


def server_timing(resp: httpx.Response) -> dict[str, float] | None:
    """The answer's `Server-Timing` parts in ms (api/core/server_timing.py), None without one."""
    value = resp.headers.get("Server-Timing")
    if not value:
        return None
    parts: dict[str, float] = {}
    for entry in value.split(","):
        name, _, dur = entry.strip().partition(";dur=")
        try:
            parts[name] = float(dur)
        except ValueError:
            continue
    return parts


def print_tracebacks(folder: Path, most: int = 3) -> None:
    """The API's tracebacks (its log is deleted with the stack): what a 500 was."""
    for log in sorted(folder.rglob("api*.log")):
        blocks = re.findall(r"(Traceback \(most recent call last\):\n(?:[ \t].*\n)+.*)", log.read_text(errors="replace"))
        print(f"\n{len(blocks)} traceback(s) in {log.name}" + (f"; the last {most}:" if blocks else ""))
        for block in blocks[-most:]:
            print(block[-4000:])


def print_timings(tally: Tally) -> None:
    """Where the polls' time went: p50/p99 of each part, and the parts of the slowest 1%."""
    print("\nwhere the polls' time went (ms; Server-Timing parts, `outside` = client time - app):")
    for (phase, kind), rows in tally.timings.items():
        names = sorted({n for _, parts in rows for n in parts}, key=lambda n: (n in ("app", "outside"), n))
        cells = ", ".join(f"{n} {_pct([p.get(n, 0.0) for _, p in rows], 0.5):.0f}/"
                          f"{_pct([p.get(n, 0.0) for _, p in rows], 0.99):.0f}" for n in names)
        print(f"  {phase:58s} {kind:20s} p50/p99: {cells}")
        slowest = sorted(rows, key=lambda r: r[0])[-max(1, len(rows) // 100):]
        means = ", ".join(f"{n} {statistics.fmean(p.get(n, 0.0) for _, p in slowest):.0f}" for n in names)
        print(f"  {'':58s} {'':20s} slowest {len(slowest)} (>= {slowest[0][0]:.0f} ms), mean: {means}")


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


class User:
    def __init__(self, base: str, name: str, tally: Tally) -> None:
        self.name = name
        self.tally = tally
        self.http = httpx.Client(base_url=base, timeout=60)
        self.jobs: list[str] = []

    def sign_up(self) -> None:
        t = self.tally
        t.call(self.http, "POST /auth/signup", "POST", "/v1/auth/signup",
               json={"username": self.name, "email": f"{self.name}@example.com", "password": PASSWORD})
        resp = t.call(self.http, "POST /auth/login", "POST", "/v1/auth/login",
                      json={"username": self.name, "password": PASSWORD})
        self.http.headers["Authorization"] = f"Bearer {resp.json()['access_token']}"

    def upload(self, archive: bytes) -> str:
        t = self.tally
        body = {"file_name": "squares.zip", "file_type": "application/zip", "dataset_name": "squares",
                "file_size_bytes": len(archive)}
        started = t.call(self.http, "POST /datasets/upload-initiate", "POST", "/v1/datasets/upload-initiate",
                         json=body, headers={"Idempotency-Key": uuid.uuid4().hex}).json()
        httpx.put(started["upload_url"], content=archive, timeout=60).raise_for_status()
        for _ in range(5):
            done = t.call(self.http, "POST /datasets/upload-complete", "POST", "/v1/datasets/upload-complete",
                          json={"dataset_id": started["dataset_id"], "s3_key": started["s3_key"]})
            if done is not None and done.status_code == 200:
                break
            time.sleep(3)
        return started["dataset_id"]

    def wait_ready(self, dataset_id: str, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not ABORT.is_set():
            resp = self.tally.call(self.http, "GET /datasets/{id} (setup)", "GET", f"/v1/datasets/{dataset_id}")
            if resp is not None and resp.status_code == 200 and resp.json()["status"] != "processing":
                return resp.json()["status"]
            time.sleep(2)
        return "timeout"

    def submit(self, dataset_id: str, count: int, durations: list[float]) -> None:
        """`count` jobs, each stopped as soon as it was accepted."""
        t = self.tally
        for i in range(count):
            body = {"model_id": MODEL, "dataset_id": dataset_id, "output_name": f"load-{i}",
                    "training_params": PARAMS}
            key = uuid.uuid4().hex
            started = time.perf_counter()
            if LOAD_OVER.is_set():
                return
            while not ABORT.is_set() and not LOAD_OVER.is_set():
                resp = t.call(self.http, "POST /trainings", "POST", "/v1/trainings", json=body,
                              headers={"Idempotency-Key": key})
                if resp is not None and resp.status_code == 202:
                    break
                if resp is not None and resp.status_code == 429:
                    time.sleep(min(float(resp.headers.get("Retry-After", 1)), RETRY_AFTER_CAP_S))
                    continue
                if resp is None or resp.status_code in (502, 503, 504):
                    time.sleep(2)
                    continue
                break  # a refusal: counted, not retried
            durations.append(time.perf_counter() - started)
            if resp is None or resp.status_code != 202:
                continue
            job_id = resp.json()["job_id"]
            self.jobs.append(job_id)
            t.call(self.http, "POST /trainings/{id}/stop", "POST", f"/v1/trainings/{job_id}/stop")


def poll(users: list[User], tally: Tally, phase: str, clients: int, seconds: float) -> None:
    """`clients` threads, each on one user's token, alternating the list and a job's detail."""
    stop = time.monotonic() + seconds

    def loop(n: int) -> None:
        user = users[n % len(users)]
        http = httpx.Client(base_url=str(user.http.base_url), headers=dict(user.http.headers), timeout=60)
        rng = random.Random(n)
        while time.monotonic() < stop and not ABORT.is_set():
            tally.call(http, "GET /trainings", "GET", "/v1/trainings", phase=phase)
            if user.jobs:
                resp = tally.call(http, "GET /trainings/{id}", "GET", f"/v1/trainings/{rng.choice(user.jobs)}",
                                  phase=phase)
                if resp is not None and resp.status_code == 200:
                    stale = resp.json().get("stale")
                    with tally.lock:
                        tally.freshness[phase]["stale: " + ",".join(stale) if stale else "fresh"] += 1
        http.close()

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(loop, range(clients)))


def _settled(users: list[User], timeout_s: float) -> int:
    """Waits until no job of any user is queued or running; returns how many still are."""
    deadline = time.monotonic() + timeout_s
    active = -1
    while time.monotonic() < deadline and not ABORT.is_set():
        active = 0
        for user in users:
            resp = user.http.get("/v1/trainings")
            active += sum(j["status"] in ("queued", "running") for j in resp.json()) if resp.status_code == 200 else 1
        if active == 0:
            return 0
        time.sleep(5)
    return active


def report(tally: Tally, users: list[User], durations: list[float], summary: dict[str, float], args,
           t_start: float) -> None:
    """What was measured, also after an abort (then partial: said so)."""
    if not tally.codes:
        return
    jobs = sum(len(u.jobs) for u in users)
    if "submit_s" in summary:
        print(f"\n{jobs} jobs accepted ({summary['warm']:.0f} warm-up + {jobs - summary['warm']:.0f} of "
              f"{summary['planned']:.0f} under load) in {summary['submit_s']:.0f} s of submissions "
              f"({(jobs - summary['warm']) / summary['submit_s']:.2f} jobs/s; cap {args.max_load_s:.0f} s"
              f"{', reached' if LOAD_OVER.is_set() else ''}); load phase {summary['load_s']:.0f} s; "
              f"{summary['left']:.0f} jobs still queued/running {args.settle_s:.0f} s later")
    else:
        print(f"\nPARTIAL (aborted): {jobs} jobs accepted")
    if durations:
        print(f"a submission (POST until 202; 429s waited out <= {RETRY_AFTER_CAP_S:.0f} s, 503s retried with the "
              f"same key): p50 {statistics.median(durations):.2f} s, p99 {_pct(durations, 0.99):.2f} s, n {len(durations)}")
    print("\nstatus codes (every request of the run; exception names: no answer within 60 s):")
    for kind, codes in sorted(tally.codes.items()):
        print(f"  {kind:34s} " + ", ".join(f"{code}: {n}" for code, n in sorted(codes.items(), key=str)))
    for kind, details in sorted(tally.errors.items()):
        for detail, n in details.most_common():
            print(f"  {kind:34s} 5xx x{n}: {detail}")
    print(f"\npoll latency (ms), {args.pollers} pollers (1 where said), uvicorn 1 worker, PostgreSQL:")
    print(f"  {'phase':58s} {'request':20s} {'n':>6s} {'p50':>8s} {'p99':>8s}")
    for (phase, kind), values in tally.latency.items():
        print(f"  {phase:58s} {kind:20s} {len(values):6d} {_pct(values, 0.5):8.1f} {_pct(values, 0.99):8.1f}")
    print_timings(tally)
    print("\njob details read fresh, or with fields shown as last stored (`stale`: Airflow did not answer in time):")
    for phase, counts in tally.freshness.items():
        print(f"  {phase:58s} " + ", ".join(f"{k}: {n}" for k, n in counts.most_common()))
    print(f"\nwhole run {time.monotonic() - t_start:.0f} s; load average {os.getloadavg()[0]:.1f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--jobs", type=int, default=200, help="jobs submitted in all")
    parser.add_argument("--pollers", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=20, help="length of each baseline phase")
    parser.add_argument("--validation-timeout", type=float, default=900)
    parser.add_argument("--max-load-s", type=float, default=300,
                        help="the submission phase ends after this long; jobs not submitted by then are reported")
    parser.add_argument("--settle-s", type=float, default=120, help="wait this long for jobs to settle")
    args = parser.parse_args()
    offset = int(os.environ.get("QLORA_STACK_PORT_OFFSET", OFFSET))

    folder = Path(tempfile.mkdtemp(prefix="qlora-bench-load-"))
    folder.chmod(0o755)
    from devstack.postgres import Postgres
    from devstack.stack import Ports, Stack
    from training.data.synthetic import make_dataset, zip_folder

    ports = Ports.shifted(offset)
    pg = Postgres(folder / "pg", ports.postgres)
    stack = None
    tally = Tally()
    t_start = time.monotonic()
    users: list[User] = []
    durations: list[float] = []
    summary: dict[str, float] = {}

    def abort(signum, frame):  # noqa: ARG001
        ABORT.set()
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, abort)
    signal.signal(signal.SIGINT, abort)
    try:
        pg.start()
        os.environ["QLORA_DATABASE_URL"] = pg.create_database("bench")
        # Airflow's metadata database on PostgreSQL too (as in production): on SQLite, 20 parallel
        # validation triggers lock it ("database is locked") until the scheduler dies
        os.environ["QLORA_AIRFLOW_DATABASE_URL"] = pg.create_database("airflow")
        os.environ["QLORA_CACHE_DIR"] = str(folder / "cache")
        stack = Stack(folder / "stack", ports)
        stack.up(log=lambda line: print(line, flush=True))
        base = stack.api.url
        make_dataset(folder / "data" / "squares", 8)
        archive = zip_folder(folder / "data", folder / "squares.zip").read_bytes()
        users += [User(base, f"load_{uuid.uuid4().hex[:8]}", tally) for _ in range(args.users)]
        for user in users:  # one after the other: the login rate limit counts per address
            user.sign_up()
        t0 = time.monotonic()
        with ThreadPoolExecutor(args.users) as pool:
            datasets = list(pool.map(lambda u: u.upload(archive), users))
            states = list(pool.map(lambda ud: ud[0].wait_ready(ud[1], args.validation_timeout),
                                   zip(users, datasets)))
        print(f"\n{args.users} users, {len(archive)} B dataset each: uploaded and validated in "
              f"{time.monotonic() - t0:.0f} s ({Counter(states)})", flush=True)
        ready = [(u, d) for u, d, s in zip(users, datasets, states) if s == "ready"]
        if not ready:
            raise SystemExit("no dataset validated")

        # one job per user first, so the detail polls have something to read in every phase
        warm: list[float] = []
        with ThreadPoolExecutor(len(ready)) as pool:
            list(pool.map(lambda ud: ud[0].submit(ud[1], 1, warm), ready))
        print(f"warm-up: one job per user accepted, p50 {statistics.median(warm):.2f} s", flush=True)
        _settled(users, args.settle_s)
        poll(users, tally, "baseline: 50 clients, no submissions", args.pollers, args.seconds)
        poll(users, tally, "baseline: 1 client alone", 1, args.seconds / 2)

        per_user = [args.jobs // len(ready) + (i < args.jobs % len(ready)) - 1 for i in range(len(ready))]
        summary["warm"], summary["planned"] = len(ready), sum(per_user)
        done = threading.Event()
        load_phase = f"under load: {args.pollers} clients + {args.jobs} submissions"

        def pollers() -> None:
            while not done.is_set() and not ABORT.is_set():
                poll(users, tally, load_phase, args.pollers, 5)

        t_load = time.monotonic()
        poller = threading.Thread(target=pollers)
        poller.start()
        cap = threading.Timer(args.max_load_s, LOAD_OVER.set)
        cap.start()
        with ThreadPoolExecutor(len(ready)) as pool:
            list(pool.map(lambda x: x[0][0].submit(x[0][1], x[1], durations), zip(ready, per_user)))
        cap.cancel()
        summary["submit_s"] = time.monotonic() - t_load
        done.set()
        poller.join()
        summary["load_s"] = time.monotonic() - t_load
        summary["left"] = _settled(users, args.settle_s)
        poll(users, tally, "after: 50 clients, no submissions", args.pollers, args.seconds)
    finally:
        ABORT.set()
        report(tally, users, durations, summary, args, t_start)
        if any(code == 500 for codes in tally.codes.values() for code in codes):
            print_tracebacks(folder)
        if stack is not None:
            stack.down(log=lambda line: None)
        pg.stop()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
