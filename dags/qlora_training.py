"""
### QLoRA training

Fine-tunes a catalog model on a validated dataset with QLoRA. The API (`POST /v1/trainings`)
triggers one run per job with run id `train-{job_id}` and the job as conf; operators can also
trigger it from this form, which validates the conf with the same rules as the API
(`training/job_spec.py`).

1. **validate_inputs** (*validating*): the model is in the catalog, the dataset's validation
   report in S3 says it is valid and fits the model type, the LoRA rank is in the model's range,
   the target modules are the architecture's. A bad request fails at once, without retry.
2. **prepare** (*downloading*): model `s3://$QLORA_S3_BUCKET/models/{model_id}/` and dataset
   `datasets/{dataset_id}/files/` into the worker cache `$QLORA_CACHE_DIR` (skipped when already
   there), first evicting the least recently used models and datasets beyond
   `$QLORA_CACHE_MAX_GB`. Transient S3 errors are retried.
3. **train** (*training*, queue `gpu`, pool `gpu`: as many trainings at once as the pool has
   slots): runs `python -m training run` in a child process and streams its log here. The
   engine tracks the training in one MLflow run (experiment `qlora/{user}`, run name
   `output_name`); the task tags it with `job_id`, `user`, `dataset_id`, `model_id` and pushes
   its id to XCom `mlflow_run_id` as soon as the engine announces it (before the first step).
   Stopping the run (mark it failed) sends SIGTERM: the engine finishes its step and saves the
   adapter so far, which is uploaded to `trainings/{job_id}/adapter/`. Never retried (a retry
   would redo the compute); a killed engine fails the run with the signal's name. If the
   task's Airflow supervisor dies (a crashed worker), the engine is stopped too. The job's
   folder in the worker cache is deleted once the adapter is in S3 (or the job ended).
4. **evaluate** (*evaluating*): reads the final metrics (`metrics.json`: adapter and base model
   on the held-out split).
5. **register** (*registering*): the adapter in `s3://$QLORA_S3_BUCKET/trainings/{job_id}/adapter/`
   and a version of the registered model `{user}.{output_name}` in the MLflow Model Registry.
6. **finalize**: returns `{output_path, metrics, mlflow_run_id, registered_model}` (XCom
   `return_value`).

The train task has an extra link **MLflow run** to its run in the MLflow UI
(`$QLORA_MLFLOW_UI_URL`, else `$MLFLOW_TRACKING_URI`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from datetime import timedelta
from pathlib import Path
from typing import Any, NamedTuple

from airflow.sdk import Param, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

from training import cache, job_spec, s3, storage
from training.catalog import load_catalog
from training.cli import EXIT_BAD_INPUT, EXIT_STOPPED

try:  # plugins/ is on sys.path in every Airflow process (core.plugins_folder)
    from qlora_mlflow_link import MLflowRunLink, mlflow_ui_base_url
except ImportError:  # pragma: no cover - a deployment without the repo's plugins folder
    MLflowRunLink = None
    mlflow_ui_base_url = None

log = logging.getLogger(__name__)

#: what `python -m training run` provides (training/cli.py, training/trainer.py): exit codes,
#: its log file in the output folder, its log line naming the MLflow run it created
ENGINE_LOG_FILE = "train.log"
ENGINE_RUN_LINE = re.compile(r"mlflow run ([0-9a-f]{32}) at ")
TRANSIENT = dict(retries=3, retry_delay=timedelta(seconds=5), retry_exponential_backoff=2.0,
                 max_retry_delay=timedelta(minutes=2))


# --- configuration and small helpers (heavy libraries are imported inside functions) --------

def _output_dir(job_id: str) -> Path:
    return s3.cache_dir() / "trainings" / job_id / "output"


def _cache_entries(params: dict[str, Any]) -> tuple[Path, Path]:
    """The job's model and dataset folders in this worker's cache (see training/cache.py)."""
    return s3.cache_dir() / "models" / params["model_id"], s3.cache_dir() / "datasets" / params["dataset_id"]


def _discard_output(job_id: str) -> None:
    """Deletes the job's folder in this worker's cache (adapter, checkpoints, log) once it is
    of no more use here: its adapter is in S3, or the job ended stopped/failed (the API has no
    resume). Without this every job would leave hundreds of MB on the GPU host's disk."""
    folder = _output_dir(job_id).parent
    if folder.exists():
        shutil.rmtree(folder, ignore_errors=True)
        log.info("removed the job's local output %s", folder)


def _s3_failure(what: str, exc: Exception) -> Exception:
    """The exception to raise for a failed S3 call: itself when transient (the task retries),
    else an AirflowFailException (no retry)."""
    if s3.is_transient(exc):
        log.warning("transient S3 error while %s: %s (will retry)", what, exc)
        return exc
    return AirflowFailException(f"S3 error while {what}: {exc}")


def _s3_call(what: str, fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except AirflowFailException:
        raise
    except Exception as exc:
        failure = _s3_failure(what, exc)
        if failure is exc:
            raise
        raise failure from exc


def _params() -> dict[str, Any]:
    return dict(get_current_context()["params"])


def _model(model_id: str):
    model = load_catalog().get(model_id)
    if model is None:
        raise AirflowFailException(f"model {model_id!r} is not in the catalog")
    return model


def _sync_prefix(client, prefix: str, dest: Path, what: str) -> tuple[Path, int]:
    """Mirrors `s3://bucket/prefix` into `dest`; returns the folder and the files downloaded."""
    found, downloaded = _s3_call(f"downloading {what}", s3.download_prefix, client, s3.bucket(), prefix, dest)
    if not found:
        raise AirflowFailException(f"{what} not found: nothing under {storage.s3_uri(s3.bucket(), prefix)}")
    return dest, downloaded


def _upload_files(client, root: Path, files: list[Path], prefix: str) -> list[str]:
    """Uploads `files` under `prefix`, `adapter_config.json` last: it marks a complete adapter,
    so an upload cut short (SIGKILL after a stop) never leaves a torn adapter behind."""
    return _s3_call(f"uploading to {prefix}", s3.upload_files, client, s3.bucket(), root, files, prefix,
                    last="adapter_config.json")


def _uploaded_by_engine(job_id: str) -> bool:
    """The engine's own upload (`--output-uri`) holds the adapter and the final metrics."""
    prefix = storage.adapter_prefix(job_id)
    try:
        listed = s3.client().list_objects_v2(Bucket=s3.bucket(), Prefix=prefix)
    except Exception as exc:  # keep the local copy: evaluate/register use it or retry S3
        log.warning("cannot list %s: %s", prefix, exc)
        return False
    names = {o["Key"][len(prefix):] for o in listed.get("Contents", [])}
    return {"adapter_config.json", "metrics.json"} <= names


def _adapter_files(output: Path) -> list[Path]:
    """The files of the adapter the engine saved at the top of its output folder (weights,
    config, tokenizer, preprocessing, metrics), without its log, checkpoints and temp folders."""
    if not (output / "adapter_config.json").is_file():
        return []
    return sorted(p for p in output.iterdir()
                  if p.is_file() and p.name != ENGINE_LOG_FILE and not p.name.startswith("."))


# --- MLflow (the job's run is created here, so its id is known before training starts) -----

def _tracking_uri() -> str | None:
    return os.environ.get("MLFLOW_TRACKING_URI") or None


def _mlflow_client():
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=_tracking_uri())


class MlflowRunWatcher:
    """Reads the engine's output for its MLflow run id (`mlflow run <id> at <uri>`, logged as
    soon as the run exists, before the first step); then pushes it to XCom at once (for the API
    and the extra link) and adds the job's tags the engine does not know."""

    def __init__(self, ti, params: dict[str, Any]) -> None:
        self.ti, self.params = ti, params
        self.run_id: str | None = None
        self.experiment_id: str | None = None

    def __call__(self, line: str) -> None:
        if self.run_id is None and (match := ENGINE_RUN_LINE.search(line)):
            self.found(match.group(1))

    def found(self, run_id: str) -> None:
        self.run_id = run_id
        self.ti.xcom_push(key=job_spec.XCOM_MLFLOW_RUN_ID, value=run_id)
        try:
            client = _mlflow_client()
            self.experiment_id = client.get_run(run_id).info.experiment_id
            self.ti.xcom_push(key=job_spec.XCOM_MLFLOW_EXPERIMENT_ID, value=self.experiment_id)
            if MLflowRunLink is not None and (base := mlflow_ui_base_url()):
                # the link works while the run trains (Airflow itself stores it only at the end)
                self.ti.xcom_push(key=MLflowRunLink().xcom_key,
                                  value=job_spec.mlflow_run_ui_url(base, self.experiment_id, run_id))
            context = get_current_context()
            for key, value in {"job_id": self.params["job_id"], "user": self.params["user"],
                               "dataset_id": self.params["dataset_id"], "dataset": self.params["dataset_id"],
                               "model_id": self.params["model_id"], "output_name": self.params["output_name"],
                               "airflow_dag_id": job_spec.DAG_ID, "airflow_run_id": context["run_id"]}.items():
                client.set_tag(run_id, key, value)
            log.info("MLflow run %s (experiment %s) tracks job %s", run_id, self.experiment_id,
                     self.params["job_id"])
        except Exception as exc:  # tracking extras must not fail the training
            log.warning("could not tag MLflow run %s: %s", run_id, exc)

    def recover(self, experiment_name: str) -> None:
        """When the log line was missed: the run tagged with this job id."""
        if self.run_id is not None:
            return
        try:
            client = _mlflow_client()
            experiment = client.get_experiment_by_name(experiment_name)
            runs = client.search_runs([experiment.experiment_id],
                                      f"tags.job_id = '{self.params['job_id']}'",
                                      order_by=["attributes.start_time DESC"], max_results=1) if experiment else []
            if runs:
                self.found(runs[0].info.run_id)
        except Exception as exc:
            log.warning("could not find the MLflow run of job %s: %s", self.params["job_id"], exc)


def _end_mlflow_run(run_id: str, status: str, reason: str) -> None:
    """Marks the run ended when the engine could not (killed, crashed before its own end)."""
    try:
        client = _mlflow_client()
        run = client.get_run(run_id)
        if run.info.status in ("RUNNING", "SCHEDULED"):
            client.set_tag(run_id, "failure_reason", reason[:5000])
            client.set_terminated(run_id, status=status)
    except Exception as exc:  # never hide the real failure behind a tracking error
        log.warning("could not end MLflow run %s: %s", run_id, exc)


# --- the engine child process -------------------------------------------------------------

def _die_with_parent() -> None:
    """In the child: receive SIGKILL when the task process dies (even by SIGKILL), so no
    orphan keeps a GPU; then a process group of its own (it gets signals only from us)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass
    os.setsid()


class EngineExit(NamedTuple):
    code: int
    #: monotonic time the task received SIGTERM/SIGINT (None: no stop was asked)
    stop_at: float | None
    #: the last lines of its output
    tail: list[str]
    #: the task's supervisor (Airflow's task runner parent) died while the engine ran
    orphaned: bool = False


#: how often the train task checks that its Airflow supervisor still lives
SUPERVISOR_CHECK_S = 1.0


def _stop_when_orphaned(process: subprocess.Popen, state: dict) -> None:
    """Watches the task's parent, Airflow's supervisor. If it dies (the Celery worker crashed
    or was OOM-killed), Airflow fails the task after its heartbeat timeout and may give the GPU
    to another training, while this process, reparented, would train on: so the engine is
    stopped (SIGTERM: it saves its adapter) as soon as the supervisor is gone."""
    supervisor = os.getppid()
    while process.poll() is None:
        if os.getppid() != supervisor:
            state["orphaned"] = True
            log.error("the Airflow supervisor of this task (pid %s) is gone: stopping the training", supervisor)
            process.send_signal(signal.SIGTERM)
            return
        time.sleep(SUPERVISOR_CHECK_S)


def run_engine(command: list[str], env: dict[str, str], *, on_line=None) -> EngineExit:
    """Runs the engine, streaming its output to the task log; SIGTERM/SIGINT received by the
    task are forwarded to it, and it is stopped if the task's supervisor dies."""
    tail: deque[str] = deque(maxlen=40)
    stop = {"requested": False, "at": 0.0, "orphaned": False}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               bufsize=1, env=env, preexec_fn=_die_with_parent, errors="replace")
    threading.Thread(target=_stop_when_orphaned, args=(process, stop), daemon=True,
                     name="supervisor-watch").start()

    def forward(signum, _frame):
        if not stop["requested"]:
            stop.update(requested=True, at=time.monotonic())
            log.warning("received %s: asking the training to stop (it saves its adapter)",
                        signal.Signals(signum).name)
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)

    previous = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            previous[sig] = signal.signal(sig, forward)
        except ValueError:  # not the main thread: rely on the process group's signals
            pass
    try:
        assert process.stdout is not None
        for line in process.stdout:
            line = line.rstrip("\n")
            for part in line.split("\r"):  # progress bars redraw with \r
                if part.strip():
                    tail.append(part)
                    log.info("[engine] %s", part)
                    if on_line is not None:
                        on_line(part)
        code = process.wait()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return EngineExit(code, stop["at"] if stop["requested"] else None, list(tail), stop["orphaned"])


def _describe_exit(code: int, tail: list[str]) -> str:
    if code < 0:
        return f"the training process was killed by {signal.Signals(-code).name}"
    errors = [line for line in tail if line.lower().startswith("error")]
    last = errors[-1] if errors else (tail[-1] if tail else "no output")
    if code == EXIT_BAD_INPUT:
        return f"the training rejected its input: {last}"
    return f"the training failed (exit code {code}): {last}"


# --- the DAG ------------------------------------------------------------------------------

def _dag_params() -> dict[str, Param]:
    params = {}
    for name, schema in job_spec.job_conf_schema().items():
        schema = dict(schema)
        default = schema.pop("default", None)
        description = schema.pop("description", None)
        params[name] = (Param(default, description=description, **schema) if default is not None
                        else Param(description=description, **schema))
    return params


@dag(
    dag_id=job_spec.DAG_ID,
    schedule=None,
    catchup=False,
    max_active_runs=64,
    params=_dag_params(),
    doc_md=__doc__,
    tags=["qlora", "training"],
    default_args={"owner": "qlora", "retries": 0},
)
def qlora_training():

    @task(**TRANSIENT)
    def validate_inputs() -> dict[str, Any]:
        started = time.monotonic()
        params = _params()
        if problems := job_spec.validate_job_conf(params):
            raise AirflowFailException("invalid training job: " + "; ".join(problems))
        model = _model(params["model_id"])
        dataset_id = params["dataset_id"]
        key = storage.dataset_report_key(dataset_id)
        try:
            body = s3.client().get_object(Bucket=s3.bucket(), Key=key)["Body"].read()
        except Exception as exc:
            if s3.is_missing(exc):
                raise AirflowFailException(
                    f"dataset {dataset_id} has no validation report ({storage.s3_uri(s3.bucket(), key)}): "
                    "it does not exist or was never validated") from exc
            raise _s3_failure("reading the dataset's validation report", exc) from exc
        try:
            report = json.loads(body)
        except ValueError as exc:
            raise AirflowFailException(f"the validation report of dataset {dataset_id} is not JSON") from exc
        if not report.get("valid"):
            errors = "; ".join((report.get("errors") or [])[:3]) or "no details"
            raise AirflowFailException(f"dataset {dataset_id} is not valid: {errors}")
        if problems := job_spec.validate_job_request(model, report.get("tasks") or [],
                                                     params.get("training_params")):
            raise AirflowFailException("invalid training job: " + "; ".join(problems))
        resolved = job_spec.resolve_training_params(model, params.get("training_params"))
        log.info("job %s: %s on dataset %s (%s clips), params %s (checked in %.2f s)", params["job_id"],
                 model.id, dataset_id, report.get("clip_count"), resolved.as_dict(), time.monotonic() - started)
        return {"model_type": model.model_type, "training_params": resolved.as_dict(),
                "clip_count": report.get("clip_count")}

    @task(queue="gpu", **TRANSIENT)
    def prepare(spec: dict[str, Any]) -> dict[str, str]:
        params = _params()
        client = s3.client()
        started = time.monotonic()
        model_entry, data_entry = _cache_entries(params)
        for entry in (model_entry, data_entry):
            cache.touch(entry)
        for entry, size in cache.evict(s3.cache_dir(), cache.max_bytes(), keep=(model_entry, data_entry)):
            log.info("evicted %s from the worker cache (%.1f MB) to stay under QLORA_CACHE_MAX_GB", entry, size / 1e6)
        model_dir, n_model = _sync_prefix(client, storage.model_prefix(params["model_id"]), model_entry,
                                          f"model {params['model_id']}")
        data_dir, n_data = _sync_prefix(client, storage.dataset_files_prefix(params["dataset_id"]),
                                        data_entry / "files", f"dataset {params['dataset_id']}")
        log.info("cache ready in %.1f s (%d model and %d dataset files downloaded): %s, %s",
                 time.monotonic() - started, n_model, n_data, model_dir, data_dir)
        return {"model_dir": str(model_dir), "data_dir": str(data_dir)}

    @task(queue="gpu", pool="gpu", retries=0)
    def train(spec: dict[str, Any], paths: dict[str, str]) -> dict[str, Any]:
        ti = get_current_context()["ti"]
        params = _params()
        job_id = params["job_id"]
        output = _output_dir(job_id)
        shutil.rmtree(output, ignore_errors=True)  # a fresh training (a stopped job stays stopped)
        output.mkdir(parents=True)
        adapter_uri = storage.s3_uri(s3.bucket(), storage.adapter_prefix(job_id))

        # the local cache if this worker prepared it, else the engine reads S3 itself
        model_src = paths["model_dir"] if Path(paths["model_dir"]).is_dir() else \
            storage.s3_uri(s3.bucket(), storage.model_prefix(params["model_id"]))
        data_src = paths["data_dir"] if Path(paths["data_dir"]).is_dir() else \
            storage.s3_uri(s3.bucket(), storage.dataset_files_prefix(params["dataset_id"]))
        resolved = job_spec.TrainingParams(**{**spec["training_params"],
                                              "target_modules": tuple(spec["training_params"]["target_modules"])})
        experiment = job_spec.mlflow_experiment_name(params["user"])
        command = [sys.executable, "-m", "training", "run", "--model", model_src, "--data", data_src,
                   "--task", spec["model_type"], "--output", str(output), *resolved.cli_args(),
                   "--run-name", params["output_name"], "--job-id", job_id, "--output-uri", adapter_uri]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "QLORA_JOB_ID": job_id}
        watcher = MlflowRunWatcher(ti, params)
        if _tracking_uri():
            command += ["--mlflow-uri", _tracking_uri(), "--experiment", experiment,
                        "--registered-model-name", job_spec.registered_model_name(params["user"], params["output_name"])]
        else:
            env.pop("MLFLOW_TRACKING_URI", None)
        log.info("running: %s", " ".join(command))

        started = time.monotonic()
        with cache.kept_fresh(_cache_entries(params)):  # no other job's prepare evicts them meanwhile
            code, stop_at, tail, orphaned = run_engine(command, env, on_line=watcher)
        elapsed = time.monotonic() - started
        log.info("training process exited with code %s after %.1f s", code, elapsed)
        if _tracking_uri():
            watcher.recover(experiment)

        if orphaned or stop_at is not None or code == EXIT_STOPPED:
            if stop_at is not None:
                log.info("the engine exited %.2f s after the stop request", time.monotonic() - stop_at)
            # upload the partial adapter inside the grace period Airflow leaves before SIGKILL
            files = _adapter_files(output)
            where = "no adapter was saved"
            if files:  # Airflow sends SIGKILL ~5 s after SIGTERM: this races it (see _upload_files)
                _upload_files(s3.client(), output, files, storage.adapter_prefix(job_id))
                where = f"partial adapter at {adapter_uri}"
            _discard_output(job_id)
            if orphaned:  # nobody asked: the worker process above this task died
                reason = f"the Airflow worker running this task was lost, so the training was stopped; {where}"
                if watcher.run_id:
                    _end_mlflow_run(watcher.run_id, "FAILED", reason)
                raise AirflowFailException(reason)
            if watcher.run_id:
                _end_mlflow_run(watcher.run_id, "KILLED", "stopped by request")
            raise AirflowFailException(f"training stopped by request; {where}")
        if code != 0:
            reason = _describe_exit(code, tail)
            if watcher.run_id:
                _end_mlflow_run(watcher.run_id, "FAILED", reason)
            _discard_output(job_id)
            raise AirflowFailException(reason)
        if not _adapter_files(output):
            _discard_output(job_id)
            raise AirflowFailException(f"the training exited 0 but wrote no adapter to {output}")
        if _uploaded_by_engine(job_id):  # evaluate and register read S3, on whichever worker
            _discard_output(job_id)
        return {"output_dir": str(output), "mlflow_run_id": watcher.run_id,
                "mlflow_experiment_id": watcher.experiment_id, "train_seconds": round(elapsed, 2)}

    @task(queue="gpu", **TRANSIENT)
    def evaluate(trained: dict[str, Any]) -> dict[str, Any]:
        """The final metrics the engine measured on the held-out split (adapter and base)."""
        params = _params()
        path = Path(trained["output_dir"]) / "metrics.json"
        if path.is_file():
            metrics = json.loads(path.read_text())
        else:  # another worker trained: the engine uploaded its output with the adapter
            key = storage.adapter_prefix(params["job_id"]) + "metrics.json"
            try:
                metrics = json.loads(s3.client().get_object(Bucket=s3.bucket(), Key=key)["Body"].read())
            except Exception as exc:
                if s3.is_missing(exc):
                    raise AirflowFailException(f"the training wrote no metrics ({path}, "
                                               f"{storage.s3_uri(s3.bucket(), key)})") from exc
                raise _s3_failure("reading metrics.json", exc) from exc
        log.info("final metrics: %s", json.dumps(metrics, indent=1))
        return metrics

    @task(queue="gpu", **TRANSIENT)
    def register(trained: dict[str, Any], metrics: dict[str, Any]) -> dict[str, Any]:
        params = _params()
        prefix = storage.adapter_prefix(params["job_id"])
        output_path = storage.s3_uri(s3.bucket(), prefix)
        client = s3.client()
        # the engine uploads its output (--output-uri); upload again only what is missing
        listed = _s3_call("listing the adapter", client.list_objects_v2, Bucket=s3.bucket(), Prefix=prefix)
        in_s3 = {o["Key"][len(prefix):] for o in listed.get("Contents", [])}
        missing = [p for p in _adapter_files(Path(trained["output_dir"])) if p.name not in in_s3]
        _upload_files(client, Path(trained["output_dir"]), missing, prefix)
        if "adapter_config.json" not in in_s3 | {p.name for p in missing}:
            raise AirflowFailException(f"no adapter in {output_path} and none on this worker")
        log.info("adapter in %s (%d files uploaded here)", output_path, len(missing))
        _discard_output(params["job_id"])
        registered = None
        if run_id := trained.get("mlflow_run_id"):
            registered = _register_model(run_id, params)
        return {"output_path": output_path, "registered_model": registered}

    @task
    def finalize(trained: dict[str, Any], metrics: dict[str, Any], registered: dict[str, Any]) -> dict[str, Any]:
        params = _params()
        result = {"job_id": params["job_id"], "status": str(job_spec.JobState.COMPLETED),
                  "output_path": registered["output_path"], "metrics": metrics,
                  "mlflow_run_id": trained.get("mlflow_run_id"),
                  "registered_model": registered["registered_model"],
                  "train_seconds": trained.get("train_seconds")}
        log.info("job %s completed: %s", params["job_id"], json.dumps(result))
        return result

    spec = validate_inputs()
    paths = prepare(spec)
    trained = train(spec, paths)
    if MLflowRunLink is not None:
        trained.operator.operator_extra_links = (MLflowRunLink(),)
    metrics = evaluate(trained)
    registered = register(trained, metrics)
    finalize(trained, metrics, registered)


def _register_model(run_id: str, params: dict[str, Any]) -> dict[str, Any]:
    """The registered model version of the job's run: the engine's (it registers the adapter
    artifact of its run), else one created here from that artifact."""
    from mlflow.exceptions import MlflowException

    client = _mlflow_client()
    existing = client.search_model_versions(f"run_id = '{run_id}'")
    if existing:
        version = existing[0]
        log.info("adapter registered as %s version %s", version.name, version.version)
        return {"name": version.name, "version": str(version.version)}
    name = job_spec.registered_model_name(params["user"], params["output_name"])
    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code):
            raise
    source = f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/adapter"
    version = client.create_model_version(name, source=source, run_id=run_id,
                                          tags={"job_id": params["job_id"]})
    log.info("registered %s version %s (source %s)", name, version.version, source)
    return {"name": name, "version": str(version.version)}


qlora_training_dag = qlora_training()
