"""The final evaluation's report (`training.evaluation.per_class_report`,
`training.evaluation_report`): per-class figures and the confusion matrix as scikit-learn would
give them, caption samples side by side, and the artifacts logged to a real MLflow store."""

from __future__ import annotations

import json

import pytest

from training.evaluation import macro_f1, per_class_report
from training.evaluation_report import CONFUSION_PNG, PER_CLASS_TABLE, REPORT_FILE, SAMPLES_TABLE, caption_samples, \
    log_to_mlflow


def test_per_class_figures_and_the_confusion_matrix():
    truth = [0, 0, 0, 1, 1, 2]
    pred = [0, 1, 0, 1, 1, 1]
    report = per_class_report(truth, pred, {0: "blue", 1: "red", 2: "green", 3: "never"})
    assert report["confusion_matrix"] == {"labels": ["blue", "red", "green", "never"],
                                          "matrix": [[2, 1, 0, 0], [0, 2, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]]}
    rows = {r["label"]: r for r in report["per_class"]}
    assert rows["blue"] == {"label": "blue", "precision": 1.0, "recall": pytest.approx(2 / 3),
                            "f1": pytest.approx(0.8), "support": 3}
    assert rows["red"]["precision"] == pytest.approx(0.5) and rows["red"]["recall"] == 1.0
    assert rows["green"] == {"label": "green", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert rows["never"]["support"] == 0
    # macro-F1 over the labels present (scikit-learn's) is the mean of those rows' F1
    present = [rows[n]["f1"] for n in ("blue", "red", "green")]
    assert macro_f1(truth, pred) == pytest.approx(sum(present) / 3)


def test_caption_samples_pair_the_base_and_the_adapter_by_clip():
    report = {"adapter": {"samples": [{"file_name": f"c{i}.mp4", "caption": f"ref {i}", "generated": f"ad {i}"}
                                      for i in range(25)]},
              "base": {"samples": [{"file_name": f"c{i}.mp4", "caption": f"ref {i}", "generated": ""}
                                   for i in range(25)]}}
    samples = caption_samples(report)
    assert len(samples) == 20
    assert samples[3] == {"file_name": "c3.mp4", "reference": "ref 3", "base": "", "adapter": "ad 3"}
    assert caption_samples({"adapter": report["adapter"]})[0]["base"] is None  # evaluated without the base


def test_the_report_tables_and_picture_are_run_artifacts(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("qlora/ada", artifact_location=str(tmp_path / "artifacts"))
    classification = {"task": "video_classification", "split": "validation", "held_out_examples": 6}
    for side, pred in (("adapter", [0, 0, 1, 1, 1, 0]), ("base", [0] * 6)):
        classification[side] = {"accuracy": 0.5, **per_class_report([0, 0, 0, 1, 1, 1], pred, {0: "blue", 1: "red"})}
    run = client.create_run(experiment).info.run_id
    log_to_mlflow(uri, run, classification)
    files = {f.path for f in client.list_artifacts(run, "evaluation")}
    assert files == {REPORT_FILE, PER_CLASS_TABLE, CONFUSION_PNG}
    folder = client.download_artifacts(run, "evaluation", str(tmp_path / "got"))
    assert json.loads((tmp_path / "got" / "evaluation" / "evaluation.json").read_text()) == classification
    table = json.loads((tmp_path / "got" / "evaluation" / "per_class.json").read_text())
    assert table["columns"][:2] == ["model", "label"] and len(table["data"]) == 4
    assert (tmp_path / "got" / "evaluation" / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert folder

    captioning = {"task": "video_captioning", "split": "validation", "held_out_examples": 1,
                  "adapter": {"bleu": 50.0}, "base": {"bleu": 0.0},
                  "samples": [{"file_name": "a.mp4", "reference": "a red square", "base": "", "adapter": "a red"}]}
    run = client.create_run(experiment).info.run_id
    log_to_mlflow(uri, run, captioning)
    assert {f.path for f in client.list_artifacts(run, "evaluation")} == {REPORT_FILE, SAMPLES_TABLE}
