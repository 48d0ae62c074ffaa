"""A stop that lands while another request is between its read of the job and its read of
Airflow (on the session's real PostgreSQL). The stop commits its request, then marks the run
(nothing trained yet) failed; the other request loaded the job before the stop and reads the
failed run after it. The job must end `stopped`, not `failed` (bench.load saw 12 of 55 jobs
stopped right after their start end `failed` while Airflow answered slowly)."""

from __future__ import annotations

import pytest

from api.clients.airflow import DagRun
from api.models import TrainingJob
from api.models.base import utcnow
from api.services.trainings.context import TrainingContext, run_id
from api.services.trainings.sync import apply_run
from tests.api.test_trainings import FakeTrainingAirflow, make_dataset, start
from tests.api.test_trainings import mlflow  # noqa: F401  (fixture)
from tests.api.test_trainings import settings  # noqa: F401  (fixture)


@pytest.fixture
def airflow() -> FakeTrainingAirflow:
    return FakeTrainingAirflow()


@pytest.mark.parametrize("stop_first", [True, False], ids=["stop-then-failed-run", "run-failed-on-its-own"])
def test_a_reader_holding_the_job_from_before_the_stop_settles_it_stopped(client, auth, airflow, mlflow,  # noqa: F811
                                                                          settings, stop_first) -> None:  # noqa: F811
    job_id = start(client, auth, make_dataset(client, auth))
    with client.app.state.sessionmaker() as reader:
        job = reader.get(TrainingJob, job_id)
        assert job.stop_requested_at is None  # loaded before the stop
        if stop_first:
            stopped = client.post(f"/v1/trainings/{job_id}/stop", headers=auth)
            assert stopped.status_code == 202, stopped.text
            assert airflow.states[run_id(job)] == "failed"  # the stop failed the run: nothing had trained
        else:
            airflow.states[run_id(job)] = "failed"  # a real failure, no stop anywhere
        ctx = TrainingContext(reader, None, airflow, None, settings)
        apply_run(ctx, job, DagRun(ctx.dag_id, run_id(job), "failed"), None, utcnow())
        reader.commit()
    detail = client.get(f"/v1/trainings/{job_id}", headers=auth).json()
    assert detail["status"] == ("stopped" if stop_first else "failed"), detail
