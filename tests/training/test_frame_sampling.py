"""Frame sampling as a training parameter, through the engine: with `frame_sampling: fps` a clip
of known frame rate and duration gives the frames at `sampling_fps` a second (at most `frames`,
evenly spread past that), clips of different lengths share a batch (padded, masked), and the
frames the engine trained on (its frame store) spell the expected frame indices."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from training.data.frame_store import FrameStore
from training.data.synthetic import read_pattern, write_test_clip

#: clip -> (write_test_clip options at 10 fps, frame indices sampled at 2 fps with at most 8 frames)
CLIPS = {
    # 30 frames, 0.0 .. 2.9 s: a frame each 0.5 s -> 6 frames
    "three_seconds.mp4": (dict(frames=30), [0, 5, 10, 15, 20, 25]),
    # 12 frames, 0.0 .. 1.1 s -> 3 frames
    "one_second.mkv": (dict(frames=12, codec="vp9"), [0, 5, 10]),
    # 100 frames, 9.9 s: 20 at 2 fps is more than 8 -> 8 spread evenly
    "ten_seconds.mp4": (dict(frames=100), [6, 18, 31, 43, 56, 68, 81, 93]),
    # variable frame rate: the frame on screen at 0, 0.5, 1.0, 1.5, 2.0 s
    "vfr.mov": (dict(frames=7, times=[0, .1, .2, 1.0, 1.05, 1.9, 2.0]), [0, 2, 3, 4, 6]),
}


@pytest.fixture(scope="module")
def clip_dataset(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("sampling")
    with open(folder / "metadata.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file_name", "label", "caption", "split"])
        for i, (name, (options, _)) in enumerate(CLIPS.items()):
            write_test_clip(folder / "clips" / name, **options)
            label = ("short", "long")[i % 2]
            writer.writerow([f"clips/{name}", label, f"a {label} clip", "train"])
        # held-out rows (the engine evaluates them too): copies
        for name in ("three_seconds.mp4", "one_second.mkv"):
            writer.writerow([f"clips/{name}", "short", "a short clip", "validation"])
    return folder


@pytest.mark.parametrize("architecture,task", [("video_llama", "video_captioning"),
                                               ("flamingo", "video_classification")])
def test_fps_sampling_trains_on_the_frames_at_that_rate(tmp_path, tiny_models, clip_dataset, monkeypatch,
                                                        architecture, task):
    from training.cli import main
    from training.result import RunStatus, read_result

    monkeypatch.setenv("QLORA_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "out"
    code = main(["run", "--model", str(tiny_models(architecture, task)), "--data", str(clip_dataset),
                 "--task", task, "--output", str(out), "--epochs", "1", "--batch-size", "4",
                 "--frames", "8", "--frame-sampling", "fps", "--sampling-fps", "2", "--mlflow-uri", ""])
    assert code == 0, (out / "train.log").read_text()[-2000:]
    result = read_result(out)
    assert result.status == RunStatus.COMPLETED and result.skipped_clips == {}
    assert (result.params["frame_sampling"], result.params["sampling_fps"], result.params["frames"]) == ("fps", 2.0, 8)
    assert "2 frames a second, at most 8 per clip" in (out / "train.log").read_text()
    # the frames it trained on: stored under the fps setting's own key, at the expected indices
    [folder] = (tmp_path / "cache" / "frames").glob("*-max8f-2fps-*")
    store = FrameStore(folder, clip_dataset, None)
    for name, (_, expected) in CLIPS.items():
        frames = store.get(clip_dataset / "clips" / name)
        assert frames is not None, name
        assert [read_pattern(f.numpy()) for f in frames] == expected, name
    assert not list(folder.parent.glob("*-8f-*")), "uniform sampling was used somewhere"
    if architecture == "video_llama":
        # `python -m training evaluate` samples as the training did: it reads the training's store, makes no other
        assert main(["evaluate", "--model", str(tiny_models(architecture, task)), "--adapter", str(out),
                     "--data", str(clip_dataset), "--no-base", "--output", str(tmp_path / "metrics.json"),
                     "--mlflow-uri", ""]) == 0
        assert [p.name for p in folder.parent.iterdir() if p.is_dir()] == [folder.name]


def test_uniform_sampling_is_the_default_and_takes_exactly_frames(tmp_path, tiny_models, clip_dataset, monkeypatch):
    from training.cli import main
    from training.result import read_result

    monkeypatch.setenv("QLORA_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "out"
    assert main(["run", "--model", str(tiny_models("video_llama", "video_classification")),
                 "--data", str(clip_dataset), "--task", "video_classification", "--output", str(out),
                 "--epochs", "1", "--batch-size", "4", "--frames", "4", "--mlflow-uri", ""]) == 0
    assert (read_result(out).params["frame_sampling"], read_result(out).params["sampling_fps"]) == ("uniform", None)
    [folder] = (tmp_path / "cache" / "frames").glob("*-4f-*")
    frames = FrameStore(folder, clip_dataset, None).get(clip_dataset / "clips" / "ten_seconds.mp4")
    assert [read_pattern(f.numpy()) for f in frames] == [12, 37, 62, 87]


def test_a_sampling_rate_without_fps_sampling_is_refused_before_training(tmp_path, tiny_models, clip_dataset,
                                                                         capsys):
    from training.cli import main

    out = tmp_path / "out"
    for extra in (["--frame-sampling", "uniform", "--sampling-fps", "2"], ["--sampling-fps", "2"]):
        code = main(["run", "--model", str(tiny_models("video_llama", "video_classification")),
                     "--data", str(clip_dataset), "--task", "video_classification", "--output", str(out),
                     *extra, "--mlflow-uri", ""])
        assert code == 2
        assert "sampling-fps (2.0) applies only with frame_sampling 'fps'" in capsys.readouterr().err
        assert not (out / "adapter_model.safetensors").exists()
