"""
### QLoRA training

Fine-tunes a catalog model on a validated dataset with QLoRA. The API (`POST /v1/trainings`)
triggers one run per job with run id `train-{job_id}`; its conf is flat: `job_id`, `user`,
`model_id`, `dataset_id`, `output_name` and one field per training parameter (section
*Training parameters* of this form, with the same bounds as the API: `training/params.py`).

1. **validate_inputs** (*validating*): the conf is valid, the model is in the catalog, the
   dataset's validation report in S3 says it is valid and fits the model type, the LoRA rank is
   in the model's range, the target modules are the architecture's. Returns the parameters the
   job really uses (every default filled in). A bad request fails at once, without retry.
2. **prepare** (*downloading*, queue `gpu`): model `s3://$QLORA_S3_BUCKET/models/{model_id}/`
   and dataset `datasets/{dataset_id}/files/` into the worker cache `$QLORA_CACHE_DIR` (only
   what is missing or changed), first evicting the least recently used models and datasets
   beyond `$QLORA_CACHE_MAX_GB`. Transient S3 errors are retried.
3. **train** (*training*, queue `gpu`, pool `gpu`: as many trainings at once as the pool has
   slots): runs `python -m training run` in a child process and streams its log here (the
   child is forked by the worker's warm engine server, which `prepare` starts and which has
   torch & co imported already: `training/pipeline/warm_engine.py`, `QLORA_WARM_ENGINE`). The
   engine tracks the training in one MLflow run (experiment `qlora/{user}`, run name
   `output_name`) and uploads the adapter to `trainings/{job_id}/adapter/` and each checkpoint
   (every `checkpoint_every_steps`, else once per epoch; the last two kept) under
   `trainings/{job_id}/checkpoints/` itself. The task publishes the manifest to
   `trainings/{job_id}/result.json` as it changes (`exited: false`), and a last time once the
   engine exited (`exited: true`). The task
   reads the engine's result manifest (`result.json`), never its log: as soon as it names the
   MLflow run (before the first step) the run id goes to XCom `mlflow_run_id` and the run is
   tagged with `job_id`, `user`, `dataset_id`, `model_id`, `mlflow.user`, and the dataset is
   logged as its input. Stopping the run (mark it failed) sends SIGTERM: the engine finishes its
   step and uploads the adapter so far; a stop or a bad input is never retried. An engine that
   dies unasked (SIGKILL, the OOM killer) or a lost worker (the task's Airflow supervisor died:
   the engine is stopped too) is retried (`TRAIN_RETRIES`), and every try starts by restoring
   the job's last uploaded checkpoint (`training/pipeline/resume.py`): the engine runs with
   `--resume` and continues the same MLflow run from that step, so no step before it is redone.
   The new run of `POST /v1/trainings/{id}/resume` (run id `train-{job_id}-resume-N`) goes the
   same way. The engine runs with `--evaluate`: right after training, with the model still
   loaded, it evaluates the adapter and the base model (the adapter disabled) on the held-out
   split, as `evaluate` below would; the task then registers that evaluated adapter (step 5)
   from the files on the worker. Either left undone (failed, stopped) is done by its own task.
4. **evaluate** (*evaluating*, queue `gpu`): the held-out metrics of the adapter and the base
   model: those the train task's engine computed, else runs `python -m training evaluate`. The
   metrics go to the MLflow run (`final_*`, `base_*`, `evaluation/`) and `metrics.json` beside
   the adapter. Retried on a crash. The job's folders on the worker are deleted afterwards (or
   as soon as the job ends stopped/failed).
5. **register** (*registering*): a version of the registered model `{user}~{output_name}` in
   the MLflow Model Registry (made by the train task, else here): the adapter as an MLflow
   pyfunc model (the run's `model` artifact, `training/mlflow_model.py`) that
   `mlflow.pyfunc.load_model("models:/NAME/VERSION")` loads and that predicts clip paths
   (labels or captions).
6. **finalize**: returns `{output_path, metrics, mlflow_run_id, registered_model}` (XCom
   `return_value`).

The train task has an extra link **MLflow run** to its run in the MLflow UI
(`$QLORA_MLFLOW_UI_URL`, else `$MLFLOW_TRACKING_URI`). The work of each task is in
`training/pipeline/`; this file holds the graph.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shlex
import time
from datetime import timedelta
from typing import Any

from airflow.sdk import Param, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

from training import cache, job_spec, params, s3
from training.catalog import load_catalog
from training.pipeline import engine_jobs, job_inputs, mlflow_runs, resume, warm_engine, worker_paths
from training.pipeline.engine_process import run_engine
from training.pipeline.train_control import TrainControl
from training.pipeline.errors import JobFailed
from training.result import ADAPTER_MARKER, METRICS_FILE
from training.settings import get_settings

try:  # plugins/ is on sys.path in every Airflow process (core.plugins_folder)
    from qlora_mlflow_link import MLflowRunLink
except ImportError:  # pragma: no cover - a deployment without the repo's plugins folder
    MLflowRunLink = None

log = logging.getLogger(__name__)

TRANSIENT = dict(retries=3, retry_delay=timedelta(seconds=5), retry_exponential_backoff=2.0,
                 max_retry_delay=timedelta(minutes=2))
PARAMS_SECTION = "Training parameters"
#: Airflow's own limit on a try of `train`, a backstop: the task stops its engine at the job's
#: `max_runtime_minutes` itself (keeping the partial adapter); this kills it, should that fail
TRAIN_EXECUTION_TIMEOUT = timedelta(minutes=job_spec.MAX_RUNTIME_MINUTES_LIMIT + 30)
#: tries of `train` after the engine died unasked or its worker was lost; each resumes from the
#: last uploaded checkpoint (a stop or a bad input fails at once)
TRAIN_RETRIES = dict(retries=2, retry_delay=timedelta(seconds=5))


def _dag_params() -> dict[str, Param]:
    """The job's fields (required) and one titled field per training parameter (its default)."""
    out = {name: Param(**schema) for name, schema in job_spec.job_field_schemas().items()}
    for name, schema in params.airflow_param_schemas().items():
        schema = dict(schema)
        out[name] = Param(schema.pop("default"), section=PARAMS_SECTION, **schema)
    return out


def _conf() -> dict[str, Any]:
    return dict(get_current_context()["params"])


@contextlib.contextmanager
def _for_good():
    """A `JobFailed` fails the task without retry."""
    try:
        yield
    except JobFailed as exc:
        raise AirflowFailException(str(exc)) from exc


def _sources(conf: dict[str, Any], paths: dict[str, str]) -> tuple[str, str]:
    """The model and the dataset for the engine: this worker's cache, else their S3 URIs."""
    bucket = get_settings().s3_bucket
    return (worker_paths.engine_input(paths["model_dir"], s3.s3_uri(bucket, s3.model_prefix(conf["model_id"]))),
            worker_paths.engine_input(paths["data_dir"], s3.s3_uri(bucket, s3.dataset_files_prefix(conf["dataset_id"]))))


def _announce_run(conf: dict[str, Any], run_id: str, experiment_id: str | None) -> None:
    """The MLflow run is known: XCom for the API and the extra link, the job's tags."""
    context = get_current_context()
    ti = context["ti"]
    ti.xcom_push(key=job_spec.XCOM_MLFLOW_RUN_ID, value=run_id)
    if experiment_id:
        ti.xcom_push(key=job_spec.XCOM_MLFLOW_EXPERIMENT_ID, value=experiment_id)
        if MLflowRunLink is not None and (url := mlflow_runs.run_ui_url(experiment_id, run_id)):
            # the link works while the run trains (Airflow itself stores it only at the end)
            ti.xcom_push(key=MLflowRunLink().xcom_key, value=url)
    mlflow_runs.tag_run(run_id, mlflow_runs.job_tags(conf, context["run_id"]))  # mlflow.user: the service user
    bucket = get_settings().s3_bucket
    mlflow_runs.log_dataset_input(run_id, conf["dataset_id"], s3.s3_uri(bucket, s3.dataset_files_prefix(conf["dataset_id"])))
    log.info("MLflow run %s (experiment %s) tracks job %s", run_id, experiment_id, conf["job_id"])


def _register_here(conf: dict[str, Any], run_id: str, output, result) -> dict[str, str] | None:
    """Registers the adapter the engine left in `output` (its `adapter_files`) in the train task;
    None (logged) when it cannot: the register task then does it, with its retries."""
    import shutil
    import tempfile
    from pathlib import Path

    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="qlora-adapter-") as tmp:
            for name in result.adapter_files:  # the adapter's files only (no checkpoints, log, metrics)
                shutil.copy2(Path(output) / name, Path(tmp) / name)
            registered = mlflow_runs.register_adapter(
                run_id, job_spec.registered_model_name(conf["user"], conf["output_name"]), conf["job_id"],
                adapter_uri=tmp, base_model_uri=s3.s3_uri(get_settings().s3_bucket, s3.model_prefix(conf["model_id"])))
    except Exception as exc:
        log.warning("could not register the adapter here, the register task will: %s: %s", type(exc).__name__, exc)
        return None
    log.info("registered %s version %s in %.1f s", registered["name"], registered["version"],
             time.monotonic() - started)
    return registered


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
        conf = _conf()
        training_params = job_spec.conf_params(conf)
        with _for_good():
            if problems := job_spec.validate_job_conf(conf):
                raise JobFailed("invalid training job: " + "; ".join(problems))
            model = load_catalog().get(conf["model_id"])
            report = job_inputs.read_dataset_report(conf["dataset_id"])
            if problems := job_spec.validate_job_request(model, report.get("tasks") or [], training_params):
                raise JobFailed("invalid training job: " + "; ".join(problems))
            resolved = job_spec.resolve_job_params(model, training_params).model_dump()
        log.info("job %s: %s on dataset %s (%s clips), params %s (checked in %.2f s)", conf["job_id"], model.id,
                 conf["dataset_id"], report.get("clip_count"), resolved, time.monotonic() - started)
        return resolved

    @task(queue="gpu", **TRANSIENT)
    def prepare(resolved: dict[str, Any]) -> dict[str, str]:
        conf = _conf()
        started = time.monotonic()
        warm_engine.ensure_started()  # the engine's imports run while the data downloads
        with _for_good():
            cached = job_inputs.fill_worker_cache(conf["model_id"], conf["dataset_id"])
        log.info("cache ready in %.1f s (%d model and %d dataset files downloaded): %s, %s",
                 time.monotonic() - started, cached.model_downloads, cached.data_downloads,
                 cached.model_dir, cached.data_dir)
        return {"model_dir": str(cached.model_dir), "data_dir": str(cached.data_dir)}

    @task(queue="gpu", pool="gpu", execution_timeout=TRAIN_EXECUTION_TIMEOUT, **TRAIN_RETRIES)
    def train(resolved: dict[str, Any], paths: dict[str, str]) -> dict[str, Any]:
        conf, settings = _conf(), get_settings()
        job_id, tracking = conf["job_id"], settings.mlflow_tracking_uri
        output = worker_paths.fresh_folder(worker_paths.output_dir(job_id))  # what this worker left is not trusted
        restored = resume.restore_checkpoint(job_id, output)  # a retry or a resumed job: its last upload
        adapter_uri = s3.s3_uri(settings.s3_bucket, s3.adapter_prefix(job_id))
        experiment = job_spec.mlflow_experiment_name(conf["user"])
        model_src, data_src = _sources(conf, paths)
        command = engine_jobs.train_command(
            model=model_src, data=data_src, task=load_catalog().get(conf["model_id"]).model_type, output=output,
            params=params.TrainingParams(**resolved), run_name=conf["output_name"], job_id=job_id,
            output_uri=adapter_uri, checkpoint_uri=s3.s3_uri(settings.s3_bucket, s3.checkpoints_prefix(job_id)),
            mlflow_uri=tracking, experiment=experiment, resume=restored is not None, evaluate=True)
        watcher = engine_jobs.ResultWatcher(  # publishes result.json as it changes: checkpoints listed live
            output, on_run=lambda r: _announce_run(conf, r.mlflow_run_id, r.mlflow_experiment_id),
            publish_key=s3.training_result_key(job_id))
        # the job's deadline and its stop request: the task stops its engine itself (only this task)
        control = TrainControl(job_id, get_current_context()["run_id"], conf.get("max_runtime_minutes"))
        if control.stopped_before_start():
            worker_paths.discard_job(job_id)
            reason = "training stopped by request before it started; no adapter was saved"
            engine_jobs.publish_not_started(job_id, reason)  # the API ends the job now, not at its kill deadline
            raise AirflowFailException(reason)
        log.info("running: %s", shlex.join(command))
        if tracking:
            mlflow_runs.import_ahead()  # the run's announcement then holds the engine's log back for no import

        # forked warm when this worker's server runs (or is importing: started by `prepare`); a
        # server started only now serves the next engine, this one starts cold beside it
        warm_wait_s = 0.0 if warm_engine.ensure_started() else warm_engine.READY_WAIT_S
        started = time.monotonic()
        with cache.kept_fresh(worker_paths.cache_entries(conf["model_id"], conf["dataset_id"])):
            ended = run_engine(command, engine_jobs.engine_env(job_id, bool(tracking)), on_tick=watcher.poll,
                               should_stop=control, warm_wait_s=warm_wait_s)
        log.info("training process exited with code %s after %.1f s", ended.code, time.monotonic() - started)
        if ended.stop_at is not None:
            log.info("the engine exited %.2f s after the stop request", time.monotonic() - ended.stop_at)
        result = watcher.poll()
        try:  # after the exit: the API's evidence that the training process is gone
            engine_jobs.publish_result(output, s3.training_result_key(job_id), ended)
        except Exception as exc:  # never hide the training's outcome (the API falls back on its kill deadline)
            log.warning("could not publish the engine's result: %s", exc)
        run_id, experiment_id = watcher.run_id, watcher.experiment_id
        if run_id is None and tracking and (found := mlflow_runs.find_job_run(experiment, job_id)):
            run_id, experiment_id = found  # it died before its manifest named the run
            _announce_run(conf, run_id, experiment_id)
        try:
            result = engine_jobs.training_outcome(ended, result, adapter_uri, deadline=control.deadline)
        except engine_jobs.TrainingEnded as exc:
            if run_id:
                mlflow_runs.end_run(run_id, exc.mlflow_status, str(exc))
            worker_paths.discard_job(job_id)
            raise AirflowFailException(str(exc)) from None
        except engine_jobs.EngineLost as exc:  # retried; the retry resumes the same MLflow run
            if run_id:
                mlflow_runs.end_run(run_id, exc.mlflow_status, str(exc))
            worker_paths.discard_job(job_id)
            log.warning("%s: Airflow retries this task, which resumes from the last uploaded checkpoint", exc)
            raise
        evaluation = engine_jobs.engine_evaluation(output)  # evaluated by the engine right after training
        log.info("adapter at %s (%d files)%s", result.output_uri, len(result.adapter_files),
                 "; evaluated by the engine" if evaluation else "; not evaluated yet: the evaluate task will")
        # an evaluated adapter is registered here, from the files on this worker, with the mlflow this
        # process imported already; else (or should it fail) by the register task
        registered = (_register_here(conf, run_id, output, result)
                      if evaluation and run_id and mlflow_runs.tracking_uri() else None)
        worker_paths.discard_job(job_id)  # the adapter is in S3: evaluate, on any gpu worker, reads it there
        return {"output_dir": str(output), "output_uri": result.output_uri, "mlflow_run_id": run_id,
                "mlflow_experiment_id": experiment_id, "train_seconds": round(time.monotonic() - started, 2),
                "evaluation": evaluation, "registered_model": registered}

    @task(queue="gpu", **TRANSIENT)
    def evaluate(trained: dict[str, Any], paths: dict[str, str]) -> dict[str, Any]:
        conf, settings = _conf(), get_settings()
        job_id, tracking = conf["job_id"], settings.mlflow_tracking_uri
        if trained.get("evaluation"):  # the train task's engine evaluated (and logged, uploaded) already
            worker_paths.discard_job(job_id)
            log.info("held-out metrics (evaluated by the training's engine): %s",
                     json.dumps(trained["evaluation"], indent=1))
            return trained["evaluation"]
        model_src, data_src = _sources(conf, paths)
        metrics_file = worker_paths.fresh_folder(worker_paths.evaluation_dir(job_id)) / METRICS_FILE
        command = engine_jobs.evaluate_command(
            model=model_src, adapter=worker_paths.engine_input(trained["output_dir"], trained["output_uri"],
                                                               marker=ADAPTER_MARKER),
            data=data_src, metrics_file=metrics_file, mlflow_uri=tracking, mlflow_run_id=trained["mlflow_run_id"],
            output_uri=trained["output_uri"])
        log.info("running: %s", shlex.join(command))
        with cache.kept_fresh(worker_paths.cache_entries(conf["model_id"], conf["dataset_id"])):
            ended = run_engine(command, engine_jobs.engine_env(job_id, bool(tracking)))
        try:
            metrics = engine_jobs.evaluation_outcome(ended, metrics_file)
        except JobFailed as exc:
            worker_paths.discard_job(job_id)
            raise AirflowFailException(str(exc)) from None
        worker_paths.discard_job(job_id)
        log.info("held-out metrics: %s", json.dumps(metrics, indent=1))
        return metrics

    @task(**TRANSIENT)
    def register(trained: dict[str, Any]) -> dict[str, Any]:
        conf = _conf()
        registered = trained.get("registered_model")  # the train task registered it already
        if registered:
            log.info("registered by the train task: %s version %s", registered["name"], registered["version"])
        elif trained.get("mlflow_run_id") and mlflow_runs.tracking_uri():
            registered = mlflow_runs.register_adapter(
                trained["mlflow_run_id"], job_spec.registered_model_name(conf["user"], conf["output_name"]),
                conf["job_id"], adapter_uri=trained["output_uri"],
                base_model_uri=s3.s3_uri(get_settings().s3_bucket, s3.model_prefix(conf["model_id"])))
        return {"output_path": trained["output_uri"], "registered_model": registered}

    @task
    def finalize(trained: dict[str, Any], metrics: dict[str, Any], registered: dict[str, Any]) -> dict[str, Any]:
        conf = _conf()
        result = {"job_id": conf["job_id"], "status": str(job_spec.JobState.COMPLETED),
                  "output_path": registered["output_path"], "metrics": metrics,
                  "mlflow_run_id": trained.get("mlflow_run_id"),
                  "registered_model": registered["registered_model"],
                  "train_seconds": trained.get("train_seconds")}
        log.info("job %s completed: %s", conf["job_id"], json.dumps(result))
        return result

    resolved = validate_inputs()
    paths = prepare(resolved)
    trained = train(resolved, paths)
    if MLflowRunLink is not None:
        trained.operator.operator_extra_links = (MLflowRunLink(),)
    metrics = evaluate(trained, paths)
    registered = register(trained)
    metrics >> registered  # only an evaluated adapter is registered
    finalize(trained, metrics, registered)


qlora_training_dag = qlora_training()
