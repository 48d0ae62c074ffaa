"""A job's MLflow run as the DAG's tasks keep it: the engine creates the run (experiment
`qlora/{user}`, run name `output_name`) and logs into it; the tasks add the job's tags, end a run
the engine could not end (killed, lost worker), and register the adapter as a version of the
registered model `{user}~{output_name}` (`job_spec.registered_model_name`; the one place that
registers), an MLflow pyfunc model (`training.mlflow_model`).

The tracking server is `MLFLOW_TRACKING_URI` (`training.settings`); mlflow is imported only
when a function here runs.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

from training import job_spec
from training.settings import get_settings

log = logging.getLogger(__name__)

#: the thread `import_ahead` started, while it imports: mlflow imported from two threads at once
#: fails with "partially initialized module 'mlflow.tracking.fluent'" (circular imports), so
#: every function here that imports mlflow waits for it first (`_mlflow_imported`)
_ahead: threading.Thread | None = None

#: the artifact folder of the run that holds the adapter (logged by the engine)
ADAPTER_ARTIFACT = "adapter"


def tracking_uri() -> str | None:
    return get_settings().mlflow_tracking_uri


def _mlflow_imported() -> None:
    """Returns once no other thread of this process is importing mlflow (`import_ahead`)."""
    ahead = _ahead
    if ahead is not None and ahead is not threading.current_thread():
        ahead.join()


def client():
    _mlflow_imported()
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri())


def import_ahead() -> None:
    """Imports mlflow's client (seconds of CPU, tens under load) in a background thread, so that
    the train task's first MLflow call (made in the loop that forwards the engine's log) does not
    hold the log back (issue 16). The functions here wait for it rather than import mlflow
    beside it."""
    global _ahead

    def load() -> None:
        try:
            from mlflow.entities import RunTag  # noqa: F401
            from mlflow.tracking import MlflowClient  # noqa: F401
        except Exception as exc:  # the calls themselves import (and report) what is missing
            log.debug("import ahead: %s", exc)

    if _ahead is None:
        _ahead = threading.Thread(target=load, daemon=True, name="import-ahead")
        _ahead.start()


def job_tags(conf: Mapping[str, Any], airflow_run_id: str) -> dict[str, str]:
    """The tags that tie the run to its job (the engine knows only the job id)."""
    return {"job_id": conf["job_id"], "user": conf["user"], "mlflow.user": conf["user"],
            "dataset_id": conf["dataset_id"], "dataset": conf["dataset_id"], "model_id": conf["model_id"],
            "output_name": conf["output_name"], "airflow_dag_id": job_spec.DAG_ID, "airflow_run_id": airflow_run_id}


def log_dataset_input(run_id: str, dataset_id: str, source_uri: str, digest: str | None = None) -> bool:
    """The job's dataset as the run's MLflow input (context `training`): named by its id, its
    source the `s3://` prefix of its extracted files, its digest `digest`, else the ETag of its
    validation report (else a hash of the id). False (logged) when MLflow cannot: never fails
    a training."""
    import hashlib
    import json

    try:
        _mlflow_imported()
        from mlflow.entities import Dataset, DatasetInput, InputTag

        if digest is None:
            from training import s3

            try:
                head = s3.client().head_object(Bucket=get_settings().s3_bucket, Key=s3.dataset_report_key(dataset_id))
                digest = str(head.get("ETag", "")).strip('"') or None
            except Exception:  # the digest only labels the input
                digest = None

        dataset = Dataset(name=dataset_id, digest=(digest or hashlib.sha256(dataset_id.encode()).hexdigest())[:36],
                          source_type="s3", source=json.dumps({"uri": source_uri}))
        client().log_inputs(run_id, datasets=[DatasetInput(dataset, [InputTag("mlflow.data.context", "training")])])
        return True
    except Exception as exc:
        log.warning("could not log the dataset of MLflow run %s: %s", run_id, exc)
        return False


def run_ui_url(experiment_id: str, run_id: str) -> str | None:
    """The run in the MLflow UI (`QLORA_MLFLOW_UI_URL`, else the tracking server), or None when
    there is no UI to link to."""
    base = get_settings().mlflow_ui_base_url
    return job_spec.mlflow_run_ui_url(base, experiment_id, run_id) if base else None


def tag_run(run_id: str, tags: Mapping[str, str]) -> bool:
    """Sets `tags` on the run; False (logged) when MLflow cannot: tracking extras never fail a
    training."""
    try:
        _mlflow_imported()
        from mlflow.entities import RunTag

        client().log_batch(run_id, tags=[RunTag(key, str(value)) for key, value in tags.items()])  # one request
        return True
    except Exception as exc:
        log.warning("could not tag MLflow run %s: %s", run_id, exc)
        return False


def find_job_run(experiment_name: str, job_id: str) -> tuple[str, str] | None:
    """(run id, experiment id) of the latest run tagged with `job_id` in the experiment; for a
    run whose id the engine had no time to report. None when there is none (or MLflow fails)."""
    try:
        mlflow = client()
        experiment = mlflow.get_experiment_by_name(experiment_name)
        if experiment is None:
            return None
        runs = mlflow.search_runs([experiment.experiment_id], f"tags.job_id = '{job_id}'",
                                  order_by=["attributes.start_time DESC"], max_results=1)
        return (runs[0].info.run_id, experiment.experiment_id) if runs else None
    except Exception as exc:
        log.warning("could not find the MLflow run of job %s: %s", job_id, exc)
        return None


def end_run(run_id: str, status: str, reason: str) -> bool:
    """Marks the run ended with `status` (FAILED, KILLED) and tag `failure_reason` when it is
    still running: the engine could not end it (killed, crashed, lost its worker). True when
    it was ended here. Never raises (the real failure must not hide behind a tracking error)."""
    try:
        mlflow = client()
        if mlflow.get_run(run_id).info.status not in ("RUNNING", "SCHEDULED"):
            return False
        mlflow.set_tag(run_id, "failure_reason", reason[:5000])
        mlflow.set_terminated(run_id, status=status)
        return True
    except Exception as exc:
        log.warning("could not end MLflow run %s: %s", run_id, exc)
        return False


def register_adapter(run_id: str, name: str, job_id: str, adapter_uri: str | None = None,
                     base_model_uri: str | None = None) -> dict[str, str]:
    """The version of registered model `name` made from the run's adapter: created here, or the
    one a previous try created (a retry registers nothing twice). With `adapter_uri` and
    `base_model_uri` (the DAG's case) the version is an MLflow pyfunc model
    (`training.mlflow_model`: `mlflow.pyfunc.load_model("models:/NAME/VERSION")` predicts clips),
    logged as the run's `model` artifact; without them its source is the run's bare `adapter`
    artifact. Returns `{"name", "version"}`; MLflow errors propagate (the task retries)."""
    _mlflow_imported()
    from mlflow.exceptions import MlflowException

    mlflow = client()
    existing = mlflow.search_model_versions(f"run_id = '{run_id}'")
    if existing:
        version = existing[0]
        log.info("the adapter of run %s is already registered as %s version %s", run_id, version.name,
                 version.version)
        return {"name": version.name, "version": str(version.version)}
    try:
        mlflow.create_registered_model(name, description="QLoRA adapters of one user's output name "
                                       "(`{user}~{output_name}`); each version loads with mlflow.pyfunc.load_model")
    except MlflowException as exc:
        if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code):
            raise
    artifact = ADAPTER_ARTIFACT
    if adapter_uri and base_model_uri:
        log_pyfunc_model(run_id, adapter_uri, base_model_uri)
        from training.mlflow_model import MODEL_ARTIFACT

        artifact = MODEL_ARTIFACT
    source = f"{mlflow.get_run(run_id).info.artifact_uri.rstrip('/')}/{artifact}"
    version = mlflow.create_model_version(name, source=source, run_id=run_id, tags={"job_id": job_id})
    tag_run(run_id, {"registered_model_version": str(version.version), "registered_model_name": name})
    log.info("registered %s version %s (source %s)", name, version.version, source)
    return {"name": name, "version": str(version.version)}


def log_pyfunc_model(run_id: str, adapter_uri: str, base_model_uri: str) -> None:
    """Saves the adapter at `adapter_uri` (an `s3://` prefix, fetched into a temp folder, or a
    folder) as a pyfunc model (`training.mlflow_model`) and logs it as the run's `model` artifact."""
    import tempfile
    from pathlib import Path

    from training import mlflow_model, s3

    with tempfile.TemporaryDirectory(prefix="qlora-model-") as tmp:
        adapter = Path(adapter_uri)
        if adapter_uri.startswith("s3://"):
            adapter = Path(tmp) / "adapter"
            bucket, key = s3.split_s3_uri(adapter_uri)
            found, _ = s3.download_prefix(s3.client(), bucket, key.rstrip("/") + "/", adapter)
            if not found:
                raise RuntimeError(f"no adapter under {adapter_uri}")
        folder = mlflow_model.save(Path(tmp) / "model", adapter, base_model_uri)
        client().log_artifacts(run_id, str(folder), mlflow_model.MODEL_ARTIFACT)
        log.info("logged the pyfunc model of %s (base %s) to run %s", adapter_uri, base_model_uri, run_id)
