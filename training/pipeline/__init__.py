"""The jobs of the Airflow DAGs' tasks, as plain importable code (no Airflow import here).

The DAG files in `dags/` hold the task graph, the Params and the docs; each task body calls one
of these and turns `errors.JobFailed` into Airflow's `AirflowFailException` (no retry). Any
other exception fails the task the ordinary way (retried where the task allows).

* `errors`: `JobFailed`, and S3 errors sorted into transient (retry) or not.
* `job_inputs`: a job's dataset report and its model and dataset in the worker's cache.
* `worker_paths`: the worker's folders of a job (engine output, evaluation, cache entries).
* `engine_process`: running the engine as a child process (log streaming, stop forwarding,
  no orphan when the task's supervisor dies).
* `engine_jobs`: the engine's `run` and `evaluate` as the DAG uses them: command lines, the
  result manifest watched while it trains, what an exit means for the job.
* `mlflow_runs`: the job's MLflow run: tags, ending a run the engine could not end, the
  registered model version.
* `dataset_intake`: the `dataset_validation` DAG's extraction, validation and report.
"""
