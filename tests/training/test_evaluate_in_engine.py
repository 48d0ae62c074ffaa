"""`run --evaluate` (issue 16): the training's own process evaluates the adapter and the base model
(the adapter disabled) on the held-out split right after training, and writes the report that
`python -m training evaluate` (a fresh process: reloads the base, loads the adapter) writes:
the same held-out clips, the same figures for both sides."""

from __future__ import annotations

import json

import pytest

from training.cli import main
from training.result import RunStatus, read_result


@pytest.mark.parametrize("task", ["video_classification", "video_captioning"])
def test_the_engine_evaluates_as_the_evaluate_command_does(tmp_path, tiny_models, colour_dataset, task):
    model, out = tiny_models("flamingo", task), tmp_path / "out"
    assert main(["run", "--model", str(model), "--data", str(colour_dataset), "--task", task, "--output", str(out),
                 "--batch-size", "4", "--frames", "4", "--epochs", "2", "--learning-rate", "2e-3", "--seed", "3",
                 "--mlflow-uri", "", "--evaluate"]) == 0
    result = read_result(out)
    assert result.status == RunStatus.COMPLETED
    assert "metrics.json" not in result.adapter_files  # the report is not one of the adapter's files
    here = json.loads((out / "metrics.json").read_text())
    assert here["task"] == task and here["held_out_examples"] == 8 and here["split"] == "validation"

    assert main(["evaluate", "--model", str(model), "--adapter", str(out), "--data", str(colour_dataset),
                 "--output", str(tmp_path / "fresh.json"), "--mlflow-uri", ""]) == 0
    fresh = json.loads((tmp_path / "fresh.json").read_text())
    assert set(here) == set(fresh)
    keys = ("eval_loss", "eval_examples") + (("accuracy", "macro_f1") if task == "video_classification"
                                             else ("bleu", "rougeL"))
    for side in ("adapter", "base"):
        for key in keys:
            assert here[side][key] == pytest.approx(fresh[side][key], rel=1e-4, abs=1e-6), (side, key)
    # the base side differs from the adapter's: the adapter really was disabled
    assert here["base"]["eval_loss"] != pytest.approx(here["adapter"]["eval_loss"], rel=1e-3)
    if task == "video_classification":
        assert here["adapter"]["confusion_matrix"] == fresh["adapter"]["confusion_matrix"]
        assert here["base"]["confusion_matrix"] == fresh["base"]["confusion_matrix"]
    else:
        assert [s["generated"] for s in here["adapter"]["samples"]] == [s["generated"] for s in fresh["adapter"]["samples"]]
