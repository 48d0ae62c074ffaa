"""What may end a training early, decided by the train task itself (`run_engine`'s
`should_stop`): the job's deadline (`max_runtime_minutes` of the run's conf) and a stop request
(`POST /v1/trainings/{id}/stop` writes `training.s3.training_stop_key`, naming the Airflow run it
stops). The task asks its engine to stop (SIGTERM: it saves and uploads its partial adapter) and
then fails; a stop request that arrives after the engine finished changes nothing, so a stop
that loses the race to the end of training leaves the job completed, and evaluate/register are
never killed by a stop."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from training import s3
from training.settings import get_settings

log = logging.getLogger(__name__)

#: how often the stop request is looked for in S3 while the engine trains
STOP_POLL_S = 2.0


def stop_request(job_id: str, run_id: str) -> dict[str, Any] | None:
    """The job's stop request when it is for this Airflow run (a resumed job's new run is not
    stopped by the stop of an earlier one); None when there is none (or S3 cannot say now)."""
    try:
        body = s3.client().get_object(Bucket=get_settings().s3_bucket, Key=s3.training_stop_key(job_id))["Body"]
        request = json.loads(body.read())
    except Exception as exc:  # noqa: BLE001 - missing (the usual case) or unreadable: not stopped
        if not s3.is_missing(exc):
            log.warning("cannot read the stop request of job %s: %s", job_id, exc)
        return None
    if not isinstance(request, dict) or request.get("run_id") not in (None, run_id):
        return None
    return request


class TrainControl:
    """`should_stop` for the train task's `run_engine`: the reason to stop, or None."""

    def __init__(self, job_id: str, run_id: str, max_runtime_minutes: int | None, *,
                 clock: Callable[[], float] = time.monotonic, poll_s: float = STOP_POLL_S,
                 read_stop: Callable[[str, str], dict | None] = stop_request) -> None:
        self.job_id, self.run_id = job_id, run_id
        self.max_runtime_minutes = max_runtime_minutes
        self._clock, self._poll_s, self._read_stop = clock, poll_s, read_stop
        self.started = clock()
        self._next_poll = self.started
        #: set once the deadline passed: the reason the job fails
        self.deadline: str | None = None
        self.stop_requested = False

    def __call__(self) -> str | None:
        now = self._clock()
        if self.max_runtime_minutes and now - self.started >= self.max_runtime_minutes * 60:
            self.deadline = (f"the training ran past its max_runtime_minutes ({self.max_runtime_minutes} min) and "
                             "was stopped")
            return self.deadline
        if now >= self._next_poll:
            self._next_poll = now + self._poll_s
            if self._read_stop(self.job_id, self.run_id) is not None:
                self.stop_requested = True
                return "a stop was requested for this job"
        return None

    def stopped_before_start(self) -> bool:
        """A stop request for this run is already there (the task need not start the engine)."""
        self.stop_requested = self._read_stop(self.job_id, self.run_id) is not None
        return self.stop_requested
