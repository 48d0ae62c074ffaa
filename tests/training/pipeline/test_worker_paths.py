"""A job's folders on a worker (`training.pipeline.worker_paths`): all under QLORA_CACHE_DIR,
the engine gets the local folder when the worker has it, and a job's folders go when done."""

from __future__ import annotations

from training.pipeline import worker_paths


def test_a_jobs_folders_live_in_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("QLORA_CACHE_DIR", str(tmp_path))
    assert worker_paths.output_dir("job-1") == tmp_path / "trainings" / "job-1" / "output"
    assert worker_paths.evaluation_dir("job-1") == tmp_path / "trainings" / "job-1" / "evaluation"
    assert worker_paths.cache_entries("m", "d") == (tmp_path / "models" / "m", tmp_path / "datasets" / "d")


def test_the_engine_reads_the_local_folder_when_there_is_one(tmp_path):
    uri = "s3://qlora/trainings/job-1/adapter/"
    assert worker_paths.engine_input(tmp_path, uri) == str(tmp_path)
    assert worker_paths.engine_input(tmp_path / "not-here", uri) == uri
    assert worker_paths.engine_input(None, uri) == uri
    assert worker_paths.engine_input(tmp_path, uri, marker="adapter_config.json") == uri  # incomplete
    (tmp_path / "adapter_config.json").write_text("{}")
    assert worker_paths.engine_input(tmp_path, uri, marker="adapter_config.json") == str(tmp_path)


def test_fresh_folders_and_discarding_a_job(tmp_path, monkeypatch):
    monkeypatch.setenv("QLORA_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("QLORA_S3_BUCKET", "bkt")
    output = worker_paths.output_dir("job-1")
    (output / "checkpoints" / "step-3").mkdir(parents=True)
    (output / "adapter_config.json").write_text("{}")
    assert list(worker_paths.fresh_folder(output).iterdir()) == []  # a new training starts empty

    (output / "checkpoints" / "step-3").mkdir(parents=True)
    (output / "adapter_config.json").write_text("{}")
    read_from_s3 = tmp_path / "s3" / "bkt" / "trainings" / "job-1" / "adapter"  # training.s3.local_folder's copy
    read_from_s3.mkdir(parents=True)
    other_job = worker_paths.output_dir("job-2")
    other_job.mkdir(parents=True)
    model, _ = worker_paths.cache_entries("m", "d")
    model.mkdir(parents=True)
    worker_paths.discard_job("job-1")
    assert not (tmp_path / "trainings" / "job-1").exists() and not read_from_s3.exists()
    assert other_job.is_dir() and model.is_dir()  # other jobs and the cache's entries stay
    worker_paths.discard_job("job-1")  # nothing left: no error
