"""Airflow plugin: an operator extra link from the QLoRA `train` task to its MLflow run.

The train task pushes the MLflow run id (XCom `mlflow_run_id`) and experiment id as soon as
the run exists. Airflow 3 computes operator links on the worker when the task ends and keeps
the URL in XCom under `xcom_key`; the train task also pushes that URL itself right away, so
the button works while the run trains and after a stop or a kill.

The MLflow UI address is `$QLORA_MLFLOW_UI_URL`, else `$MLFLOW_TRACKING_URI` when it is an
http(s) URL (the tracking server serves the UI): `training.settings`.
"""

from __future__ import annotations

from typing import Any

from airflow.plugins_manager import AirflowPlugin
from airflow.sdk import BaseOperatorLink

from training import job_spec
from training.settings import get_settings


class MLflowRunLink(BaseOperatorLink):
    """`MLflow run`: the task's run in the MLflow UI (empty until the run exists)."""

    name = "MLflow run"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        from airflow.sdk.execution_time.xcom import XCom

        base = get_settings().mlflow_ui_base_url
        run_id = XCom.get_value(ti_key=ti_key, key=job_spec.XCOM_MLFLOW_RUN_ID)
        experiment_id = XCom.get_value(ti_key=ti_key, key=job_spec.XCOM_MLFLOW_EXPERIMENT_ID)
        if not (base and run_id and experiment_id):
            return ""
        return job_spec.mlflow_run_ui_url(base, str(experiment_id), str(run_id))


class QloraMlflowPlugin(AirflowPlugin):
    name = "qlora_mlflow"
    operator_extra_links = [MLflowRunLink()]
