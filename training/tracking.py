"""MLflow tracking of one training (active when `--mlflow-uri` or `MLFLOW_TRACKING_URI` is set).

One run per training (a resumed training continues the same run): every parameter, tags
(job_id, dataset, base_model, task), per-step loss / learning_rate / samples_per_second /
progress, per-epoch eval metrics, system metrics, the log file and the adapter as an artifact.
(Registering a model version is the `qlora_training` DAG's `register` task's job.)
Metrics go into a queue that a background thread sends with
`log_batch` about once a second, so logging never waits on the network inside the loop. The
same thread samples system metrics (MLflow's CPU/memory/disk/network/GPU samplers) every 10 s
and once more at the end, so even a short run has them.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from pathlib import Path

log = logging.getLogger("training")
#: the MLflow UI opens an experiment with this tag in its model-training view (not GenAI's)
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"


class NullTracker:
    run_id: str | None = None
    experiment_id: str | None = None

    def start(self, **_) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...
    def flush(self) -> None: ...
    def set_tags(self, tags: dict[str, str]) -> None: ...
    def log_artifacts(self, folder: Path, artifact_path: str) -> None: ...
    def log_file(self, path: Path, artifact_path: str | None = None) -> None: ...
    def end(self, status: str = "FINISHED") -> None: ...


class MlflowTracker(NullTracker):
    def __init__(self, uri: str, flush_interval: float = 1.0, system_interval: float = 10.0) -> None:
        from mlflow import MlflowClient

        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        self.flush_interval, self.system_interval = flush_interval, system_interval
        self._step = 0
        self._queue: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._monitor = None
        self.run_id = None
        self.experiment_id = None

    def start(self, *, experiment: str, run_name: str | None, params: dict[str, str], tags: dict[str, str],
              run_id: str | None = None, system_metrics: bool = True) -> None:
        from mlflow.entities import Param, RunTag

        if run_id:  # a resumed training: the same run, its metrics continue from the checkpoint's step
            self.run_id = run_id
            self.experiment_id = self.client.get_run(run_id).info.experiment_id
            self.client.update_run(run_id, status="RUNNING")
            for stale in ("failure_reason", "stop_reason", "stopped_at_step"):  # of the try that ended
                try:
                    self.client.delete_tag(run_id, stale)
                except Exception:  # not set: nothing to delete
                    pass
        else:
            exp = self.client.get_experiment_by_name(experiment)
            exp_id = exp.experiment_id if exp else self.client.create_experiment(experiment)
            if exp is None or EXPERIMENT_KIND_TAG not in exp.tags:  # else the UI opens it as GenAI runs
                try:
                    self.client.set_experiment_tag(exp_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
                except Exception as exc:  # e.g. no permission on an experiment made by another account
                    log.warning("experiment %s not marked as model training: %s", exp_id, exc)
            run = self.client.create_run(exp_id, run_name=run_name, tags={k: v for k, v in tags.items() if v})
            self.run_id, self.experiment_id = run.info.run_id, exp_id
            self.client.log_batch(self.run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()],
                                  tags=[RunTag("mlflow.source.name", "python -m training run")])
        if system_metrics:
            try:
                from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

                # only its CPU/disk/network/GPU samplers; sampling and sending happen in our thread
                self._monitor = SystemMetricsMonitor(self.run_id, tracking_uri=self.uri)
                self._monitor.collect_metrics()  # primes psutil's CPU percentage
            except Exception as exc:  # psutil missing or the like: not worth failing a training
                log.warning("system metrics disabled: %s", exc)
                self._monitor = None
        self._thread = threading.Thread(target=self._flush_loop, name="mlflow-metrics", daemon=True)
        self._thread.start()
        log.info("mlflow run %s at %s", self.run_id, self.uri)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self._step = step
        now = int(time.time() * 1000)
        for key, value in metrics.items():
            self._queue.put((key, float(value), now, step))

    def _drain(self) -> None:
        from mlflow.entities import Metric

        batch = []
        while True:
            try:
                key, value, ts, step = self._queue.get_nowait()
            except queue.Empty:
                break
            batch.append(Metric(key, value, ts, step))
        for start in range(0, len(batch), 1000):  # MLflow's per-request limit
            try:
                self.client.log_batch(self.run_id, metrics=batch[start:start + 1000])
            except Exception as exc:
                log.warning("mlflow metrics not logged: %s", exc)

    def _log_system(self) -> None:
        """One sample of MLflow's system samplers, queued as `system/...` at the current step."""
        if self._monitor is None:
            return
        try:
            self._monitor.collect_metrics()
            self.log_metrics({f"system/{k}": v for k, v in self._monitor.aggregate_metrics().items()}, self._step)
            for monitor in self._monitor.monitors:
                monitor.clear_metrics()
        except Exception as exc:
            log.warning("system metrics not sampled: %s", exc)
            self._monitor = None

    def _flush_loop(self) -> None:
        last_system = time.monotonic()
        while not self._stop.wait(self.flush_interval):
            if time.monotonic() - last_system >= self.system_interval:
                self._log_system()
                last_system = time.monotonic()
            self._drain()
        self._log_system()  # so that even a run shorter than the interval has a sample
        self._drain()

    def flush(self) -> None:
        self._drain()

    def set_tags(self, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, str(value))

    def log_artifacts(self, folder: Path, artifact_path: str) -> None:
        self.client.log_artifacts(self.run_id, str(folder), artifact_path)

    def log_file(self, path: Path, artifact_path: str | None = None) -> None:
        if Path(path).is_file():
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def end(self, status: str = "FINISHED") -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)
        self.client.set_terminated(self.run_id, status=status)


def make_tracker(uri: str | None) -> NullTracker:
    return MlflowTracker(uri) if uri else NullTracker()
