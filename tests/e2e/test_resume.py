"""Continuing a job, end to end on the real stack (API on uvicorn + PostgreSQL, SeaweedFS, Airflow
running `qlora_training`, MLflow):

* the engine of a running job is SIGKILLed after its first uploaded checkpoint: Airflow retries
  the train task, which restores that checkpoint and resumes; the job completes, its one MLflow
  run's loss history continues from the checkpoint's step (the steps before it logged once, the
  ones replayed after it equal to the first try's), and it is tagged `resumed_from_step`;
* a job stopped mid-run is resumed with `POST /v1/trainings/{id}/resume`: a new Airflow run of
  the same job completes it, the detail lists the stopped run, the events record the path, and
  it ends with the same loss and held-out metrics as the killed-and-retried job (same seed).
"""

from __future__ import annotations

import os
import signal
import time

import httpx
import pytest

from devstack.processes import root_pids_with_args
from devstack.seed import seed_tiny_models
from tests.e2e.journey import TERMINAL, login, ready_dataset, start_job, watch

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.stack, pytest.mark.timeout(900)]
MODEL = "flamingo-tiny-classification"
#: long enough (9-10 train clips, batch 1: ~80 steps) that the engine is still training when
#: the test has seen its first checkpoint through the API, also on an idle fast machine
PARAMS = dict(epochs=8, batch_size=1, checkpoint_every_steps=2, seed=7, learning_rate=0.002)


def _history(mlflow, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in mlflow.get_metric_history(run_id, key))


def _first_checkpoint(api: httpx.Client, job_id: str, timeout_s: float = 240) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = api.get(f"/trainings/{job_id}").json()
        assert job["status"] not in TERMINAL, job
        listed = api.get(f"/trainings/{job_id}/checkpoints").json()
        if listed:
            return listed[-1]["step"]
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} listed no checkpoint")


def test_a_killed_engine_resumes_and_a_stopped_job_resumes_on_request(api_server, tmp_path):
    lines = seed_tiny_models(api_server.s3, tmp_path / "seed.log")
    assert not any("failed" in line for line in lines), lines
    from mlflow.tracking import MlflowClient

    mlflow = MlflowClient(tracking_uri=api_server.mlflow_uri)
    base_url = api_server.base_url.rstrip("/") + "/v1"
    with httpx.Client(base_url=base_url, timeout=60) as api:
        login(api)
        dataset_id = ready_dataset(api, tmp_path)

        # 1. SIGKILL of the engine after its first checkpoint: Airflow's retry resumes from it
        killed = start_job(api, dataset_id, MODEL, "killed", **PARAMS)
        checkpoint_step = _first_checkpoint(api, killed)
        pids = root_pids_with_args("training", "run", killed)  # the engine, not its data-loading workers
        assert len(pids) == 1, f"the engine of {killed} is not running once its first checkpoint is listed: {pids}"
        os.kill(pids[0], signal.SIGKILL)
        killed_at = time.monotonic()
        final, seen = watch(api, killed, lambda j: j["status"] in TERMINAL, 420)
        print(f"SIGKILL after the checkpoint at step {checkpoint_step} -> {final['status']} in "
              f"{time.monotonic() - killed_at:.1f} s")
        assert final["status"] == "completed", (final.get("error"), final.get("logs"))
        assert "failed" not in {j["status"] for j in seen}  # the retry is invisible but for the log
        assert final["progress"] == 1.0 and final["previous_runs"] == []
        run_id = final["mlflow_run_id"]
        run = mlflow.get_run(run_id)
        total = int(run.data.params["total_steps"])
        resumed_from = int(run.data.tags["resumed_from_step"])
        assert checkpoint_step <= resumed_from < total  # the last one uploaded before the kill
        assert "failure_reason" not in run.data.tags and run.info.status == "FINISHED"
        assert len(mlflow.search_runs([run.info.experiment_id], f"tags.job_id = '{killed}'")) == 1
        loss = _history(mlflow, run_id, "loss")
        steps = [s for s, _ in loss]
        assert sorted(set(steps)) == list(range(1, total + 1))  # the curve continues to the end
        # the steps up to the checkpoint were not redone; those after it, until the kill, were
        # replayed from it and give the same loss (seeded batch order, restored random states)
        assert all(steps.count(s) == 1 for s in range(1, resumed_from + 1)), loss
        replayed = {s for s in steps if steps.count(s) > 1}
        assert all(s > resumed_from for s in replayed), loss
        for s in replayed:
            values = [v for step, v in loss if step == s]
            assert max(values) - min(values) < 1e-4, (s, values)
        print(f"killed job: resumed from step {resumed_from} of {total}; steps replayed: {sorted(replayed)}")

        # 2. stop, then resume on request: a new run of the same job completes it
        stopped = start_job(api, dataset_id, MODEL, "stopped", **PARAMS)
        _first_checkpoint(api, stopped)
        assert api.post(f"/trainings/{stopped}/stop").status_code == 202
        final, _ = watch(api, stopped, lambda j: j["status"] in TERMINAL, 120)
        assert final["status"] == "stopped", final
        checkpoints = api.get(f"/trainings/{stopped}/checkpoints").json()
        asked = time.monotonic()
        resp = api.post(f"/trainings/{stopped}/resume")
        assert resp.status_code == 202, resp.text
        assert resp.json()["resumed_from_step"] == checkpoints[-1]["step"] < total
        again = api.post(f"/trainings/{stopped}/resume")
        assert again.status_code == 400 and "cannot be resumed" in again.json()["detail"]
        final, seen = watch(api, stopped, lambda j: j["status"] in TERMINAL, 420)
        print(f"resume request -> {final['status']} in {time.monotonic() - asked:.1f} s")
        assert final["status"] == "completed", (final.get("error"), final.get("logs"))
        assert [(r["status"], r["resumed_from_step"]) for r in final["previous_runs"]] == [
            ("stopped", checkpoints[-1]["step"])]
        assert final["airflow_run_url"].endswith(f"/runs/train-{stopped}-resume-1")
        assert final["mlflow_run_id"] == mlflow.get_run(final["mlflow_run_id"]).info.run_id
        events = api.get(f"/trainings/{stopped}/events").json()["data"]
        path = [e["data"]["to_status"] for e in events if e["type"] == "status"]
        assert path[0] == "queued" and path[-1] == "completed" and "stopped" in path
        assert path[path.index("stopped") + 1] == "queued", path  # the resumption, then the new run's
        resumed_loss = _history(mlflow, final["mlflow_run_id"], "loss")
        assert sorted({s for s, _ in resumed_loss}) == list(range(1, total + 1))
        # same seed, same parameters: the same end as the job that was killed and retried
        assert resumed_loss[-1][1] == pytest.approx(loss[-1][1], abs=1e-5)
        ends = [mlflow.get_run(r).data.metrics for r in (run_id, final["mlflow_run_id"])]
        for key in ("final_accuracy", "final_eval_loss", "base_accuracy"):
            assert ends[1][key] == pytest.approx(ends[0][key], abs=1e-5), key
