"""The dataset_validation DAG's work (`training.pipeline.dataset_intake`) without S3: what a
rejection carries and says. Extraction and validation against real S3 run in
tests/dags/test_dataset_validation_dag.py."""

from __future__ import annotations

import pytest

from training.pipeline import dataset_intake
from training.pipeline.errors import JobFailed


def test_a_key_outside_the_datasets_folder_is_rejected_with_a_report(tmp_path, monkeypatch):
    monkeypatch.setenv("QLORA_CACHE_DIR", str(tmp_path))
    with pytest.raises(dataset_intake.DatasetRejected) as raised:
        dataset_intake.extract("d1", "datasets/other/x.zip")
    report = raised.value.report
    assert (report["dataset_id"], report["valid"]) == ("d1", False)
    assert report["errors"] == ["s3_key 'datasets/other/x.zip' is not under datasets/d1/"]
    assert str(raised.value) == "dataset is invalid: s3_key 'datasets/other/x.zip' is not under datasets/d1/"
    assert isinstance(raised.value, JobFailed)  # no retry


def test_the_message_names_the_first_five_problems():
    errors = [f"clip{i}.mp4: unreadable" for i in range(7)]
    rejected = dataset_intake.DatasetRejected({"dataset_id": "d1", "valid": False, "errors": errors})
    assert str(rejected) == "dataset is invalid: " + "; ".join(errors[:5])


def test_labels_become_metric_names():
    assert dataset_intake.metric_name("red/blue square ü") == "red_blue_square_ü"
    assert len(dataset_intake.metric_name("x" * 300)) == 100
    assert dataset_intake.work_folder("d1").name == "d1"
