"""The engine's `run` and `evaluate` as the `qlora_training` DAG uses them: their command lines,
the result manifest watched while the engine trains, and what each exit means for the job.

The contract is `training.result`: exit codes, and `result.json` in the output folder (written
as soon as the MLflow run exists, then at each change, finally completed/stopped/failed with
the adapter's S3 URI once uploaded). The engine's log is only shown, never parsed.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from training.params import TrainingParams, cli_args
from training.pipeline.engine_process import EngineExit, describe_exit
from training.pipeline.errors import JobFailed
from training.result import (EXIT_BAD_INPUT, EXIT_OK, EXIT_STOPPED, RESULT_FILE, EngineResult, RunStatus,
                             read_result)

log = logging.getLogger(__name__)

ENGINE = [sys.executable, "-m", "training"]


class TrainingEnded(JobFailed):
    """The training ended without a complete adapter (stopped, failed, lost its worker).
    `mlflow_status` is how its MLflow run ends if the engine could not end it."""

    def __init__(self, reason: str, mlflow_status: str) -> None:
        super().__init__(reason)
        self.mlflow_status = mlflow_status


class EngineFailed(RuntimeError):
    """The engine failed in a way a retry may fix (a crash, a killed process): the task's
    retries apply."""


class EngineLost(EngineFailed):
    """The training process died without being asked to stop (killed by a signal such as
    SIGKILL, or its worker was lost): Airflow retries `train`, which resumes from the last
    uploaded checkpoint (`training.pipeline.resume`). `mlflow_status` as for `TrainingEnded`."""

    def __init__(self, reason: str, mlflow_status: str = "FAILED") -> None:
        super().__init__(reason)
        self.mlflow_status = mlflow_status


# --------------------------------------------------------------------------------------------
# Command lines

def engine_env(job_id: str, tracking: bool) -> dict[str, str]:
    """The engine's environment: the task's, unbuffered output, the job id (and no tracking
    URI when the job is not tracked)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "QLORA_JOB_ID": job_id}
    if not tracking:
        env.pop("MLFLOW_TRACKING_URI", None)
    return env


def train_command(*, model: str, data: str, task: str, output: Path, params: TrainingParams, run_name: str,
                  job_id: str, output_uri: str, checkpoint_uri: str | None = None, mlflow_uri: str | None = None,
                  experiment: str | None = None, resume: bool = False, evaluate: bool = False) -> list[str]:
    """`python -m training run ...` for a job: the resolved training parameters as options;
    the engine uploads its adapter to `output_uri` and each checkpoint under `checkpoint_uri`
    itself; `resume`: continue from the checkpoint restored into `output`; `evaluate`: it also
    evaluates the adapter and the base model right after training (METRICS_FILE in `output`)."""
    command = [*ENGINE, "run", "--model", model, "--data", data, "--task", task, "--output", str(output),
               *cli_args(params), "--run-name", run_name, "--job-id", job_id, "--output-uri", output_uri]
    if checkpoint_uri:
        command += ["--checkpoint-uri", checkpoint_uri]
    if mlflow_uri:
        command += ["--mlflow-uri", mlflow_uri]
        if experiment:
            command += ["--experiment", experiment]
    if resume:
        command.append("--resume")
    if evaluate:
        command.append("--evaluate")
    return command


def engine_evaluation(output: Path) -> dict[str, Any] | None:
    """The evaluation report `run --evaluate` wrote into `output` (None when it wrote none: it
    failed or was stopped, the `evaluate` task then runs the evaluation itself)."""
    from training.result import METRICS_FILE

    try:
        report = json.loads((Path(output) / METRICS_FILE).read_text())
    except FileNotFoundError:
        return None
    except ValueError as exc:
        log.warning("the engine's %s is not JSON, evaluating again: %s", METRICS_FILE, exc)
        return None
    return report if isinstance(report, dict) and report.get("adapter") else None


def evaluate_command(*, model: str, adapter: str, data: str, metrics_file: Path, mlflow_uri: str | None = None,
                     mlflow_run_id: str | None = None, output_uri: str | None = None) -> list[str]:
    """`python -m training evaluate ...`: the adapter and the base model on the held-out split,
    metrics to `metrics_file` (and into the job's MLflow run, and next to the adapter in S3)."""
    command = [*ENGINE, "evaluate", "--model", model, "--adapter", adapter, "--data", data,
               "--output", str(metrics_file)]
    if mlflow_uri and mlflow_run_id:
        command += ["--mlflow-uri", mlflow_uri, "--mlflow-run-id", mlflow_run_id]
    if output_uri:
        command += ["--output-uri", output_uri]
    return command


# --------------------------------------------------------------------------------------------
# The result manifest while the engine trains

class ResultWatcher:
    """Reads the engine's `result.json` each time `poll()` is called (pass it as `run_engine`'s
    `on_tick`); calls `on_run(result)` once, as soon as the manifest names the MLflow run (the
    engine writes it before the first step). With `publish_key`, each manifest that differs from
    the last published one in what the API shows (run, status, checkpoints, adapter files; not
    the step) is uploaded there with `exited: false`, so the API lists checkpoints as the run
    goes (and the clips skipped so far). Never raises: a failing callback or upload is logged."""

    def __init__(self, output: Path, on_run: Callable[[EngineResult], None] | None = None,
                 publish_key: str | None = None) -> None:
        self.output = Path(output)
        self.on_run = on_run
        self.publish_key = publish_key
        self.latest: EngineResult | None = None
        self.announced = False
        self.published: tuple | None = None

    @property
    def run_id(self) -> str | None:
        return self.latest.mlflow_run_id if self.latest else None

    @property
    def experiment_id(self) -> str | None:
        return self.latest.mlflow_experiment_id if self.latest else None

    def poll(self) -> EngineResult | None:
        try:
            result = read_result(self.output)
        except (OSError, ValueError) as exc:  # written atomically: should not happen
            log.warning("cannot read %s: %s", self.output / RESULT_FILE, exc)
            return self.latest
        if result is not None:
            self.latest = result
            if not self.announced and result.mlflow_run_id:
                self.announced = True
                if self.on_run is not None:
                    try:
                        self.on_run(result)
                    except Exception as exc:  # tracking extras never stop a training
                        log.warning("could not announce MLflow run %s: %s", result.mlflow_run_id, exc)
            if self.publish_key:
                self._publish(result)
        return self.latest

    def _publish(self, result: EngineResult) -> None:
        shown = (result.mlflow_run_id, result.status, json.dumps([c.name for c in result.checkpoints]),
                 tuple(result.adapter_files), result.output_uri, json.dumps(result.skipped_clips, sort_keys=True))
        if shown == self.published:
            return
        try:
            _put_result(self.publish_key, result, exited=False)
            self.published = shown
        except Exception as exc:  # retried at the next tick
            log.warning("could not publish %s to %s: %s", RESULT_FILE, self.publish_key, exc)


# --------------------------------------------------------------------------------------------
# What an exit means

def publish_result(output: Path, key: str, ended: EngineExit) -> EngineResult:
    """Uploads the engine's last `result.json` to `key` once its process is gone (a manifest it
    never wrote, or left `running`, is recorded as failed with how the process ended). Its
    presence in S3 with `exited: true` is the API's evidence that a stopped job's training
    process has exited (the copies published while it runs say `exited: false`)."""
    result = read_result(output) or EngineResult()
    if result.status == RunStatus.RUNNING:
        result.status, result.error = RunStatus.FAILED, describe_exit(ended.code, ended.tail)
    _put_result(key, result, exited=True)
    return result


def publish_not_started(job_id: str, reason: str) -> None:
    """The final manifest of a train task that did not start its engine (a stop request was
    already there): the last one published for the job (an earlier try's checkpoints stay
    listed) marked `stopped`, `reason`, `exited: true`, so the API ends the job at once instead of
    after `QLORA_STOP_KILL_DEADLINE_S`. Logged, never raised: the task fails anyway."""
    from training import s3
    from training.pipeline.resume import published_result

    try:
        result = published_result(job_id) or EngineResult()
        result.status, result.error = RunStatus.STOPPED, reason
        _put_result(s3.training_result_key(job_id), result, exited=True)
    except Exception as exc:  # noqa: BLE001 - the API falls back on its kill deadline
        log.warning("could not publish that job %s was stopped before its training started: %s", job_id, exc)


def _put_result(key: str, result: EngineResult, *, exited: bool) -> None:
    from training import s3
    from training.settings import get_settings

    result.exited = exited
    s3.client().put_object(Bucket=get_settings().s3_bucket, Key=key, Body=result.to_json().encode(),
                           ContentType="application/json")


def training_outcome(ended: EngineExit, result: EngineResult | None, output_uri: str | None = None,
                     deadline: str | None = None) -> EngineResult:
    """The manifest of a training that completed with its adapter uploaded (to `output_uri`
    when given); else raises `TrainingEnded` saying why (stopped by request, failed) and where
    the partial adapter is, if one was uploaded, or `EngineLost` (retried: the retry resumes
    from the last uploaded checkpoint) when the process died unasked or its worker was lost."""
    saved = f"partial adapter at {result.output_uri}" if result and result.output_uri else "no adapter was saved"
    if ended.orphaned:  # nobody asked: the worker process above this task died
        raise EngineLost(f"the Airflow worker running this task was lost, so the training was stopped; {saved}")
    if ended.code == EXIT_OK and result is not None and result.status == RunStatus.COMPLETED and (
            result.output_uri or not output_uri):
        return result  # finished before a stop (or the deadline) reached it: the stop lost the race
    if deadline is not None:  # the task's own deadline (`max_runtime_minutes`): the job fails
        raise TrainingEnded(f"{deadline}; {saved}", "FAILED")
    if (ended.stop_at is not None or ended.asked is not None or ended.code == EXIT_STOPPED
            or (result and result.status == RunStatus.STOPPED)):
        raise TrainingEnded(f"training stopped by request; {saved}", "KILLED")
    if ended.code < 0:  # killed by a signal nobody here sent (SIGKILL, the OOM killer)
        raise EngineLost(describe_exit(ended.code, ended.tail))
    if ended.code != EXIT_OK and not (result and result.error):
        raise TrainingEnded(describe_exit(ended.code, ended.tail), "FAILED")
    if ended.code != EXIT_OK or (result and result.status == RunStatus.FAILED):
        assert result is not None
        what = "rejected its input" if ended.code == EXIT_BAD_INPUT else "failed"
        raise TrainingEnded(f"the training {what}: {result.error or 'no reason given'}", "FAILED")
    if result is None:
        raise TrainingEnded(f"the training exited 0 but wrote no {RESULT_FILE}", "FAILED")
    if result.status != RunStatus.COMPLETED:
        raise TrainingEnded(f"the training exited 0 but its {RESULT_FILE} says {result.status}", "FAILED")
    if output_uri and not result.output_uri:
        raise TrainingEnded(f"the training exited 0 but uploaded no adapter to {output_uri}", "FAILED")
    return result


def evaluation_outcome(ended: EngineExit, metrics_file: Path) -> dict[str, Any]:
    """The metrics of an evaluation that succeeded. A stop or bad input raises `JobFailed` (no
    retry); a crash or a killed process `EngineFailed` (retried)."""
    if ended.stopped or ended.code == EXIT_STOPPED:
        raise JobFailed("the evaluation was stopped")
    if ended.code == EXIT_BAD_INPUT:
        raise JobFailed(describe_exit(ended.code, ended.tail, "the evaluation"))
    if ended.code != EXIT_OK:
        raise EngineFailed(describe_exit(ended.code, ended.tail, "the evaluation"))
    try:
        return json.loads(Path(metrics_file).read_text())
    except FileNotFoundError:
        raise EngineFailed(f"the evaluation exited 0 but wrote no {metrics_file}") from None
    except ValueError as exc:
        raise EngineFailed(f"the evaluation wrote a {metrics_file} that is not JSON: {exc}") from None
