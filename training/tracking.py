"""MLflow tracking of one training (active when `--mlflow-uri` or `MLFLOW_TRACKING_URI` is set).

One run per training (a resumed training continues the same run): every parameter, tags
(job_id, dataset, base_model, task), per-step loss / learning_rate / samples_per_second /
progress, per-epoch eval metrics, system metrics, the log file and the adapter as an artifact.
(Registering a model version is the `qlora_training` DAG's `register` task's job.)
Metrics go into a queue that a background thread sends with
`log_batch` about once a second, so logging never waits on the network inside the loop. The
same thread samples system metrics (MLflow's CPU/memory/disk/network/GPU samplers) every 10 s
and once more at the end, so even a short run has them.

MLflow down for a while (a restart, a network cut): training goes on; what could not be sent
stays queued, in order, and goes as soon as the server answers again (it keeps each metric's
own step and timestamp, so the curves are whole, only late). `flush()` (before a checkpoint is
listed) waits for the queue at most `flush_timeout_s`, and the end of a run waits at most
`end_timeout_s` for it; beyond `MAX_PENDING` unsent metrics the oldest are dropped (logged).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from pathlib import Path

log = logging.getLogger("training")
#: unsent metrics kept while MLflow does not answer (~10 per step: hours of training); beyond
#: it the oldest go (a warning says how many)
MAX_PENDING = 200_000
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
    def __init__(self, uri: str, flush_interval: float = 1.0, system_interval: float = 10.0,
                 flush_timeout_s: float = 15.0, end_timeout_s: float = 120.0) -> None:
        from mlflow import MlflowClient

        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        self.flush_interval, self.system_interval = flush_interval, system_interval
        self.flush_timeout_s, self.end_timeout_s = flush_timeout_s, end_timeout_s
        self._step = 0
        self._queue: queue.Queue = queue.Queue()
        #: metrics taken from the queue but not yet accepted by MLflow (oldest first); only the
        #: sending thread (under `_sending`) touches it
        self._pending: list = []
        self._sending = threading.Lock()
        #: metrics queued so far / sent so far (or dropped): `flush` waits for the second to
        #: reach the first
        self._queued = self._done = 0
        self._progress = threading.Condition()
        self._wake = threading.Event()
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
        with self._progress:
            for key, value in metrics.items():
                self._queue.put((key, float(value), now, step))
                self._queued += 1

    def _sent(self, count: int) -> None:
        with self._progress:
            self._done += count
            self._progress.notify_all()

    def _drain(self) -> bool:
        """Sends what is queued (oldest first, 1000 a request: MLflow's limit); what MLflow does
        not take stays for the next call. True when nothing is left unsent."""
        from mlflow.entities import Metric

        with self._sending:
            while True:
                try:
                    key, value, ts, step = self._queue.get_nowait()
                except queue.Empty:
                    break
                self._pending.append(Metric(key, value, ts, step))
            if len(self._pending) > MAX_PENDING:
                dropped = len(self._pending) - MAX_PENDING
                del self._pending[:dropped]
                self._sent(dropped)
                log.warning("mlflow still does not answer: the oldest %d unsent metrics were dropped", dropped)
            while self._pending:
                batch = self._pending[:1000]
                try:
                    self.client.log_batch(self.run_id, metrics=batch)
                except Exception as exc:  # down or refusing: kept, sent again next time
                    log.warning("mlflow metrics not logged yet (%d waiting, sent once it answers): %s",
                                len(self._pending), exc)
                    return False
                del self._pending[:len(batch)]
                self._sent(len(batch))
            return True

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
        while not self._stop.is_set():
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            if time.monotonic() - last_system >= self.system_interval:
                self._log_system()
                last_system = time.monotonic()
            self._drain()
        self._log_system()  # so that even a run shorter than the interval has a sample
        deadline = time.monotonic() + self.end_timeout_s
        while not self._drain() and time.monotonic() < deadline:  # MLflow down at the end: wait a while
            time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
        if self._pending or not self._queue.empty():
            log.warning("mlflow did not answer for %.0f s at the end of the run: %d metrics not logged",
                        self.end_timeout_s, len(self._pending) + self._queue.qsize())

    def flush(self, timeout: float | None = None) -> bool:
        """Has what is queued now sent by the background thread; waits at most `timeout`
        (default `flush_timeout_s`): MLflow down never holds the training longer. True when it
        all went."""
        if self._thread is None or not self._thread.is_alive():
            return self._drain()
        with self._progress:
            target = self._queued
            self._wake.set()
            return self._progress.wait_for(lambda: self._done >= target,
                                           self.flush_timeout_s if timeout is None else timeout)

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
        self._wake.set()
        if self._thread:
            self._thread.join(timeout=self.end_timeout_s + 10)
        self.client.set_terminated(self.run_id, status=status)


def make_tracker(uri: str | None) -> NullTracker:
    return MlflowTracker(uri) if uri else NullTracker()
