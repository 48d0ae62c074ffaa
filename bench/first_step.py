"""Time to the first step and throughput at scale (issue 16), on a full local stack of its own
(own ports and temp folder), the tiny flamingo classification model:

1. per dataset (8 small clips; N generated 320x240 5 s 25 fps clips, default 1,000):
   POST /v1/trainings -> first step and -> completed through the stack, against the engine
   alone (`python -m training run`, same data and parameters, tracking to the same MLflow) with
   the ratio; and the baseline engine in the same run: the engine of the commit before issue 16
   (`git archive BASELINE training`), which decoded every clip before its first step and kept
   frames in memory only;
2. the first and the second epoch of each engine run (from its log: last step line of the
   epoch; epoch 1 counts from the engine's `model:` line, the evaluation is only after epoch 2);
3. where the orchestration time goes, task by task (Airflow's queued/start/end of each task
   instance, and inside `train` the engine's own lines as streamed into the task log), and
   the import costs of a task process (DAG parse) and of the engine;
4. a second job on the same dataset (warm worker cache and frame store).
5. the baseline of the warm engine (`training.pipeline.warm_engine`): the stack restarted with
   `QLORA_WARM_ENGINE=false`, one job on the first dataset, every engine a new process.

    python -m bench.first_step [--clips 1000] [--skip-large] [--baseline REV]

Measures; asserts nothing. Clip generation: 16 distinct clips are encoded (libx264 ultrafast)
and copied to N files (decoding costs the same whatever the picture; encoding 1,000 distinct
clips takes ~4 min on this 2-core machine).
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
MODEL = "flamingo-tiny-classification"
PARAMS = {"epochs": 2, "batch_size": 8, "lora_rank": 4, "eval_every_epochs": 2}
BASELINE = "d8fd274^"  # the engine before issue 16 (pre-pass over every clip, memory-only frames)
STEP_RE = re.compile(r"step (\d+)/(\d+) epoch (\d+)")
ENGINE_TIME_RE = re.compile(r"^\[engine\] (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")
TASKS = ("validate_inputs", "prepare", "train", "evaluate", "register", "finalize")


def _ts(value: str | None) -> float | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() if value else None


# ---- data -------------------------------------------------------------------------------------
def _clip(path: Path, colour: tuple[int, int, int], left: bool, w: int = 320, h: int = 240, fps: int = 25,
          seconds: int = 5, top: int = 90) -> None:
    import av
    import numpy as np

    frames = fps * seconds
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps, options={"preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for i in range(frames):
            image = np.full((h, w, 3), 16, np.uint8)
            x = int((w - 60) * (1 - i / (frames - 1) if left else i / (frames - 1)))
            image[top:top + 60, x:x + 60] = colour
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def make_large_dataset(folder: Path, count: int) -> tuple[Path, float]:
    """`count` clips 320x240, 5 s, 25 fps, labelled by colour (16 distinct encodes, copied)."""
    started = time.monotonic()
    (folder / "clips").mkdir(parents=True, exist_ok=True)
    colours = {"red": (220, 30, 30), "blue": (30, 30, 220)}
    distinct = []
    for k in range(16):
        name = list(colours)[k % 2]
        path = folder / f"distinct_{k}.mp4"
        _clip(path, colours[name], left=bool(k // 2 % 2), top=20 + k * 10)
        distinct.append((path, name))
    rows = []
    for i in range(count):
        source, label = distinct[i % 16]
        file_name = f"clips/clip_{i:05d}.mp4"
        shutil.copyfile(source, folder / file_name)
        rows.append({"file_name": file_name, "label": label, "split": "validation" if i % 5 == 0 else "train"})
    for path, _ in distinct:
        path.unlink()
    with open(folder / "metadata.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["file_name", "label", "split"])
        writer.writeheader()
        writer.writerows(rows)
    return folder, time.monotonic() - started


# ---- the engine alone -------------------------------------------------------------------------
def engine_alone(code_root: Path, model: Path, data: Path, out: Path, env: dict[str, str]) -> dict:
    """Runs `python -m training run` from `code_root` and times its lines as they arrive."""
    command = [sys.executable, "-m", "training", "run", "--model", str(model), "--data", str(data), "--task",
               "video_classification", "--output", str(out), "--epochs", str(PARAMS["epochs"]), "--batch-size",
               str(PARAMS["batch_size"]), "--lora-rank", str(PARAMS["lora_rank"]), "--eval-every-epochs",
               str(PARAMS["eval_every_epochs"]), "--experiment", "bench-engine-alone"]
    t0 = time.time()
    proc = subprocess.Popen(command, cwd=code_root, env={**env, "PYTHONPATH": str(code_root)},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    marks: dict[str, float] = {}
    epoch_end: dict[int, float] = {}
    tail = []
    for line in proc.stdout:  # type: ignore[union-attr]
        now = time.time() - t0
        tail = (tail + [line])[-15:]
        if " data: " in line:
            marks.setdefault("data", now)
        elif " model: " in line:
            marks.setdefault("model", now)
        elif m := STEP_RE.search(line):
            marks.setdefault("first_step", now)
            epoch_end[int(m.group(3))] = now
    _, status, usage = os.wait4(proc.pid, 0)  # its CPU time too: this machine is shared, wall times vary
    proc.returncode = os.waitstatus_to_exitcode(status)
    done = time.time() - t0
    if proc.returncode != 0:
        print("".join(tail), file=sys.stderr)
    e1 = epoch_end.get(1, float("nan")) - marks.get("model", float("nan"))
    e2 = epoch_end.get(2, float("nan")) - epoch_end.get(1, float("nan"))
    return {"rc": proc.returncode, "first_step": marks.get("first_step", float("nan")), "done": done,
            "data": marks.get("data", float("nan")), "model": marks.get("model", float("nan")), "epoch1": e1,
            "epoch2": e2, "cpu": usage.ru_utime + usage.ru_stime}


# ---- through the stack ------------------------------------------------------------------------
def upload(api: httpx.Client, folder: Path, name: str) -> tuple[str, float, float]:
    from training.data.synthetic import zip_folder

    archive = zip_folder(folder, folder.parent / f"{name}.zip")
    t0 = time.monotonic()
    init = api.post("/v1/datasets/upload-initiate", json={"file_name": f"{name}.zip", "file_type": "application/zip",
                                                          "dataset_name": name}).json()
    httpx.put(init["upload_url"], content=archive.read_bytes(), timeout=600).raise_for_status()
    api.post("/v1/datasets/upload-complete", json={"dataset_id": init["dataset_id"], "s3_key": init["s3_key"]})
    uploaded = time.monotonic() - t0
    deadline = time.monotonic() + 1800
    while (status := api.get(f"/v1/datasets/{init['dataset_id']}").json()["status"]) == "processing":
        if time.monotonic() > deadline:
            raise TimeoutError("dataset never validated")
        time.sleep(0.5)
    if status != "ready":
        raise RuntimeError(f"dataset {name}: {api.get(f'/v1/datasets/' + init['dataset_id']).json()}")
    return init["dataset_id"], uploaded, time.monotonic() - t0 - uploaded


def stack_job(stack, api: httpx.Client, dataset_id: str) -> dict:
    from mlflow.tracking import MlflowClient

    t0 = time.time()
    resp = api.post("/v1/trainings", json={"model_id": MODEL, "dataset_id": dataset_id, "output_name": "bench",
                                           "training_params": PARAMS})
    resp.raise_for_status()
    job_id = resp.json()["job_id"]
    deadline = time.monotonic() + 3600
    while (job := api.get(f"/v1/trainings/{job_id}").json())["status"] not in ("completed", "failed", "stopped"):
        if time.monotonic() > deadline:
            raise TimeoutError(job)
        time.sleep(0.2)
    t_done = time.time() - t0
    airflow = httpx.Client(base_url=stack.airflow.url, headers={"Authorization": f"Bearer {stack.airflow.token()}"},
                           timeout=60)
    run_id = f"train-{job_id}"
    run = airflow.get(f"/api/v2/dags/qlora_training/dagRuns/{run_id}").json()
    tis = {t["task_id"]: t for t in airflow.get(
        f"/api/v2/dags/qlora_training/dagRuns/{run_id}/taskInstances").json()["task_instances"]}
    out = {"job": job, "done": t_done, "run_start": (_ts(run.get("start_date")) or t0) - t0, "tasks": {}}
    for task in TASKS:
        ti = tis.get(task) or {}
        out["tasks"][task] = {k: (_ts(ti.get(k)) - t0 if ti.get(k) else None)
                              for k in ("queued_when", "start_date", "end_date")}
    try:
        history = MlflowClient(stack.mlflow.url).get_metric_history(job["mlflow_run_id"], "progress")
        out["first_step"] = min(p.timestamp for p in history) / 1000 - t0
    except Exception as exc:
        print(f"   (no MLflow progress history: {exc})")
        out["first_step"] = float("nan")
    # the engine's lines inside the train task's log (their Airflow timestamps)
    logs = airflow.get(f"/api/v2/dags/qlora_training/dagRuns/{run_id}/taskInstances/train/logs/1",
                       params={"full_content": "true"}, headers={"Accept": "application/json"}).json()
    marks, epoch_end, lags = {}, {}, []
    for entry in logs.get("content") or []:
        if not isinstance(entry, dict) or not entry.get("timestamp"):
            continue
        event, at = str(entry.get("event", "")), _ts(str(entry["timestamp"])) - t0
        if own := ENGINE_TIME_RE.search(event):  # the engine's own clock: the task log may lag behind it
            logged = at
            at = datetime.strptime(own.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp() - t0
            lags.append(logged - at)
        if event.startswith("running: "):
            marks.setdefault("spawn", at)
        elif event.startswith("engine pid ") and " started " in event:  # training.pipeline.engine_process
            marks.setdefault("started", at)
            marks.setdefault("how", "warm" if " started warm " in event else "cold")
        elif " data: " in event:
            marks.setdefault("data", at)
        elif " model: " in event:
            marks.setdefault("model", at)
        elif m := STEP_RE.search(event):
            marks.setdefault("first_step_log", at)
            epoch_end[int(m.group(3))] = at
            if "first_step_lag" not in marks and lags:
                marks["first_step_lag"] = lags[-1]
        elif " done in " in event:
            marks.setdefault("trained", at)
        elif "evaluated adapter and base model" in event:
            marks.setdefault("evaluated", at)
        elif event.startswith("registered ") and " in " in event:
            marks.setdefault("registered", at)
        elif event.startswith("training process exited"):
            marks.setdefault("exited", at)
    # how far the task's log (Airflow's timestamp of a line) trails the engine's own clock
    marks["log_lag_max"] = max(lags) if lags else float("nan")
    out["engine"] = marks
    out["epoch1"] = epoch_end.get(1, float("nan")) - marks.get("model", float("nan"))
    out["epoch2"] = epoch_end.get(2, float("nan")) - epoch_end.get(1, float("nan"))
    return out


def _f(value) -> str:
    return "   -  " if value is None or value != value else f"{value:6.1f}"


def print_timeline(label: str, job: dict) -> None:
    print(f"\n   {label}: where POST -> completed goes (seconds since the POST)", flush=True)
    print(f"   {'task':<16}{'queued':>8}{'start':>8}{'end':>8}{'waited':>8}{'ran':>8}")
    previous_end = job["run_start"]
    print(f"   {'(dag run start)':<16}{'':>8}{_f(job['run_start']):>8}")
    for task in TASKS:
        t = job["tasks"][task]
        if t["start_date"] is None:
            continue
        ready = previous_end if task not in ("register",) else job["tasks"]["evaluate"]["end_date"]
        waited = t["start_date"] - ready if ready is not None else None
        ran = (t["end_date"] - t["start_date"]) if t["end_date"] is not None else None
        print(f"   {task:<16}{_f(t['queued_when']):>8}{_f(t['start_date']):>8}{_f(t['end_date']):>8}"
              f"{_f(waited):>8}{_f(ran):>8}")
        previous_end = t["end_date"]
    e, train = job["engine"], job["tasks"]["train"]
    if train["start_date"] is not None and e:
        print(f"   inside train: task start {_f(train['start_date'])} -> engine asked for {_f(e.get('spawn'))}"
              f" -> started {e.get('how', '?')} {_f(e.get('started'))} -> data read {_f(e.get('data'))} -> model loaded {_f(e.get('model'))}"
              f" -> first step {_f(e.get('first_step_log'))}")
        print(f"   after the last step: trained {_f(e.get('trained'))} -> evaluated in the engine"
              f" {_f(e.get('evaluated'))} -> engine exited {_f(e.get('exited'))} -> registered by the task"
              f" {_f(e.get('registered'))}")
        print(f"   the task log trails the engine's clock by {_f(e.get('first_step_lag'))} s at the first step,"
              f" {_f(e.get('log_lag_max'))} s at most")
    print(f"   completed seen by the API at {_f(job['done'])} (finalize ended {_f(job['tasks']['finalize']['end_date'])})")


def import_costs(env: dict[str, str]) -> dict[str, float]:
    """Wall time of a bare interpreter, of what a task process imports (airflow.sdk and the DAG
    file), and of the engine's imports."""
    cases = {
        "python -c pass": "pass",
        "import airflow.sdk": "import airflow.sdk",
        "parse dags/qlora_training.py": "import runpy; runpy.run_path('dags/qlora_training.py')",
        "engine imports (torch, transformers, peft)": "import training.trainer, peft, transformers, bitsandbytes",
    }
    out = {}
    for name, code in cases.items():
        runs = []
        for _ in range(3):
            t = time.monotonic()
            subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**env, "PYTHONPATH": str(REPO)},
                           capture_output=True, check=False)
            runs.append(time.monotonic() - t)
        out[name] = sorted(runs)[1]
    return out


def frame_reads(model_dir: Path, data: Path, cache: Path) -> dict[str, float]:
    """CPU seconds to get every clip's frames (the model's frame setting) three ways: decoded
    from the videos into an empty frame store, then from that store in a fresh dataset (as the
    next epoch after the memory budget, `evaluate`, or the next job reads them), then from
    memory. Runs in a child process (its own QLORA_CACHE_DIR)."""
    code = f"""
import json, time
from training.data.frame_store import FrameStore
from training.data.loader import ClipDataset, read_examples
from training.loading import read_base_model
from pathlib import Path
base = read_base_model(Path({str(model_dir)!r}))
examples = [e for e, _ in read_examples({str(data)!r}, "video_classification")]
labels = sorted({{e.label for e in examples}})
size = (base.prep.image_size, base.prep.image_size)
def dataset():
    return ClipDataset(examples, task="video_classification", family=base.family, prep=base.prep,
                       tokenizer=base.tokenizer, frames=base.prep.frames, label2id={{l: i for i, l in enumerate(labels)}},
                       store=FrameStore.open({str(data)!r}, base.prep.frames, size))
out = {{}}
for name, ds in (("decode + store", dataset()), ("frame store", dataset())):
    t = time.process_time()
    for e in ds.examples:
        ds.clip_frames(e.path)
    out[name] = time.process_time() - t
t = time.process_time()
for e in ds.examples:
    ds.clip_frames(e.path)
out["memory"] = time.process_time() - t
print("FRAMES=" + json.dumps(out))
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "QLORA_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1"})
    line = next((l for l in done.stdout.splitlines() if l.startswith("FRAMES=")), None)
    if line is None:
        print(done.stderr[-2000:])
        return {}
    import json

    return json.loads(line[len("FRAMES="):])


def baseline_tree(rev: str, folder: Path) -> Path | None:
    """The `training` package as it was at `rev` (read from git, nothing checked out)."""
    target = folder / "baseline"
    target.mkdir()
    archive = subprocess.run(["git", "archive", rev, "training"], cwd=REPO, capture_output=True)
    if archive.returncode != 0:
        print(f"   (no baseline: git archive {rev}: {archive.stderr.decode().strip()})")
        return None
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=1000, help="clips of the large dataset")
    parser.add_argument("--skip-large", action="store_true", help="only the 8-clip dataset")
    parser.add_argument("--baseline", default=BASELINE, help="git revision of the baseline engine")
    parser.add_argument("--executor", choices=("local", "celery"), default="local")
    parser.add_argument("--no-cold-engine", dest="cold_engine", action="store_false",
                        help="skip the baseline stack whose engines start cold (QLORA_WARM_ENGINE=false)")
    parser.add_argument("--engine-only", action="store_true",
                        help="no stack: the engine alone and the baseline engine (no tracking)")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="qlora-bench-first-step-"))
    folder.chmod(0o755)
    os.environ["QLORA_CACHE_DIR"] = str(folder / "worker-cache")
    from devstack.stack import Ports, Stack
    from training.build_tiny import build_tiny
    from training.data.synthetic import make_dataset

    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} (shared)")
    datasets = {"8 clips": make_dataset(folder / "small" / "squares", 8)}
    if not args.skip_large:
        large, seconds = make_large_dataset(folder / "large" / "data", args.clips)
        datasets[f"{args.clips} clips"] = large
        print(f"generated {args.clips} clips 320x240 5 s in {seconds:.1f} s")
    model_dir = build_tiny("flamingo", "video_classification", folder / "model", catalog_id=MODEL)
    baseline = baseline_tree(args.baseline, folder)

    if args.engine_only:
        try:
            env = {**os.environ, "MLFLOW_TRACKING_URI": ""}
            for i, (label, data) in enumerate(datasets.items()):
                for name, root in (("engine alone", REPO), (f"baseline engine ({args.baseline})", baseline)):
                    if root is None:
                        continue
                    r = engine_alone(root, model_dir, data, folder / f"{i}-{name[:4]}",
                                     {**env, "QLORA_CACHE_DIR": str(folder / f"cache-{i}-{name[:4]}")})
                    print(f"{label:<12}{name:<34} first step {_f(r['first_step'])} s, done {_f(r['done'])} s, "
                          f"epoch 1 {_f(r['epoch1'])} s, epoch 2 {_f(r['epoch2'])} s, CPU {_f(r['cpu'])} s, "
                          f"rc {r['rc']}", flush=True)
                reads = frame_reads(model_dir, data, folder / f"frames-cache-{i}")
                print(f"{label:<12}frames of every clip, CPU s: "
                      + ", ".join(f"{k} {v:.2f}" for k, v in reads.items()), flush=True)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return
    offset = int(os.environ.get("QLORA_STACK_PORT_OFFSET") or Ports.free_offset())  # the caller's, else a free one
    stack = Stack(folder / "stack", Ports.shifted(offset), executor=args.executor)
    try:
        started = time.monotonic()
        stack.up(log=lambda line: None)
        print(f"stack up in {time.monotonic() - started:.1f} s ({args.executor} executor)")
        os.environ.update({k: v for k, v in stack.env.items() if k.startswith("MLFLOW_")})
        env = {**os.environ, **stack.env, "QLORA_JOB_ID": ""}
        base = stack.api.url
        from bench.api import signup

        api = httpx.Client(base_url=base, headers=signup(base, f"bench_{uuid.uuid4().hex[:8]}"), timeout=120)

        costs = import_costs(env)
        rows, dataset_ids = [], {}
        for label, data in datasets.items():
            print(f"\n== {label}", flush=True)
            alone = engine_alone(REPO, model_dir, data, folder / f"alone-{len(rows)}",
                                 {**env, "QLORA_CACHE_DIR": str(folder / f"alone-cache-{len(rows)}")})
            print(f"   engine alone: {alone}", flush=True)
            old = (engine_alone(baseline, model_dir, data, folder / f"baseline-{len(rows)}",
                                {**env, "QLORA_CACHE_DIR": str(folder / f"baseline-cache-{len(rows)}")})
                   if baseline else None)
            print(f"   baseline engine: {old}", flush=True)
            dataset_id, up_s, validated_s = upload(api, data.parent, label.replace(" ", "-"))
            print(f"   upload {up_s:.1f} s, validation {validated_s:.1f} s", flush=True)
            job = stack_job(stack, api, dataset_id)
            print(f"   through the stack -> {job['job']['status']}: first step {job['first_step']:.1f} s, "
                  f"completed {job['done']:.1f} s, epochs {job['epoch1']:.1f} / {job['epoch2']:.1f} s")
            print_timeline("first job (cold worker cache and frame store)", job)
            again = stack_job(stack, api, dataset_id)
            print(f"   second job, same dataset -> {again['job']['status']}: first step {again['first_step']:.1f} s, "
                  f"completed {again['done']:.1f} s, epochs {again['epoch1']:.1f} / {again['epoch2']:.1f} s")
            print_timeline("second job (warm cache and frame store)", again)
            rows.append((label, job, again, alone, old))
            dataset_ids.setdefault("first", dataset_id)

        cold = None
        if args.cold_engine:  # the same stack restarted with QLORA_WARM_ENGINE=false: each engine a new process
            stack.down(log=lambda line: None)
            os.environ["QLORA_WARM_ENGINE"] = "false"
            stack = Stack(folder / "stack", Ports.shifted(offset), executor=args.executor)
            stack.up(log=lambda line: None)
            label = next(iter(datasets))
            print(f"\n== {label}, stack restarted with QLORA_WARM_ENGINE=false (engines start cold)", flush=True)
            cold = stack_job(stack, api, dataset_ids["first"])
            print_timeline("job with a cold engine (warm worker cache and frame store)", cold)

        print("\n== summary (seconds; ratio = through the stack / engine alone)")
        header = (f"{'dataset':<12}{'run':<34}{'first step':>11}{'completed':>10}{'epoch 1':>9}{'epoch 2':>9}"
                  f"{'CPU s':>7}")
        print(header)
        print("-" * len(header))
        for label, job, again, alone, old in rows:
            print(f"{label:<12}{'stack, cold (POST ->)':<34}{_f(job['first_step']):>11}{_f(job['done']):>10}"
                  f"{_f(job['epoch1']):>9}{_f(job['epoch2']):>9}")
            print(f"{'':<12}{'stack, second job (POST ->)':<34}{_f(again['first_step']):>11}{_f(again['done']):>10}"
                  f"{_f(again['epoch1']):>9}{_f(again['epoch2']):>9}")
            print(f"{'':<12}{'engine alone (run)':<34}{_f(alone['first_step']):>11}{_f(alone['done']):>10}"
                  f"{_f(alone['epoch1']):>9}{_f(alone['epoch2']):>9}{_f(alone['cpu']):>7}")
            if old:
                print(f"{'':<12}{f'baseline engine ({args.baseline})':<34}{_f(old['first_step']):>11}"
                      f"{_f(old['done']):>10}{_f(old['epoch1']):>9}{_f(old['epoch2']):>9}{_f(old['cpu']):>7}")
            print(f"{'':<12}{'ratio stack cold / engine alone':<34}{job['first_step'] / alone['first_step']:>10.2f}x"
                  f"{job['done'] / alone['done']:>9.2f}x")
            if cold is not None and label == rows[0][0]:
                print(f"{'':<12}{'stack, engine cold (WARM_ENGINE=false)':<34}{_f(cold['first_step']):>11}"
                      f"{_f(cold['done']):>10}{_f(cold['epoch1']):>9}{_f(cold['epoch2']):>9}")
                print(f"{'':<12}{'ratio, engine cold / engine alone':<34}"
                      f"{cold['first_step'] / alone['first_step']:>10.2f}x{cold['done'] / alone['done']:>9.2f}x")
        print("\nframes of every clip (CPU seconds, one thread):")
        for label, data in datasets.items():
            reads = frame_reads(model_dir, data, folder / f"frames-cache-{label.replace(' ', '-')}")
            print(f"   {label:<12}" + ", ".join(f"{k} {v:.2f}" for k, v in reads.items()))
        print("\nimports (median of 3 fresh interpreters):")
        for name, seconds in costs.items():
            print(f"   {name:<46}{seconds:6.2f} s")
    finally:
        stack.down(log=lambda line: None)
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
