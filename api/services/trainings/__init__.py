"""Training jobs, one module per job of the service (the routers and the reconcile loop call
them with a `context.TrainingContext`):

- `start_stop`: validate a request and start its `qlora_training` run; stop a job.
- `sync`: apply what Airflow and MLflow say to jobs (status, stage, progress, metrics) and
  settle the jobs whose run ended (the job lifecycle is drawn there).
- `live_state`: the list path's process-wide caches of two bulk reads, applied to a list.
- `reconcile`: the background pass over every user's unsettled jobs.
- `reads`: one job, the list, the detail's log tail and ETA; `task_logs`: log tail, failure reason.

The response bodies are built from the jobs by `api.schemas.trainings`.
"""
