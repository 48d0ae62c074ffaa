"""The dataset validation DAG: it parses cleanly, stays light at parse time, and really runs
(`dag.test`, no scheduler) against a real S3 server (SeaweedFS).

Airflow runs in subprocesses with their own AIRFLOW_HOME (a migrated temp SQLite database), so
the configuration of other tests in the session cannot leak in or out."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from tests.dags.airflow_harness import MARK, REPO, run_python as _python

from training.s3 import dataset_files_prefix, dataset_report_key, dataset_upload_key
from training.data.synthetic import make_dataset, zip_folder

DAG_FILE = REPO / "dags" / "dataset_validation.py"
HEAVY = ("boto3", "botocore", "pandas", "numpy", "great_expectations", "av", "mlflow", "torch",
         "transformers", "training.data.validation", "training.data.video_probe")


def test_dag_file_parses_with_params(airflow_env):
    result = _python(f"""
        import json
        from airflow.dag_processing.dagbag import DagBag
        bag = DagBag(dag_folder={str(DAG_FILE)!r})
        dag = bag.dags.get("dataset_validation")
        print({MARK!r} + json.dumps({{
            "errors": {{k: str(v) for k, v in bag.import_errors.items()}},
            "dag_ids": sorted(bag.dags),
            "schedule": str(dag.schedule) if dag else None,
            "doc": bool(dag and dag.doc_md),
            "tasks": sorted(dag.task_ids) if dag else [],
            "params": {{k: dag.params.get_param(k).schema for k in dag.params}} if dag else {{}},
        }}))
    """, airflow_env)
    assert result["errors"] == {}
    assert result["dag_ids"] == ["dataset_validation"]
    assert result["schedule"] == "None"
    assert result["doc"]
    assert result["tasks"] == ["extract", "validate"]
    assert result["params"]["dataset_id"]["type"] == "string"
    assert "pattern" in result["params"]["dataset_id"]
    assert result["params"]["s3_key"]["pattern"].startswith("^datasets/")


def test_dag_file_imports_nothing_heavy(airflow_env):
    result = _python(f"""
        import importlib.util, json, sys
        spec = importlib.util.spec_from_file_location("dataset_validation_dag", {str(DAG_FILE)!r})
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        print({MARK!r} + json.dumps([m for m in {HEAVY!r} if m in sys.modules]))
    """, airflow_env)
    assert result == []


def test_params_refuse_a_bad_conf(airflow_env):
    result = _python(f"""
        import copy, json
        from airflow.dag_processing.dagbag import DagBag
        dag = DagBag(dag_folder={str(DAG_FILE)!r}).dags["dataset_validation"]
        out = {{}}
        for name, conf in {{
            "ok": {{"dataset_id": "0b7e3c1e-8f1d-4c7a-9a55-2f6a1b9d3e10",
                    "s3_key": "datasets/0b7e3c1e-8f1d-4c7a-9a55-2f6a1b9d3e10/a.zip"}},
            "bad_id": {{"dataset_id": "../etc", "s3_key": "datasets/x/a.zip"}},
            "bad_key": {{"dataset_id": "0b7e3c1e-8f1d-4c7a-9a55-2f6a1b9d3e10", "s3_key": "models/x"}},
            "missing": {{"dataset_id": "0b7e3c1e-8f1d-4c7a-9a55-2f6a1b9d3e10"}},
        }}.items():
            try:
                params = copy.deepcopy(dag.params)
                for key, value in conf.items():
                    params[key] = value
                params.validate()
                out[name] = "ok"
            except Exception as exc:
                out[name] = type(exc).__name__
        print({MARK!r} + json.dumps(out))
    """, airflow_env)
    assert result["ok"] == "ok"
    assert result["bad_id"] != "ok" and result["bad_key"] != "ok" and result["missing"] != "ok"


# --- real runs ---------------------------------------------------------------------------

RUNNER = f"""
    import json, sys, time
    from airflow.dag_processing.dagbag import DagBag
    dag = DagBag(dag_folder=sys.argv[1]).dags["dataset_validation"]
    results = {{}}
    for name, conf in json.loads(sys.argv[2]).items():
        start = time.perf_counter()
        run = dag.test(run_conf=conf)
        seconds = time.perf_counter() - start
        tis = {{ti.task_id: [str(ti.state), ti.try_number] for ti in run.get_task_instances()}}
        results[name] = {{"state": str(run.state), "tis": tis, "seconds": round(seconds, 2)}}
    mlflow_runs = {{}}
    import os
    if os.environ.get("MLFLOW_TRACKING_URI"):
        import mlflow
        for r in mlflow.search_runs(experiment_names=["dataset-validation"], output_format="list"):
            arts = [a.path for a in mlflow.MlflowClient().list_artifacts(r.info.run_id, "validation")]
            mlflow_runs[r.info.run_name] = {{"metrics": r.data.metrics, "artifacts": arts}}
    print({MARK!r} + json.dumps({{"runs": results, "mlflow": mlflow_runs}}))
"""


def _zip_dataset(tmp_path: Path, name: str, count: int = 6, breaker=None) -> tuple[Path, Path]:
    folder = make_dataset(tmp_path / name / "my_dataset", count)
    if breaker:
        breaker(folder)
    return folder, zip_folder(tmp_path / name, tmp_path / f"{name}.zip")


def _zip_slip(tmp_path: Path) -> Path:
    import zipfile

    path = tmp_path / "slip.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("metadata.csv", "file_name,label\na.mp4,x\n")
        zf.writestr("../../evil.mp4", b"x")
    return path


@pytest.fixture(scope="module")
def dag_runs(airflow_env, s3, tmp_path_factory):
    """Runs the DAG on a valid dataset and on broken ones; returns what each run left behind."""
    tmp = tmp_path_factory.mktemp("dag-runs")
    client = s3.client()
    cases: dict[str, dict] = {}

    def upload(name: str, archive: Path, **extra) -> None:
        dataset_id = str(uuid.uuid4())
        key = dataset_upload_key(dataset_id, archive.name)
        client.upload_file(str(archive), s3.bucket, key)
        head = client.head_object(Bucket=s3.bucket, Key=key)  # what upload-complete records and passes on
        cases[name] = {"conf": {"dataset_id": dataset_id, "s3_key": key, "size_bytes": head["ContentLength"],
                                "etag": head["ETag"]}, **extra}

    good_folder, good_zip = _zip_dataset(tmp, "good", count=6)
    upload("valid", good_zip, folder=good_folder)

    # completed with one archive, then overwritten (same name, other bytes) before the run read it
    _, first_zip = _zip_dataset(tmp, "first", count=4)
    upload("changed", first_zip)
    client.upload_file(str(good_zip), s3.bucket, cases["changed"]["conf"]["s3_key"])

    def drop_a_clip(folder: Path) -> None:
        (folder / "clips" / "clip_0002.mp4").unlink()
    _, missing_zip = _zip_dataset(tmp, "missing", count=4, breaker=drop_a_clip)
    upload("missing_clip", missing_zip)
    upload("zip_slip", _zip_slip(tmp))
    corrupt = tmp / "corrupt.zip"
    corrupt.write_bytes(b"PK\x03\x04 definitely not a real zip" * 20)
    upload("corrupt", corrupt)

    never_uploaded = str(uuid.uuid4())
    cases["no_archive"] = {"conf": {"dataset_id": never_uploaded,
                                    "s3_key": dataset_upload_key(never_uploaded, "gone.zip"),
                                    "size_bytes": None, "etag": None}}

    env = {**airflow_env, **s3.env(), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db"}
    confs = json.dumps({name: case["conf"] for name, case in cases.items()})
    result = _python(RUNNER, env, str(DAG_FILE), confs, timeout=600, cwd=tmp)
    for name, case in cases.items():
        dataset_id = case["conf"]["dataset_id"]
        case.update(result["runs"][name])
        body = client.get_object(Bucket=s3.bucket, Key=dataset_report_key(dataset_id))["Body"]
        case["report"] = json.loads(body.read())
        listed = client.list_objects_v2(Bucket=s3.bucket, Prefix=dataset_files_prefix(dataset_id))
        case["files"] = {o["Key"][len(dataset_files_prefix(dataset_id)):]: o["Size"]
                         for o in listed.get("Contents", [])}
        case["mlflow"] = result["mlflow"].get(dataset_id)
        case["bucket"] = s3.bucket
    print("dag.test seconds:", {name: case["seconds"] for name, case in cases.items()})
    return cases


def test_valid_dataset_run(dag_runs):
    case = dag_runs["valid"]
    assert case["state"] == "success", case
    assert case["tis"] == {"extract": ["success", 1], "validate": ["success", 1]}
    report = case["report"]
    assert report["valid"] is True and report["errors"] == []
    assert report["dataset_id"] == case["conf"]["dataset_id"]
    folder: Path = case["folder"]
    expected = {p.relative_to(folder).as_posix(): p.stat().st_size
                for p in folder.rglob("*") if p.is_file()}
    assert case["files"] == expected  # the dataset root (inside my_dataset/), not the zip's top
    assert report["file_count"] == len(expected) == 7
    assert report["total_size_bytes"] == sum(expected.values())
    assert report["clip_count"] == 6
    assert case["mlflow"]["metrics"]["valid"] == 1.0
    assert case["mlflow"]["metrics"]["clip_count"] == 6.0
    assert case["mlflow"]["artifacts"] == ["validation/report.json"]


def test_an_archive_changed_after_upload_complete_is_not_processed(dag_runs):
    case = dag_runs["changed"]
    assert case["state"] == "failed"
    assert case["tis"]["extract"] == ["failed", 1]  # no retry: the object will not change back
    assert case["report"]["valid"] is False
    [error] = case["report"]["errors"]
    assert error.startswith("first.zip: the archive changed after upload-complete (its ETag is no longer ")
    assert case["files"] == {}  # nothing of the other archive was extracted


def test_missing_clip_fails_the_run_with_a_precise_report(dag_runs):
    case = dag_runs["missing_clip"]
    assert case["state"] == "failed"
    assert case["tis"]["extract"] == ["success", 1]
    assert case["tis"]["validate"] == ["failed", 1]  # AirflowFailException: no retry
    report = case["report"]
    assert report["valid"] is False
    assert len(report["errors"]) == 1
    assert report["errors"][0].startswith("clips/clip_0002.mp4 (metadata.csv row ")
    assert report["errors"][0].endswith("): no such file in the archive")
    assert case["mlflow"]["metrics"]["valid"] == 0.0


@pytest.mark.parametrize("name, expected", [
    ("zip_slip", "slip.zip: unsafe archive member '../../evil.mp4': it escapes the extraction "
                 "folder (zip slip: '..' in its path)"),
    ("corrupt", "corrupt.zip: not a zip archive (or a corrupt one)"),
    ("no_archive", "gone.zip: no uploaded archive at s3://{bucket}/datasets/{id}/gone.zip"),
])
def test_unsafe_or_corrupt_archive_fails_with_a_report(dag_runs, name, expected):
    case = dag_runs[name]
    assert case["state"] == "failed"
    assert case["tis"]["extract"] == ["failed", 1]
    assert case["tis"]["validate"][0] == "upstream_failed"
    assert case["report"]["valid"] is False
    assert case["report"]["errors"] == [expected.format(id=case["conf"]["dataset_id"], bucket=case["bucket"])]
    assert case["files"] == {}  # nothing unsafe was published
