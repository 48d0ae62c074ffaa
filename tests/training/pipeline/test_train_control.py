"""What ends a training early, decided by the train task itself: the job's deadline
(`max_runtime_minutes`) and a stop request in S3 for this run (`TrainControl`), acted on by
`run_engine(should_stop=...)` with a real child process (SIGTERM: it saves its adapter; SIGKILL
if it ignores that), and what each ending means for the job (`training_outcome`): a deadline
fails it with the reason, a stop stops it, a training that finished first completes it."""

from __future__ import annotations

import json
import os
import sys
import time

import pytest

from training import s3 as s3_layout
from training.pipeline.engine_jobs import TrainingEnded, training_outcome
from training.pipeline.engine_process import EngineExit, run_engine
from training.pipeline.train_control import TrainControl, stop_request
from training.result import EXIT_OK, EXIT_STOPPED, EngineResult, RunStatus

URI = "s3://qlora/trainings/j1/adapter/"

#: an engine that trains until SIGTERM, then "saves" and exits 75 (or, with `stubborn`, ignores it)
ENGINE = r"""
import os, signal, sys, time
out, stubborn = sys.argv[1], sys.argv[2] == "1"
def on_term(signum, frame):
    if stubborn:
        print("ignoring SIGTERM", flush=True)
        return
    open(os.path.join(out, "adapter_config.json"), "w").write("{}")
    print("saved", flush=True)
    sys.exit(75)
signal.signal(signal.SIGTERM, on_term)
for step in range(100000):
    print(f"step {step}", flush=True)
    time.sleep(0.05)
"""


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_deadline_and_the_stop_request_are_reasons_to_stop():
    clock, requests = Clock(), []
    control = TrainControl("j1", "train-j1", 30, clock=clock, poll_s=2,
                           read_stop=lambda job, run: requests.pop() if requests else None)
    assert control() is None
    clock.now += 29 * 60
    assert control() is None and control.deadline is None
    clock.now += 60
    assert control() == "the training ran past its max_runtime_minutes (30 min) and was stopped"
    assert control.deadline == control()

    reads = []
    control = TrainControl("j1", "train-j1", None, clock=clock, poll_s=2,
                           read_stop=lambda job, run: reads.append(clock.now) or ({"run_id": run} if requests else None))
    assert control() is None
    clock.now += 1
    assert control() is None and len(reads) == 1  # S3 is read every poll_s, not every tick
    requests.append(1)
    clock.now += 1
    assert control() == "a stop was requested for this job" and control.stop_requested


def test_a_stop_request_counts_for_its_own_run_only(s3_env):
    from training.settings import get_settings

    client, bucket = s3_layout.client(), get_settings().s3_bucket
    job = f"job-{time.time_ns()}"
    assert stop_request(job, f"train-{job}") is None  # none yet
    client.put_object(Bucket=bucket, Key=s3_layout.training_stop_key(job),
                      Body=json.dumps({"run_id": f"train-{job}", "requested_at": "2026-11-30T18:00:00+00:00"}))
    assert stop_request(job, f"train-{job}")["run_id"] == f"train-{job}"
    assert stop_request(job, f"train-{job}-resume-1") is None  # a resumed job's new run trains on


def _engine(tmp_path, stubborn=False) -> list[str]:
    path = tmp_path / "engine.py"
    path.write_text(ENGINE)
    return [sys.executable, str(path), str(tmp_path), "1" if stubborn else "0"]


def test_the_task_stops_its_engine_which_saves_its_adapter(tmp_path):
    asked_at = []

    def should_stop():
        if len(asked_at) == 0 and (tmp_path / "go").exists():
            asked_at.append(time.monotonic())
            return "a stop was requested for this job"
        return None

    def on_line(line):
        if line == "step 3":
            (tmp_path / "go").touch()

    ended = run_engine(_engine(tmp_path), dict(os.environ), on_line=on_line, should_stop=should_stop, tick_s=0.1)
    assert ended.code == EXIT_STOPPED and ended.asked == "a stop was requested for this job"
    assert ended.stop_at is None and ended.tail[-1] == "saved" and (tmp_path / "adapter_config.json").exists()
    assert time.monotonic() - asked_at[0] < 5


def test_an_engine_that_ignores_the_stop_is_killed(tmp_path):
    started = time.monotonic()
    ended = run_engine(_engine(tmp_path, stubborn=True), dict(os.environ), tick_s=0.1, kill_after_s=1.0,
                       should_stop=lambda: "deadline" if time.monotonic() - started > 0.5 else None)
    assert ended.code == -9 and ended.asked == "deadline"
    assert "ignoring SIGTERM" in ended.tail
    assert time.monotonic() - started < 10


def _result(status, **kw):
    return EngineResult(status=status, mlflow_run_id="r" * 32, mlflow_experiment_id="1", **kw)


def test_what_each_ending_means_for_the_job():
    deadline = "the training ran past its max_runtime_minutes (30 min) and was stopped"
    stopped = _result(RunStatus.STOPPED, output_uri=URI)
    with pytest.raises(TrainingEnded) as raised:  # the deadline: failed, with the reason and the partial adapter
        training_outcome(EngineExit(EXIT_STOPPED, None, [], False, deadline), stopped, URI, deadline=deadline)
    assert str(raised.value) == f"{deadline}; partial adapter at {URI}" and raised.value.mlflow_status == "FAILED"
    with pytest.raises(TrainingEnded) as raised:  # a stop request: stopped
        training_outcome(EngineExit(EXIT_STOPPED, None, [], False, "a stop was requested"), stopped, URI)
    assert str(raised.value) == f"training stopped by request; partial adapter at {URI}"
    assert raised.value.mlflow_status == "KILLED"
    # the engine finished its training before the request reached it: the job completes
    done = _result(RunStatus.COMPLETED, output_uri=URI, adapter_files=["adapter_config.json"])
    assert training_outcome(EngineExit(EXIT_OK, 5.0, [], False, "a stop was requested"), done, URI) is done
    assert training_outcome(EngineExit(EXIT_OK, None, [], False, deadline), done, URI, deadline=deadline) is done
