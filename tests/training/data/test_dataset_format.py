"""The dataset folder format reader: tables, class folders, nesting, empty cells."""

import json

import pytest

from training.data.dataset_format import DatasetFormatError, read_dataset
from training.data.synthetic import make_clips, make_dataset


def test_csv_empty_cells_are_none_not_nan(tmp_path):
    (tmp_path / "metadata.csv").write_text("file_name,label,caption\na.mp4,x,\nb.mp4,,hello\n")
    table = read_dataset(tmp_path)
    assert table.source == "metadata.csv"
    assert table.frame.to_dict("records") == [
        {"file_name": "a.mp4", "label": "x", "caption": None},
        {"file_name": "b.mp4", "label": None, "caption": "hello"},
    ]


def test_jsonl_table_inside_one_top_level_folder(tmp_path):
    make_dataset(tmp_path / "my_dataset", 4, table="jsonl", with_captions=False)
    table = read_dataset(tmp_path)
    assert table.root == tmp_path / "my_dataset"
    assert table.source == "metadata.jsonl"
    assert table.has_labels and not table.has_captions
    assert table.supports("video_classification") and not table.supports("video_captioning")
    assert all(table.clip_path(name).is_file() for name in table.frame["file_name"])


def test_class_sub_folders_mean_labels(tmp_path):
    make_clips(tmp_path / "left", 2, directions=("left",), subdir="")
    make_clips(tmp_path / "right", 2, directions=("right",), subdir="")
    table = read_dataset(tmp_path)
    assert table.source == "folders"
    assert sorted(table.frame["label"]) == ["left", "left", "right", "right"]
    assert table.frame["file_name"].iloc[0].startswith("left/")


def test_windows_separators_are_normalised(tmp_path):
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"file_name": "clips\\a.mp4", "caption": "c"}) + "\n")
    assert read_dataset(tmp_path).frame["file_name"].tolist() == ["clips/a.mp4"]


@pytest.mark.parametrize("content, message", [
    ("name,label\na.mp4,x\n", "required column 'file_name' is missing"),
])
def test_table_without_file_name_is_refused(tmp_path, content, message):
    (tmp_path / "metadata.csv").write_text(content)
    with pytest.raises(DatasetFormatError, match=message):
        read_dataset(tmp_path)


def test_folder_without_table_or_clips_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("nothing here")
    with pytest.raises(DatasetFormatError, match="no annotation table"):
        read_dataset(tmp_path)
