"""The engine's `run` and `evaluate` as the DAG runs them (`training.pipeline.engine_jobs`):
command lines from the resolved parameters, the result manifest watched while it trains, and
what an exit with its manifest means for the job. The manifest, never the log, decides."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from training import params
from training.catalog import load_catalog
from training.pipeline import engine_jobs
from training.pipeline.engine_jobs import EngineFailed, ResultWatcher, TrainingEnded, training_outcome
from training.pipeline.engine_process import EngineExit, run_engine
from training.pipeline.errors import JobFailed
from training.result import EXIT_BAD_INPUT, EXIT_STOPPED, EngineResult, RunStatus, write_result

URI = "s3://qlora/trainings/job-1/adapter/"
RUN = "a" * 32


def _resolved() -> params.TrainingParams:
    limits = params.ModelLimits.of_catalog(load_catalog().get("flamingo-tiny-classification"))
    return params.resolve(limits, {"epochs": 2, "lora_rank": 4, "max_steps": 7})


def test_the_train_command_carries_every_resolved_parameter(tmp_path):
    resolved = _resolved()
    command = engine_jobs.train_command(
        model="/cache/models/m", data="s3://qlora/datasets/d/files/", task="video_classification",
        output=tmp_path, params=resolved, run_name="colours", job_id="job-1", output_uri=URI,
        mlflow_uri="http://mlflow", experiment="qlora/ada")
    assert command[:4] == [sys.executable, "-m", "training", "run"]
    options = dict(zip(command[4::2], command[5::2]))
    assert options["--model"] == "/cache/models/m" and options["--data"] == "s3://qlora/datasets/d/files/"
    assert options["--output"] == str(tmp_path) and options["--output-uri"] == URI
    assert (options["--run-name"], options["--job-id"]) == ("colours", "job-1")
    assert (options["--mlflow-uri"], options["--experiment"]) == ("http://mlflow", "qlora/ada")
    assert "--registered-model-name" not in command
    assert "--checkpoint-uri" not in options
    for name, value in resolved.model_dump().items():  # every parameter reaches the engine
        option = "--" + name.replace("_", "-")
        if value is None:  # null after resolving (checkpoint_every_steps: once per epoch) is the engine's default
            assert option not in options, name
            continue
        assert options[option] == (",".join(value) if isinstance(value, list) else str(value)), name
    checkpointed = engine_jobs.train_command(model="m", data="d", task="video_captioning", output=tmp_path,
                                             params=resolved, run_name="r", job_id="j", output_uri=URI,
                                             checkpoint_uri="s3://qlora/trainings/j/checkpoints/")
    assert checkpointed[checkpointed.index("--checkpoint-uri") + 1] == "s3://qlora/trainings/j/checkpoints/"
    untracked = engine_jobs.train_command(model="m", data="d", task="video_captioning", output=tmp_path,
                                          params=resolved, run_name="r", job_id="j", output_uri=URI)
    assert "--mlflow-uri" not in untracked and "--experiment" not in untracked


def test_the_evaluate_command(tmp_path):
    command = engine_jobs.evaluate_command(model="s3://qlora/models/m/", adapter=URI, data="/d",
                                           metrics_file=tmp_path / "metrics.json", mlflow_uri="http://m",
                                           mlflow_run_id=RUN, output_uri=URI)
    assert command[3:] == ["evaluate", "--model", "s3://qlora/models/m/", "--adapter", URI, "--data", "/d",
                           "--output", str(tmp_path / "metrics.json"), "--mlflow-uri", "http://m",
                           "--mlflow-run-id", RUN, "--output-uri", URI]
    bare = engine_jobs.evaluate_command(model="m", adapter="a", data="d", metrics_file=tmp_path / "x.json",
                                        mlflow_uri="http://m")  # no run to log into
    assert "--mlflow-uri" not in bare and "--output-uri" not in bare


def test_the_engine_env(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://m")
    env = engine_jobs.engine_env("job-1", tracking=True)
    assert (env["QLORA_JOB_ID"], env["PYTHONUNBUFFERED"], env["MLFLOW_TRACKING_URI"]) == ("job-1", "1", "http://m")
    assert "MLFLOW_TRACKING_URI" not in engine_jobs.engine_env("job-1", tracking=False)


# --- the manifest while it trains -----------------------------------------------------------

#: an engine that writes its manifest as `training run` does: running without a run, then the
#: run (announced once), then completed; meanwhile it prints a line that looks like the old log
#: line naming another run (a clip name could): it must not count
FAKE_ENGINE = r"""
import sys, time
from training.result import EngineResult, RunStatus, write_result
out = sys.argv[1]
print("mlflow run " + "f" * 32 + " at http://elsewhere", flush=True)
write_result(out, EngineResult())
time.sleep(0.3)
write_result(out, EngineResult(mlflow_run_id="a" * 32, mlflow_experiment_id="7"))
time.sleep(0.3)
write_result(out, EngineResult(status=RunStatus.COMPLETED, mlflow_run_id="a" * 32, mlflow_experiment_id="7",
                               adapter_files=["adapter_config.json"], output_uri=sys.argv[2]))
"""


def test_the_watcher_announces_the_run_once_from_the_manifest(tmp_path):
    engine = tmp_path / "engine.py"
    engine.write_text(FAKE_ENGINE)
    out = tmp_path / "out"
    out.mkdir()
    announced = []
    watcher = ResultWatcher(out, on_run=announced.append)
    assert watcher.poll() is None and watcher.run_id is None  # no manifest yet
    ended = run_engine([sys.executable, str(engine), str(out), URI], {"PYTHONPATH": str(Path.cwd())},
                       on_tick=watcher.poll, tick_s=0.05)
    result = watcher.poll()
    assert ended.code == 0
    assert [(r.mlflow_run_id, r.mlflow_experiment_id) for r in announced] == [(RUN, "7")]
    assert (watcher.run_id, watcher.experiment_id) == (RUN, "7")
    assert training_outcome(ended, result, URI).output_uri == URI


def test_a_failing_announcement_never_stops_the_watch(tmp_path):
    def boom(_result):
        raise RuntimeError("MLflow is down")

    watcher = ResultWatcher(tmp_path, on_run=boom)
    write_result(tmp_path, EngineResult(mlflow_run_id=RUN, mlflow_experiment_id="1"))
    assert watcher.poll().mlflow_run_id == RUN
    (tmp_path / "result.json").write_text("{half")
    assert watcher.poll().mlflow_run_id == RUN  # the last good one


# --- what an exit means ---------------------------------------------------------------------

def _exit(code=0, *, stop=False, orphaned=False, tail=()):
    return EngineExit(code, 123.0 if stop else None, list(tail), orphaned)


def _result(status, **kw):
    return EngineResult(status=status, mlflow_run_id=RUN, mlflow_experiment_id="1", **kw)


def test_a_completed_training():
    result = _result(RunStatus.COMPLETED, output_uri=URI, adapter_files=["adapter_config.json"])
    assert training_outcome(_exit(0), result, URI) is result


@pytest.mark.parametrize(("ended", "result", "reason", "status"), [
    (_exit(EXIT_STOPPED, stop=True), _result(RunStatus.STOPPED, output_uri=URI),
     f"training stopped by request; partial adapter at {URI}", "KILLED"),
    (_exit(EXIT_STOPPED, stop=True), _result(RunStatus.RUNNING), "training stopped by request; no adapter was saved",
     "KILLED"),
    (_exit(-9, stop=True), None, "training stopped by request; no adapter was saved", "KILLED"),
    (_exit(EXIT_BAD_INPUT, tail=["error: --data x: no clips"]), None,
     "the training rejected its input: error: --data x: no clips", "FAILED"),
    (_exit(EXIT_BAD_INPUT), _result(RunStatus.FAILED, error="the dataset has one label"),
     "the training rejected its input: the dataset has one label", "FAILED"),
    (_exit(1, tail=["Traceback", "RuntimeError: CUDA out of memory"]), _result(RunStatus.RUNNING),
     "the training failed (exit code 1): RuntimeError: CUDA out of memory", "FAILED"),
    (_exit(1), _result(RunStatus.FAILED, error="out of memory at step 3"),
     "the training failed: out of memory at step 3", "FAILED"),
    (_exit(0), None, "the training exited 0 but wrote no result.json", "FAILED"),
    (_exit(0), _result(RunStatus.RUNNING), "the training exited 0 but its result.json says running", "FAILED"),
    (_exit(0), _result(RunStatus.COMPLETED), f"the training exited 0 but uploaded no adapter to {URI}", "FAILED"),
])
def test_a_training_that_ended_without_an_adapter(ended, result, reason, status):
    with pytest.raises(TrainingEnded) as raised:
        training_outcome(ended, result, URI)
    assert str(raised.value) == reason
    assert raised.value.mlflow_status == status
    assert isinstance(raised.value, JobFailed)  # no retry


@pytest.mark.parametrize(("ended", "result", "reason"), [
    (_exit(EXIT_STOPPED, orphaned=True), _result(RunStatus.STOPPED, output_uri=URI),
     f"the Airflow worker running this task was lost, so the training was stopped; partial adapter at {URI}"),
    (_exit(-9, tail=["step 3"]), _result(RunStatus.RUNNING), "the training process was killed by SIGKILL"),
])
def test_an_engine_lost_without_a_stop_request_is_retried(ended, result, reason):
    """Killed unasked or its worker lost: Airflow retries the task, which resumes from the last
    uploaded checkpoint (`training.pipeline.resume`); a stop request never is (above)."""
    with pytest.raises(engine_jobs.EngineLost) as raised:
        training_outcome(ended, result, URI)
    assert str(raised.value) == reason and raised.value.mlflow_status == "FAILED"
    assert isinstance(raised.value, EngineFailed) and not isinstance(raised.value, JobFailed)


def test_the_train_command_resumes_when_asked(tmp_path):
    common = dict(model="m", data="d", task="video_classification", output=tmp_path, params=_resolved(),
                  run_name="n", job_id="j", output_uri=URI)
    assert "--resume" not in engine_jobs.train_command(**common)
    assert engine_jobs.train_command(**common, resume=True)[-1] == "--resume"


def test_the_outcome_of_an_evaluation(tmp_path):
    metrics = {"task": "video_classification", "split": "validation", "adapter": {"accuracy": 1.0},
               "base": {"accuracy": 0.5}, "held_out_examples": 8}
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(metrics))
    assert engine_jobs.evaluation_outcome(_exit(0), path) == metrics
    with pytest.raises(JobFailed, match="the evaluation was stopped"):
        engine_jobs.evaluation_outcome(_exit(EXIT_STOPPED, stop=True), path)
    with pytest.raises(JobFailed, match="the evaluation rejected its input: error: no held-out clips"):
        engine_jobs.evaluation_outcome(_exit(EXIT_BAD_INPUT, tail=["error: no held-out clips"]), path)
    with pytest.raises(EngineFailed, match=r"the evaluation process was killed by SIGKILL"):
        engine_jobs.evaluation_outcome(_exit(-9), path)  # retried
    with pytest.raises(EngineFailed, match="wrote no"):
        engine_jobs.evaluation_outcome(_exit(0), tmp_path / "missing.json")
    assert not issubclass(EngineFailed, JobFailed)



@pytest.mark.stack
def test_the_published_result_is_the_engines_last_word(tmp_path, s3_env):
    """Published once the engine is gone: its manifest as it left it, or, when it never finished
    one (killed mid-run), a failed one saying how the process ended."""
    from training import s3

    stopped = EngineResult(status=RunStatus.STOPPED, mlflow_run_id=RUN, output_uri=URI, error="stopped by SIGTERM")
    write_result(tmp_path, stopped)
    key = s3.training_result_key("job-1")
    published = engine_jobs.publish_result(tmp_path, key, _exit(EXIT_STOPPED))
    assert published.exited and published == EngineResult(**{**stopped.__dict__, "exited": True})
    body = s3_env.client().get_object(Bucket=s3_env.bucket, Key=key)["Body"].read()
    assert EngineResult.from_dict(json.loads(body)) == published

    write_result(tmp_path, EngineResult(status=RunStatus.RUNNING, mlflow_run_id=RUN))
    killed = engine_jobs.publish_result(tmp_path, key, _exit(-9))
    assert (killed.status, killed.error, killed.mlflow_run_id) == (
        RunStatus.FAILED, "the training process was killed by SIGKILL", RUN)
    body = s3_env.client().get_object(Bucket=s3_env.bucket, Key=key)["Body"].read()
    assert json.loads(body)["status"] == "failed"


@pytest.mark.stack
def test_the_watcher_publishes_the_manifest_while_the_engine_runs(tmp_path, s3_env):
    """Each new checkpoint (or status) is in S3 at the next tick, marked `exited: false`; a step
    alone publishes nothing; an upload that fails is retried at the next tick."""
    from training import s3
    from training.result import Checkpoint

    key = s3.training_result_key("job-live")

    def published():
        return json.loads(s3_env.client().get_object(Bucket=s3_env.bucket, Key=key)["Body"].read())

    puts = []
    watcher = ResultWatcher(tmp_path, publish_key=key)
    write_result(tmp_path, EngineResult(mlflow_run_id=RUN, step=1))
    watcher.poll()
    assert published()["checkpoints"] == [] and published()["exited"] is False
    original = engine_jobs._put_result
    engine_jobs._put_result = lambda *a, **kw: (puts.append(a), original(*a, **kw))
    try:
        write_result(tmp_path, EngineResult(mlflow_run_id=RUN, step=2))
        watcher.poll()
        assert puts == []  # only the step changed
        write_result(tmp_path, EngineResult(mlflow_run_id=RUN, step=3, checkpoints=[
            Checkpoint(step=3, epoch=1.0, name="step-0000003", uri="s3://qlora/x/")]))
        watcher.poll()
        assert [c["name"] for c in published()["checkpoints"]] == ["step-0000003"] and len(puts) == 1
    finally:
        engine_jobs._put_result = original
    engine_jobs._put_result = lambda *a, **kw: (_ for _ in ()).throw(ConnectionError("S3 down"))
    try:
        write_result(tmp_path, EngineResult(mlflow_run_id=RUN, status=RunStatus.STOPPED))
        assert watcher.poll().status == RunStatus.STOPPED  # never raises
    finally:
        engine_jobs._put_result = original
    watcher.poll()  # retried
    assert (published()["status"], published()["exited"]) == ("stopped", False)


def test_a_skipped_clip_is_published_while_the_engine_runs(tmp_path, s3_env):
    """The live result.json names the clips skipped so far (issue 16), not only the final one."""
    from training import s3

    key = s3.training_result_key("job-skips")
    watcher = ResultWatcher(tmp_path, publish_key=key)
    write_result(tmp_path, EngineResult(mlflow_run_id=RUN, step=1))
    watcher.poll()
    write_result(tmp_path, EngineResult(mlflow_run_id=RUN, step=2, skipped_clips={"a.mp4": "no video stream"}))
    watcher.poll()
    body = json.loads(s3_env.client().get_object(Bucket=s3_env.bucket, Key=key)["Body"].read())
    assert body["skipped_clips"] == {"a.mp4": "no video stream"} and body["exited"] is False


def test_the_train_command_asks_the_engine_to_evaluate_and_the_task_reads_its_report(tmp_path):
    common = dict(model="m", data="d", task="video_classification", output=tmp_path, params=_resolved(),
                  run_name="n", job_id="j", output_uri=URI)
    assert "--evaluate" not in engine_jobs.train_command(**common)
    assert engine_jobs.train_command(**common, evaluate=True)[-1] == "--evaluate"
    assert engine_jobs.engine_evaluation(tmp_path) is None  # none written: the evaluate task evaluates
    (tmp_path / "metrics.json").write_text("{not json")
    assert engine_jobs.engine_evaluation(tmp_path) is None
    report = {"task": "video_classification", "adapter": {"accuracy": 1.0}, "base": {"accuracy": 0.5}}
    (tmp_path / "metrics.json").write_text(json.dumps(report))
    assert engine_jobs.engine_evaluation(tmp_path) == report


@pytest.mark.stack
def test_a_train_task_stopped_before_its_engine_started_publishes_a_final_manifest(s3_env):
    """The stop request was there before the engine started: the job's last manifest (an earlier
    try's checkpoints still listed) becomes the final one, `stopped` with the reason and
    `exited: true`, the API's evidence that no training process is left (it ends the job at once
    instead of after QLORA_STOP_KILL_DEADLINE_S)."""
    from training import s3
    from training.result import Checkpoint

    def published(job_id: str) -> dict:
        key = s3.training_result_key(job_id)
        return json.loads(s3_env.client().get_object(Bucket=s3_env.bucket, Key=key)["Body"].read())

    engine_jobs.publish_not_started("job-fresh", "training stopped by request before it started")
    assert {k: published("job-fresh")[k] for k in ("status", "error", "exited", "checkpoints")} == {
        "status": "stopped", "error": "training stopped by request before it started", "exited": True,
        "checkpoints": []}

    earlier = EngineResult(mlflow_run_id=RUN, step=3, checkpoints=[
        Checkpoint(step=3, epoch=1.0, name="step-0000003", uri="s3://qlora/x/")])
    engine_jobs._put_result(s3.training_result_key("job-retried"), earlier, exited=False)  # a try that was lost
    engine_jobs.publish_not_started("job-retried", "stopped before the retry started")
    final = published("job-retried")
    assert (final["status"], final["exited"], final["mlflow_run_id"], [c["name"] for c in final["checkpoints"]]) == (
        "stopped", True, RUN, ["step-0000003"])
