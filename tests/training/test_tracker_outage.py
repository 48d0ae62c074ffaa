"""The engine's MLflow tracker when the server does not answer for a while: training never waits
on it longer than `flush_timeout_s`, nothing is lost, and the metrics arrive (late, with their
own steps and timestamps) once it answers again. The real-server outage is
tests/e2e/test_service_faults.py; this is the tracker's side with a client that refuses."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

from training.tracking import MlflowTracker


class FlakyClient:
    """MlflowClient's calls the tracker makes; `log_batch` raises while `down` is set."""

    def __init__(self) -> None:
        self.down = threading.Event()
        self.logged: list = []
        self.refused = 0
        self.terminated: str | None = None

    def get_experiment_by_name(self, name):
        return None

    def create_experiment(self, name):
        return "1"

    def set_experiment_tag(self, *args):
        pass

    def create_run(self, experiment_id, run_name=None, tags=None):
        return SimpleNamespace(info=SimpleNamespace(run_id="run-1"))

    def log_batch(self, run_id, metrics=(), params=(), tags=()):
        if self.down.is_set():
            self.refused += 1
            raise ConnectionError("Connection refused")
        self.logged += list(metrics)

    def set_terminated(self, run_id, status):
        self.terminated = status


def _tracker(client: FlakyClient, **kwargs) -> MlflowTracker:
    tracker = MlflowTracker("http://127.0.0.1:9", flush_interval=0.05, **kwargs)
    tracker.client = client
    tracker.start(experiment="e", run_name="r", params={}, tags={}, system_metrics=False)
    return tracker


def test_metrics_logged_while_mlflow_is_down_arrive_after_it_is_back():
    client = FlakyClient()
    tracker = _tracker(client, flush_timeout_s=0.5)
    tracker.log_metrics({"loss": 1.0}, 1)
    assert tracker.flush() is True
    client.down.set()
    for step in range(2, 6):
        tracker.log_metrics({"loss": 1.0 / step}, step)
    started = time.monotonic()
    assert tracker.flush() is False  # the training goes on after flush_timeout_s
    assert time.monotonic() - started < 2
    assert client.refused >= 1 and [m.step for m in client.logged] == [1]
    client.down.clear()
    assert tracker.flush(timeout=5) is True
    tracker.end()
    assert [(m.key, m.step) for m in client.logged] == [("loss", s) for s in range(1, 6)]
    assert client.terminated == "FINISHED"


def test_the_end_of_a_run_waits_for_mlflow_to_come_back():
    client = FlakyClient()
    tracker = _tracker(client, flush_timeout_s=0.1, end_timeout_s=10)
    client.down.set()
    tracker.log_metrics({"loss": 0.5, "progress": 1.0}, 7)
    threading.Timer(1.0, client.down.clear).start()
    tracker.end()
    assert sorted((m.key, m.step) for m in client.logged) == [("loss", 7), ("progress", 7)]
