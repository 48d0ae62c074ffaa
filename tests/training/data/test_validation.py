"""Dataset validation (GX on the table + PyAV on the clips) and its report."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import pytest

from training.data.archive import extract_archive
from training.data.synthetic import make_dataset, write_clip, zip_folder
from training.data.validation import ValidationLimits, validate_dataset

REPORT_KEYS = {"dataset_id", "valid", "errors", "file_count", "total_size_bytes", "clip_count",
               "tasks", "labels", "captions", "splits", "video", "expectations"}


def _rows(folder: Path) -> list[dict]:
    with open(folder / "metadata.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _write_rows(folder: Path, rows: list[dict]) -> None:
    with open(folder / "metadata.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


def test_valid_csv_dataset_report(tmp_path):
    folder = make_dataset(tmp_path / "ds", 8)
    report = validate_dataset(folder, "ds-1")
    assert REPORT_KEYS <= set(report)
    assert report["valid"] is True, report["errors"]
    assert report["errors"] == []
    assert report["dataset_id"] == "ds-1"
    assert report["file_count"] == len(_files(folder)) == 9
    assert report["total_size_bytes"] == sum(p.stat().st_size for p in _files(folder))
    assert report["clip_count"] == 8
    assert report["tasks"] == ["video_classification", "video_captioning"]
    assert report["labels"] == {"blue": 4, "red": 4}
    assert report["captions"]["count"] == 8
    assert report["captions"]["min_length"] == len("a red square moves left")
    assert report["splits"] == {"train": 6, "validation": 2}
    assert report["video"]["frames"] == {"min": 16, "max": 16, "mean": 16.0}
    assert report["video"]["width"]["max"] == 64
    assert report["video"]["duration_s"]["mean"] == pytest.approx(2.0)
    kinds = {e["expectation"] for e in report["expectations"]}
    assert {"expect_column_values_to_be_in_set", "expect_column_values_to_be_unique",
            "expect_column_values_to_not_be_null"} <= kinds
    assert all(e["success"] for e in report["expectations"])
    json.dumps(report)  # the report is JSON as it is


def test_jsonl_captioning_only(tmp_path):
    folder = make_dataset(tmp_path / "ds", 6, table="jsonl", with_labels=False,
                          validation_fraction=0)
    report = validate_dataset(folder)
    assert report["valid"] is True, report["errors"]
    assert report["tasks"] == ["video_captioning"]
    assert report["labels"] is None
    assert report["splits"] == {"unassigned": 6}


def test_class_subfolders_without_table(tmp_path):
    for i, label in enumerate(["left", "left", "right"]):
        write_clip(tmp_path / "ds" / label / f"c{i}.mp4", "red", label, seed=i)
    report = validate_dataset(tmp_path / "ds")
    assert report["valid"] is True, report["errors"]
    assert report["source"] == "folders"
    assert report["labels"] == {"left": 2, "right": 1}
    assert report["tasks"] == ["video_classification"]


def test_dataset_zipped_inside_one_top_level_folder(tmp_path):
    make_dataset(tmp_path / "src" / "my_dataset", 4)
    archive = zip_folder(tmp_path / "src", tmp_path / "ds.zip")
    extract_archive(archive, tmp_path / "out")
    report = validate_dataset(tmp_path / "out")
    assert report["valid"] is True, report["errors"]
    assert report["file_count"] == 5
    assert report["clip_count"] == 4


def test_missing_clip_names_file_and_row(tmp_path):
    folder = make_dataset(tmp_path / "ds", 6)
    rows = _rows(folder)
    missing = rows[3]["file_name"]
    (folder / missing).unlink()
    report = validate_dataset(folder)
    assert report["valid"] is False
    assert report["errors"] == [f"{missing} (metadata.csv row 4): no such file in the archive"]
    failed = [e for e in report["expectations"] if not e["success"]]
    assert [e["expectation"] for e in failed] == ["expect_column_values_to_be_in_set"]
    assert failed[0]["unexpected_count"] == 1


def test_undecodable_and_truncated_clips(tmp_path):
    folder = make_dataset(tmp_path / "ds", 6)
    rows = _rows(folder)
    (folder / rows[1]["file_name"]).write_bytes(os.urandom(3000))
    clip = folder / rows[4]["file_name"]
    clip.write_bytes(clip.read_bytes()[: clip.stat().st_size // 2])
    report = validate_dataset(folder)
    assert report["valid"] is False
    assert len(report["errors"]) == 2
    assert report["errors"][0].startswith(f"{rows[1]['file_name']} (metadata.csv row 2): "
                                          "cannot be opened as a video")
    assert report["errors"][1].startswith(f"{rows[4]['file_name']} (metadata.csv row 5): ")
    assert report["video"]["frames"]["min"] == 16  # stats of the clips that decode


def test_one_class_only(tmp_path):
    folder = make_dataset(tmp_path / "ds", 4)
    rows = _rows(folder)
    for row in rows:
        row["label"] = "red"
    _write_rows(folder, rows)
    report = validate_dataset(folder)
    assert report["valid"] is False
    assert report["errors"] == ["metadata.csv: column 'label' needs at least two classes with at "
                                "least one example each (found 1)"]


def test_class_without_training_example(tmp_path):
    folder = make_dataset(tmp_path / "ds", 4)
    rows = _rows(folder)
    rows[0].update(label="green", split="validation")
    _write_rows(folder, rows)
    report = validate_dataset(folder)
    assert report["errors"] == ["metadata.csv: class(es) 'green' have no example in the train split"]


def test_empty_and_too_long_captions_bad_split_duplicates(tmp_path):
    folder = make_dataset(tmp_path / "ds", 6)
    rows = _rows(folder)
    rows[0]["caption"] = ""
    rows[1]["caption"] = "   "
    rows[2]["caption"] = "x" * 50
    rows[3]["split"] = "dev"
    rows[5]["file_name"] = rows[4]["file_name"]
    _write_rows(folder, rows)
    report = validate_dataset(folder, limits=ValidationLimits(max_caption_length=40))
    assert report["valid"] is False
    assert report["errors"] == [
        f"{rows[0]['file_name']} (metadata.csv row 1): caption is empty",
        f"{rows[1]['file_name']} (metadata.csv row 2): caption is empty",
        f"{rows[2]['file_name']} (metadata.csv row 3): caption is longer than 40 characters",
        f"{rows[3]['file_name']} (metadata.csv row 4): split is not one of train, validation, test",
        f"{rows[4]['file_name']} (metadata.csv row 5): the clip is listed more than once",
        f"{rows[4]['file_name']} (metadata.csv row 6): the clip is listed more than once",
    ]


def test_jsonl_missing_label_and_traversal_name(tmp_path):
    folder = make_dataset(tmp_path / "ds", 4, table="jsonl")
    rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    rows[1]["label"] = None
    rows[2]["file_name"] = "../outside.mp4"
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = validate_dataset(folder)
    assert report["errors"] == [
        f"{rows[1]['file_name']} (metadata.jsonl row 2): label is empty",
        "../outside.mp4 (metadata.jsonl row 3): no such file in the archive",
    ]


def test_errors_are_capped_first_rows_first(tmp_path):
    folder = make_dataset(tmp_path / "ds", 30, frames=4, size=32)
    shutil.rmtree(folder / "clips")
    report = validate_dataset(folder)
    assert report["error_count"] == 30
    assert len(report["errors"]) == 20
    assert [e.split("row ")[1].split(")")[0] for e in report["errors"]] == \
        [str(i) for i in range(1, 21)]


def test_unreadable_folder_gives_a_precise_report(tmp_path):
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "readme.txt").write_text("no clips here")
    report = validate_dataset(tmp_path / "ds", "d")
    assert report["valid"] is False
    assert "no annotation table" in report["errors"][0]
    assert report["file_count"] == 1

    (tmp_path / "ds" / "metadata.csv").write_text("name,label\na.mp4,x\n")
    report = validate_dataset(tmp_path / "ds", "d")
    assert report["errors"] == ["metadata.csv: the required column 'file_name' is missing "
                                "(columns found: name, label)"]


def test_table_without_task_column(tmp_path):
    folder = make_dataset(tmp_path / "ds", 3, with_labels=False, with_captions=False)
    report = validate_dataset(folder)
    assert report["errors"] == ["metadata.csv: needs a 'label' (classification) or 'caption' "
                                "(captioning) column"]
