"""Upload-complete -> `ready` for a 20-clip dataset, split between the API, Airflow's
scheduling and the validation itself, beside the same validation run in-process.

    python -m bench.datasets [--runs 3] [--clips 20] [--offset 410]

Starts a private stack (SeaweedFS, MLflow, Airflow, API; no tiny-model seeding) in a temp
folder on ports shifted by `--offset`, and stops it at the end. Each run uploads a new generated
dataset through the API (initiate, presigned PUT, complete), polls `GET /v1/datasets/{id}` every
0.2 s until `ready`, then reads the run's and task instances' times from Airflow's REST API v2.
The baseline extracts the same archive locally and calls `training.data.validation` on it
(first call in this process, then a warm call). Measures; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import httpx

from devstack.stack import Ports, Stack
from training.data.archive import extract_archive
from training.data.dataset_format import find_root
from training.data.synthetic import make_dataset, zip_folder

DAG_ID = "dataset_validation"
POLL_S = 0.2
READY_TIMEOUT_S = 300

#: (row label, start event, end event); events are wall-clock seconds, see `_events`
PHASES = [
    ("API: upload-complete request", "complete_sent", "complete_answered"),
    ("API: trigger (sent -> run queued)", "complete_sent", "run_queued"),
    ("Airflow: run queued -> extract queued", "run_queued", "extract_queued"),
    ("Airflow: extract queued -> start", "extract_queued", "extract_start"),
    ("task: extract", "extract_start", "extract_end"),
    ("Airflow: extract end -> validate queued", "extract_end", "validate_queued"),
    ("Airflow: validate queued -> start", "validate_queued", "validate_start"),
    ("task: validate", "validate_start", "validate_end"),
    ("Airflow: validate end -> run end", "validate_end", "run_end"),
    ("API: settle (run end -> ready seen)", "run_end", "ready_seen"),
]
SCHEDULING = [p for p in PHASES if p[0].startswith("Airflow:")]
EXECUTION = [p for p in PHASES if p[0].startswith("task:")]


def _ts(value: str | None) -> float:
    if not value:
        return float("nan")
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(timezone.utc).timestamp()


def _events(airflow: httpx.Client, run_id: str) -> dict[str, float]:
    """Airflow's own times of the run and of its `extract` and `validate` task instances."""
    run = airflow.get(f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}").raise_for_status().json()
    tis = airflow.get(f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances").raise_for_status().json()
    events = {"run_queued": _ts(run.get("queued_at")), "run_start": _ts(run.get("start_date")),
              "run_end": _ts(run.get("end_date"))}
    for ti in tis["task_instances"]:
        for field, name in (("queued_when", "queued"), ("start_date", "start"), ("end_date", "end")):
            events[f"{ti['task_id']}_{name}"] = _ts(ti.get(field))
    return events


def _login(api: httpx.Client) -> None:
    user, password = f"bench_{uuid.uuid4().hex[:8]}", "bench-password-123"
    api.post("/auth/signup", json={"username": user, "email": f"{user}@example.com",
                                   "password": password}).raise_for_status()
    token = api.post("/auth/login", json={"username": user, "password": password}).raise_for_status().json()
    api.headers["Authorization"] = f"Bearer {token['access_token']}"


def _one_dataset(api: httpx.Client, airflow: httpx.Client, archive: Path) -> dict[str, float]:
    """Uploads `archive`, waits for `ready`; returns every event time (wall clock, seconds)."""
    init = api.post("/datasets/upload-initiate", json={
        "file_name": archive.name, "file_type": "application/zip",
        "dataset_name": "bench", "dataset_description": "bench.datasets"}).raise_for_status().json()
    httpx.put(init["upload_url"], content=archive.read_bytes(), timeout=60).raise_for_status()
    sent = time.time()
    api.post("/datasets/upload-complete",
             json={"dataset_id": init["dataset_id"], "s3_key": init["s3_key"]}).raise_for_status()
    answered = time.time()
    deadline = time.monotonic() + READY_TIMEOUT_S
    while (body := api.get(f"/datasets/{init['dataset_id']}").raise_for_status().json())["status"] == "processing":
        if time.monotonic() > deadline:
            raise SystemExit(f"dataset {init['dataset_id']} still processing after {READY_TIMEOUT_S} s")
        time.sleep(POLL_S)
    ready = time.time()
    if body["status"] != "ready":
        raise SystemExit(f"dataset ended {body['status']}: {body.get('error')}")
    return {**_events(airflow, f"validate-{init['dataset_id']}"),
            "complete_sent": sent, "complete_answered": answered, "ready_seen": ready}


def _wait_for_dag(airflow: httpx.Client, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while airflow.get(f"/api/v2/dags/{DAG_ID}").status_code != 200:
        if time.monotonic() > deadline:
            raise SystemExit(f"Airflow has not parsed {DAG_ID} after {timeout:.0f} s")
        time.sleep(1)


def _row(label: str, values: list[float]) -> str:
    return f"  {label:44} {statistics.median(values):8.2f} {max(values):8.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--clips", type=int, default=20)
    parser.add_argument("--offset", type=int, default=410, help="port offset of the private stack")
    args = parser.parse_args()

    for key in [k for k in os.environ if k.startswith(("QLORA_", "MLFLOW_", "AWS_ENDPOINT_URL"))]:
        del os.environ[key]  # the private stack's settings, not a shell's
    folder = Path(tempfile.mkdtemp(prefix="qlora-bench-datasets-"))
    stack = Stack(folder, Ports.shifted(args.offset))
    try:
        started = time.monotonic()
        stack.up(log=lambda line: None, seed=False)
        print(f"private stack up in {time.monotonic() - started:.0f} s (ports +{args.offset})", flush=True)
        airflow = httpx.Client(base_url=stack.airflow.url, timeout=30,
                               headers={"Authorization": f"Bearer {stack.airflow.token()}"})
        api = httpx.Client(base_url=f"{stack.api.url}/v1", timeout=60)
        _wait_for_dag(airflow)
        _login(api)

        runs: list[dict[str, float]] = []
        extract_s: list[float] = []
        first_call_s = 0.0
        warm_s: list[float] = []
        for i in range(args.runs):
            data = make_dataset(folder / f"data{i}" / "squares", args.clips, seed=i)
            archive = zip_folder(data.parent, folder / f"squares{i}.zip")
            runs.append(_one_dataset(api, airflow, archive))
            total = runs[-1]["ready_seen"] - runs[-1]["complete_sent"]
            print(f"run {i + 1}/{args.runs}: upload-complete -> ready {total:.2f} s", flush=True)

            t = time.perf_counter()  # baseline: the same archive, extracted and validated here
            extract_archive(archive, folder / f"extracted{i}")
            extract_s.append(time.perf_counter() - t)
            root = find_root(folder / f"extracted{i}")
            if i == 0:  # first call pays the lazy imports (Great Expectations) a fresh task process pays
                from training.data.validation import validate_dataset
                t = time.perf_counter()
                assert validate_dataset(root, "bench")["valid"]
                first_call_s = time.perf_counter() - t
            t = time.perf_counter()
            assert validate_dataset(root, "bench")["valid"]
            warm_s.append(time.perf_counter() - t)

        def span(run: dict[str, float], phases) -> float:
            return sum(run[end] - run[start] for _, start, end in phases)

        load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
        print(f"\n{args.clips}-clip dataset ({archive.stat().st_size / 1024:.0f} KiB zip), N={args.runs} "
              f"(new dataset each), poll every {POLL_S} s; {os.cpu_count()} CPUs, load average {load}")
        print(f"  {'seconds':44} {'median':>8} {'max':>8}")
        for label, start, end in PHASES:
            print(_row(label, [r[end] - r[start] for r in runs]))
        print("  " + "-" * 62)
        print(_row("= Airflow scheduling (sum of Airflow rows)", [span(r, SCHEDULING) for r in runs]))
        print(_row("= task execution (extract + validate)", [span(r, EXECUTION) for r in runs]))
        print(_row("= upload-complete sent -> ready seen", [r["ready_seen"] - r["complete_sent"] for r in runs]))
        print(_row("  (run queued -> run start, inside scheduling)", [r["run_start"] - r["run_queued"] for r in runs]))
        print("\nbaseline in this process, same archives (no Airflow, no S3)")
        print(_row("extract_archive", extract_s))
        print(_row("validate_dataset, first call (once)", [first_call_s]))
        print(_row("validate_dataset, warm call", warm_s))
    finally:
        stack.down(log=lambda line: None)
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
