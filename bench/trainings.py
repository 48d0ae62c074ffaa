"""Training orchestration figures on a full local stack (its own ports and temp folder):

1. one tiny job: `POST /v1/trainings` -> first logged training step -> `completed`, split into
   API (the POST), Airflow scheduling (POST -> run start), task start (run start -> train task
   start); beside the same training run directly with `python -m training run`;
2. stop latency: `POST .../stop` -> the training process is gone, and -> job `stopped`;
3. p50/p99 of `GET /v1/trainings/{id}` and `GET /v1/trainings` with 10,000 jobs in the table at
   50 concurrent clients, beside `GET /v1/auth/me` in the same run: a user with 100 settled jobs,
   one with 100 of which 2 are running (the lists of the process share one bulk Airflow read per
   `QLORA_LIVE_STATE_TTL_S`), and one with 1,000 settled jobs, listed whole and by pages of 100.

    python -m bench.trainings [--jobs 10000] [--user-jobs 100] [--heavy-user-jobs 1000]
                              [--clients 50] [--seconds 8] [--executor local|celery] [--skip-load]

`--executor celery` runs parts 1-2 on the stack of `QLORA_STACK_EXECUTOR=celery` (Celery
workers for the `default` and `gpu` queues, Redis): run it beside the default to compare.

Measures; asserts nothing. PostgreSQL for the API database.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import httpx

from bench.api import ROUNDS, Result, load, print_table, signup
from devstack.ports import free_ports
from devstack.postgres import Postgres
from devstack.processes import pids_with_args
from training.s3 import adapter_prefix, s3_uri
from training.data.synthetic import make_dataset, zip_folder

MODEL = "flamingo-tiny-classification"
PARAMS = {"epochs": 1, "batch_size": 2, "lora_rank": 4}


def _ts(value: str | None) -> float | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() if value else None


def _poll(api: httpx.Client, job_id: str, until, timeout_s: float = 600, every: float = 0.2) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = api.get(f"/v1/trainings/{job_id}").json()
        if until(got):
            return got
        time.sleep(every)
    raise TimeoutError(f"job {job_id}: {got}")


def tiny_job(stack, api: httpx.Client, dataset_id: str, folder: Path) -> None:
    from mlflow.tracking import MlflowClient

    t0 = time.time()
    resp = api.post("/v1/trainings", json={"model_id": MODEL, "dataset_id": dataset_id, "output_name": "bench",
                                           "training_params": PARAMS})
    t_api = time.time() - t0
    job_id = resp.json()["job_id"]
    done = _poll(api, job_id, lambda j: j["status"] in ("completed", "failed", "stopped"))
    t_done = time.time() - t0
    airflow = httpx.Client(base_url=stack.airflow.url, headers={"Authorization": f"Bearer {stack.airflow.token()}"})
    run = airflow.get(f"/api/v2/dags/qlora_training/dagRuns/train-{job_id}").json()
    tis = {t["task_id"]: t for t in airflow.get(
        f"/api/v2/dags/qlora_training/dagRuns/train-{job_id}/taskInstances").json()["task_instances"]}
    first_step = MlflowClient(stack.mlflow.url).get_metric_history(done["mlflow_run_id"], "progress")[0].timestamp / 1000
    run_start = _ts(run["start_date"])
    first_ti = min(_ts(t["start_date"]) for t in tis.values() if t.get("start_date"))
    train_start = _ts(tis["train"]["start_date"])
    train_end = _ts(tis["train"]["end_date"])

    # the same training directly
    model_dir, data_dir = folder / "model", folder / "data" / "squares"
    subprocess.run([sys.executable, "-m", "training", "build-tiny", "--architecture", "flamingo", "--task",
                    "video_classification", "--out", str(model_dir), "--catalog-id", MODEL], check=True,
                   capture_output=True)
    d0 = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "training", "run", "--model", str(model_dir), "--data",
                             str(data_dir), "--task", "video_classification", "--output", str(folder / "direct"),
                             "--epochs", "1", "--batch-size", "2", "--lora-rank", "4"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "MLFLOW_TRACKING_URI": ""})
    d_first = None
    for line in proc.stdout:  # type: ignore[union-attr]
        if d_first is None and ("step 1/" in line or "1/" in line and "it/s" in line):
            d_first = time.time() - d0
    proc.wait()
    d_done = time.time() - d0

    print(f"\n1. one tiny job ({MODEL}, {PARAMS}) -> {done['status']}")
    print(f"   through the API: first training step {first_step - t0:6.1f} s, completed {t_done:6.1f} s")
    print(f"   directly (python -m training run, rc {proc.returncode}): first step "
          f"{(d_first if d_first is not None else float('nan')):6.1f} s, done {d_done:6.1f} s")
    print(f"   orchestration overhead to completed: {t_done - d_done:6.1f} s")
    print(f"   split: API (POST) {t_api * 1000:.0f} ms | Airflow scheduling (POST -> run start) {run_start - t0:.1f} s"
          f" | run start -> first task start {first_ti - run_start:.1f} s | -> train task start {train_start - t0:.1f} s"
          f" | train task {train_end - train_start:.1f} s | train end -> completed seen {t_done - (train_end - t0):.1f} s")


def stop_latency(api: httpx.Client, dataset_id: str) -> None:
    job_id = api.post("/v1/trainings", json={"model_id": MODEL, "dataset_id": dataset_id, "output_name": "long",
                                             "training_params": {"epochs": 100, "batch_size": 1, "lora_rank": 4}}
                      ).json()["job_id"]
    _poll(api, job_id, lambda j: j["status"] == "running" and j["progress"] > 0)
    t0 = time.time()
    api.post(f"/v1/trainings/{job_id}/stop")
    gone = None
    while time.time() - t0 < 60:
        if gone is None and not pids_with_args("training", "run", job_id):
            gone = time.time() - t0
        got = api.get(f"/v1/trainings/{job_id}").json()
        if got["status"] in ("stopped", "failed", "completed"):
            break
        time.sleep(0.1)
    print(f"\n2. stop: request -> training process gone {gone if gone is not None else float('nan'):.1f} s, "
          f"-> job {got['status']} {time.time() - t0:.1f} s (partial adapter: {got['output_path']})")


def seed_jobs(database_url: str, usernames: list[str], per_user: list[int], dataset_id: str,
              running: dict[str, int] | None = None) -> tuple[str, ...]:
    """Completed, settled jobs (`running[username]` of them running instead: their runs are
    unknown to Airflow, which the list reads in one request; younger than the lost-run grace)."""
    from sqlalchemy import select

    from api.db import make_engine, make_sessionmaker
    from api.models import TrainingJob, User
    from api.models.base import new_id, utcnow

    engine = make_engine(database_url)
    first_ids = []
    with make_sessionmaker(engine)() as session:
        now = utcnow()
        for username, count in zip(usernames, per_user):
            owner = session.scalar(select(User).where(User.username == username))
            rows = []
            for i in range(count):
                job_id = new_id()
                if i < (running or {}).get(username, 0):
                    rows.append(TrainingJob(
                        id=job_id, owner_id=owner.id, model_id=MODEL, dataset_id=dataset_id, status="running",
                        request={"model_id": MODEL, "dataset_id": dataset_id, "training_params": PARAMS,
                                 "output_name": f"j{i}"}, output_name=f"j{i}", airflow_run_id=f"train-{job_id}",
                        stage="training", progress=0.5, created_at=now - timedelta(seconds=i),
                        started_at=now - timedelta(seconds=i)))
                    continue
                rows.append(TrainingJob(
                    id=job_id, owner_id=owner.id, model_id=MODEL, dataset_id=dataset_id, status="completed",
                    request={"model_id": MODEL, "dataset_id": dataset_id, "training_params": PARAMS,
                             "output_name": f"j{i}"}, output_name=f"j{i}", airflow_run_id=f"train-{job_id}",
                    stage="registering", progress=1.0, created_at=now - timedelta(seconds=i),
                    started_at=now - timedelta(seconds=i + 60), completed_at=now - timedelta(seconds=i),
                    output_path=s3_uri("qlora", adapter_prefix(job_id)),
                    metrics={"loss": 0.1, "progress": 1.0}, settled_at=now,
                    log_tail="\n".join(f"[engine] step {s}/60 loss 0.1" for s in range(60))))
            session.add_all(rows)
            session.commit()
            first_ids.append(rows[0].id)
    engine.dispose()
    return tuple(first_ids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000, help="jobs in the table in all")
    parser.add_argument("--user-jobs", type=int, default=100, help="jobs of the users who list")
    parser.add_argument("--heavy-user-jobs", type=int, default=1000, help="jobs of the heavy user who lists")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--skip-jobs", action="store_true", help="only the load part")
    parser.add_argument("--skip-load", action="store_true", help="only the job parts (1-2)")
    parser.add_argument("--executor", choices=("local", "celery"), default="local",
                        help="Airflow executor of the stack (QLORA_STACK_EXECUTOR)")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="qlora-bench-trainings-"))
    folder.chmod(0o755)
    pg = Postgres(folder / "pg", free_ports(1)[0])
    pg.start()
    os.environ["QLORA_DATABASE_URL"] = database_url = pg.create_database("bench")
    os.environ["QLORA_CACHE_DIR"] = str(folder / "cache")
    from devstack.stack import Ports, Stack

    stack = Stack(folder / "stack", Ports.shifted(Ports.free_offset()), executor=args.executor)
    try:
        stack.up(log=lambda line: print(line, flush=True))
        base = stack.api.url
        user = f"bench_{uuid.uuid4().hex[:8]}"
        headers = signup(base, user)
        api = httpx.Client(base_url=base, headers=headers, timeout=60)
        make_dataset(folder / "data" / "squares", 12)
        archive = zip_folder(folder / "data", folder / "squares.zip")
        init = api.post("/v1/datasets/upload-initiate", json={"file_name": "s.zip", "file_type": "application/zip",
                                                              "dataset_name": "bench"}).json()
        httpx.put(init["upload_url"], content=archive.read_bytes(), timeout=60).raise_for_status()
        api.post("/v1/datasets/upload-complete", json={"dataset_id": init["dataset_id"], "s3_key": init["s3_key"]})
        deadline = time.monotonic() + 180
        while api.get(f"/v1/datasets/{init['dataset_id']}").json()["status"] == "processing":
            if time.monotonic() > deadline:
                raise TimeoutError("dataset never validated")
            time.sleep(0.5)
        dataset_id = init["dataset_id"]
        if not args.skip_jobs:
            tiny_job(stack, api, dataset_id, folder)
            stop_latency(api, dataset_id)
        if args.skip_load:
            return

        names = [f"bench_{uuid.uuid4().hex[:8]}" for _ in range(4)]  # settled, 2 running, heavy, filler
        headers_of = {name: signup(base, name) for name in names}
        counts = [args.user_jobs, args.user_jobs, args.heavy_user_jobs]
        counts.append(max(args.jobs - sum(counts), 0))
        job_id, *_ = seed_jobs(database_url, names, counts, dataset_id, running={names[1]: 2})

        def paired(name: str, path: str, user: str = names[0]) -> tuple[Result, Result]:
            trivial, route = Result("GET /v1/auth/me", [], 0.0, 0), Result(name, [], 0.0, 0)
            for _ in range(ROUNDS):
                for total, p in ((trivial, "/v1/auth/me"), (route, path)):
                    r = asyncio.run(load(base, total.name, "GET", p, headers_of[user], None, args.clients,
                                         args.seconds / ROUNDS))
                    total.latencies_ms += r.latencies_ms
                    total.seconds += r.seconds
                    total.errors += r.errors
            return route, trivial

        print(f"\n3. {sum(counts)} jobs in the table; PostgreSQL, uvicorn 1 worker")
        print_table([paired("GET /v1/trainings/{id} (completed)", f"/v1/trainings/{job_id}"),
                     paired(f"GET /v1/trainings ({counts[0]} rows)", "/v1/trainings"),
                     paired(f"GET /v1/trainings ({counts[1]}, 2 running)", "/v1/trainings", names[1]),
                     paired(f"GET /v1/trainings ({counts[2]} rows)", "/v1/trainings", names[2]),
                     paired(f"GET /v1/trainings?limit=100 (of {counts[2]})", "/v1/trainings?limit=100&offset=100",
                            names[2])], args.clients)
    finally:
        stack.down(log=lambda line: None)
        pg.stop()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
