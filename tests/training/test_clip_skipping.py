"""Issue 16: the engine starts training without a pass over the dataset; a clip that fails to
decode during training is skipped, logged, counted in MLflow and `result.json`, and fails the run
only past `QLORA_MAX_BAD_CLIP_FRACTION`; with the dataset's validation report it says how many
clips that report vouches for."""

from __future__ import annotations

import json

import pytest

from training.cli import main
from training.data.loader import epoch_batches, read_examples, split_examples
from training.data.synthetic import make_dataset
from training.result import EXIT_BAD_INPUT, EXIT_OK, RunStatus, read_result

SEED = 3


def _train_examples(data):
    return split_examples(read_examples(data, "video_classification"), "video_classification", SEED, 0.2).train


def _run(model, data, out, *extra):
    return main(["run", "--model", str(model), "--data", str(data), "--task", "video_classification",
                 "--output", str(out), "--batch-size", "2", "--lora-rank", "4", "--frames", "4",
                 "--seed", str(SEED), *extra])


def test_the_first_step_comes_before_any_other_clip_is_read(tmp_path, tiny_models, monkeypatch):
    """A bad clip outside the first batch, no bad clip allowed, one step: the run completes, so
    nothing but the first batch (and the held-out set evaluated at the end) was decoded."""
    monkeypatch.setenv("QLORA_MAX_BAD_CLIP_FRACTION", "0")
    data = make_dataset(tmp_path / "ds", 12, size=32, frames=4)
    train = _train_examples(data)
    first = set(epoch_batches(len(train), 2, SEED, 0)[0])
    victim = next(e for i, e in enumerate(train) if i not in first)
    victim.path.write_bytes(b"\0" * 100)
    out = tmp_path / "out"
    assert _run(tiny_models("flamingo", "video_classification"), data, out, "--max-steps", "1", "--epochs", "1",
                "--mlflow-uri", "") == EXIT_OK
    result = read_result(out)
    assert result.status == RunStatus.COMPLETED and result.step == 1 and result.skipped_clips == {}


@pytest.fixture
def sqlite_mlflow(tmp_path):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.MlflowClient(uri).create_experiment("clips", artifact_location=(tmp_path / "artifacts").as_uri())
    return uri


def test_a_bad_clip_is_skipped_reported_and_counted(tmp_path, tiny_models, monkeypatch, sqlite_mlflow):
    from mlflow import MlflowClient

    monkeypatch.setenv("QLORA_MAX_BAD_CLIP_FRACTION", "0.05")  # 1 of 20
    data = make_dataset(tmp_path / "ds", 20, size=32, frames=4)
    victim = _train_examples(data)[2]
    victim.path.write_bytes(b"\0" * 100)
    out = tmp_path / "out"
    assert _run(tiny_models("flamingo", "video_classification"), data, out, "--epochs", "2",
                "--mlflow-uri", sqlite_mlflow, "--experiment", "clips") == EXIT_OK
    result = read_result(out)
    assert result.status == RunStatus.COMPLETED and list(result.skipped_clips) == [victim.file_name]
    assert "cannot be decoded" in result.skipped_clips[victim.file_name]
    log = (out / "train.log").read_text()
    assert f"skipped clip {victim.file_name} (1 of 20 clips skipped, at most 1 allowed)" in log
    assert log.count("skipped clip") == 1  # counted once, not once per epoch
    run = MlflowClient(sqlite_mlflow).get_run(result.mlflow_run_id)
    assert run.data.metrics["skipped_clips"] == 1 and run.data.tags["skipped_clips"] == victim.file_name


def test_past_the_threshold_the_run_fails_naming_the_clips(tmp_path, tiny_models, monkeypatch, capsys):
    monkeypatch.setenv("QLORA_MAX_BAD_CLIP_FRACTION", "0.05")
    data = make_dataset(tmp_path / "ds", 20, size=32, frames=4)
    victims = _train_examples(data)[:2]
    for v in victims:
        v.path.write_bytes(b"\0" * 100)
    out = tmp_path / "out"
    assert _run(tiny_models("flamingo", "video_classification"), data, out, "--epochs", "1",
                "--mlflow-uri", "") == EXIT_BAD_INPUT
    result = read_result(out)
    assert result.status == RunStatus.FAILED and set(result.skipped_clips) == {v.file_name for v in victims}
    assert result.error.startswith("2 of 20 clips could not be decoded, more than the 5.0% allowed")
    assert all(v.file_name in result.error for v in victims)
    assert result.error in capsys.readouterr().err


def test_the_validation_report_vouches_for_its_clips(tmp_path, tiny_models):
    from training.s3 import dataset_report_beside

    data = make_dataset(tmp_path / "ds" / "files", 8, size=32, frames=4)  # as in the worker cache
    names = [e.file_name for e, _ in read_examples(data, "video_classification")]
    report = dataset_report_beside(data)  # where `prepare` puts it: ds/validation/report.json
    report.parent.mkdir(parents=True)
    report.write_text(json.dumps({"valid": True, "clips": [{"file_name": n} for n in names[:7]]}))
    out = tmp_path / "out"
    model = tiny_models("flamingo", "video_classification")
    assert _run(model, data, out, "--epochs", "1", "--mlflow-uri", "") == EXIT_OK  # found beside the files
    assert "7 of 8 clips decoded by the dataset's validation (trusted, not decoded before training), " \
           "1 not in its report" in (out / "train.log").read_text()
    report = tmp_path / "report.json"  # named with --clip-report
    report.write_text(json.dumps({"valid": False, "clips": []}))
    assert _run(model, data, tmp_path / "o2", "--epochs", "1", "--mlflow-uri", "",
                "--clip-report", str(report)) == EXIT_BAD_INPUT
    assert "is not the report of a valid dataset" in read_result(tmp_path / "o2").error
