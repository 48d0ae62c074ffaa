"""Every common codec and container, as phones and cameras write them, through validation and
training; and the files that must be rejected, each with its own detail and nothing left in S3.

The clips are generated with PyAV's encoders (tiny: 64x48, 12 frames), in one dataset for the
accepted ones, so validation (Great Expectations + PyAV) and the engine run once over all."""

from __future__ import annotations

import csv
import os
import zipfile
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from training.data.frames import decode_frames, sample_indices
from training.data.synthetic import read_pattern, write_test_clip
from training.data.validation import validate_dataset

#: (file name, write_test_clip options, codec PyAV reports, upright width x height)
ACCEPTED = [
    ("h264.mp4", dict(codec="h264"), "h264", (64, 48)),
    ("hevc.mp4", dict(codec="hevc"), "hevc", (64, 48)),
    ("mpeg4.mp4", dict(codec="mpeg4"), "mpeg4", (64, 48)),
    ("h264.mkv", dict(codec="h264"), "h264", (64, 48)),
    ("hevc.mkv", dict(codec="hevc"), "hevc", (64, 48)),
    ("vp9.mkv", dict(codec="vp9"), "vp9", (64, 48)),
    ("av1.mkv", dict(codec="av1"), "libdav1d", (64, 48)),
    ("vp9.webm", dict(codec="vp9"), "vp9", (64, 48)),
    ("av1.webm", dict(codec="av1"), "libdav1d", (64, 48)),
    ("h264.mov", dict(codec="h264"), "h264", (64, 48)),
    ("hevc.mov", dict(codec="hevc"), "hevc", (64, 48)),
    ("mpeg4.mov", dict(codec="mpeg4"), "mpeg4", (64, 48)),
    ("mpeg4.avi", dict(codec="mpeg4"), "mpeg4", (64, 48)),
    ("h264.avi", dict(codec="h264"), "h264", (64, 48)),
    ("vp9.mp4", dict(codec="vp9"), "vp9", (64, 48)),
    ("av1.mp4", dict(codec="av1"), "libdav1d", (64, 48)),
    # what phones and cameras add
    ("portrait_phone.mp4", dict(codec="h264", rotation=-90), "h264", (48, 64)),
    ("vfr_phone.mov", dict(codec="hevc", times=[0, .03, .07, .1, .5, .52, .9, 1.0, 1.5, 1.53, 1.8, 2.0]), "hevc",
     (64, 48)),
    ("with_sound.mp4", dict(codec="h264", audio=True), "h264", (64, 48)),
    ("with_sound.webm", dict(codec="vp9", audio=True), "vp9", (64, 48)),
    ("with_sound.avi", dict(codec="mpeg4", audio=True), "mpeg4", (64, 48)),
    ("odd_size.mkv", dict(codec="vp9", width=63, height=47), "vp9", (63, 47)),
    ("ten_bit_hevc.mp4", dict(codec="hevc", pix_fmt="yuv420p10le"), "hevc", (64, 48)),
    ("ten_bit_av1.mkv", dict(codec="av1", pix_fmt="yuv420p10le"), "libdav1d", (64, 48)),
]
FRAMES = 12


def _write_table(folder: Path, names: list[str]) -> None:
    with open(folder / "metadata.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file_name", "label", "caption"])
        for i, name in enumerate(names):
            colour = ("red", "blue")[i % 2]
            writer.writerow([f"clips/{name}", colour, f"a {colour} clip"])


@pytest.fixture(scope="module")
def matrix_dataset(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("matrix")
    for name, options, _, _ in ACCEPTED:
        write_test_clip(folder / "clips" / name, frames=FRAMES, **options)
    _write_table(folder, [name for name, *_ in ACCEPTED])
    return folder


def test_validation_accepts_every_codec_and_container_with_per_clip_stats(matrix_dataset):
    report = validate_dataset(matrix_dataset, "matrix")
    assert report["valid"] is True, report["errors"]
    clips = {c["file_name"]: c for c in report["clips"]}
    assert len(clips) == len(ACCEPTED)
    for name, options, codec, (width, height) in ACCEPTED:
        clip = clips[f"clips/{name}"]
        assert (clip["codec"], clip["width"], clip["height"], clip["frames"]) == (codec, width, height, FRAMES), name
        if "times" not in options:
            assert clip["fps"] == pytest.approx(10.0, rel=0.01), name
            assert clip["duration_s"] == pytest.approx(1.2, abs=0.15), name
    assert clips["clips/portrait_phone.mp4"]["rotation"] == 270
    assert clips["clips/vfr_phone.mov"]["duration_s"] == pytest.approx(2.1, abs=0.15)
    assert clips["clips/ten_bit_hevc.mp4"]["pix_fmt"] == "yuv420p10le"
    assert clips["clips/with_sound.webm"]["has_audio"] is True and clips["clips/h264.mp4"]["has_audio"] is False
    assert {c["container"] for c in clips.values()} >= {"mov", "matroska", "avi"}
    assert report["video"]["frames"] == {"min": FRAMES, "max": FRAMES, "mean": float(FRAMES)}


def test_the_engine_samples_the_same_frames_of_every_clip(matrix_dataset):
    for name, options, _, (width, height) in ACCEPTED:
        frames = decode_frames(matrix_dataset / "clips" / name, 4, (32, 32))
        assert frames.shape == (4, 3, 32, 32), name
        if not options.get("rotation"):  # a turned picture spells no index
            assert [read_pattern(f.numpy()) for f in frames] == sample_indices(FRAMES, 4), name


def test_the_engine_trains_on_every_codec_and_container(tmp_path, tiny_models, matrix_dataset):
    from training.cli import main
    from training.result import RunStatus, read_result

    out = tmp_path / "out"
    code = main(["run", "--model", str(tiny_models("video_llama", "video_classification")),
                 "--data", str(matrix_dataset), "--task", "video_classification", "--output", str(out),
                 "--epochs", "1", "--batch-size", "8", "--frames", "4", "--mlflow-uri", ""])
    assert code == 0
    result = read_result(out)
    assert result.status == RunStatus.COMPLETED and result.step == result.total_steps >= 2
    # every clip was read (as batches needed it) and none was skipped
    assert "data: 20 train / 4 held-out clips" in (out / "train.log").read_text()
    assert result.skipped_clips == {}


# --- rejections --------------------------------------------------------------------------------

def _audio_only(path: Path) -> None:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), dtype=np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        for packet in [*stream.encode(frame), *stream.encode()]:
            container.mux(packet)


def _noise_stream(path: Path) -> None:
    """A well-formed Matroska file whose H.264 stream holds noise: it opens, nothing decodes."""
    import av

    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(10):
            packet = av.Packet(rng.integers(0, 256, 500, dtype=np.uint8).tobytes())
            packet.stream, packet.pts, packet.dts, packet.time_base = stream, i, i, Fraction(1, 10)
            packet.is_keyframe = True
            container.mux(packet)


def _truncated(path: Path) -> None:
    data = write_test_clip(path.with_name("whole.webm"), codec="vp9", frames=30).read_bytes()
    path.write_bytes(data[:len(data) // 2])
    path.with_name("whole.webm").unlink()


#: file name -> (how it is made, the detail its error must carry)
REJECTED = {
    "empty.mp4": (lambda p: p.write_bytes(b""), "the file is empty (0 bytes)"),
    "song.m4a.mp4": (_audio_only, "has no video stream (audio only)"),
    "noise.mkv": (_noise_stream, "no frame of its video stream decodes"),
    "cut.webm": (_truncated, "s its header declares (truncated or corrupt)"),
    "random.mov": (lambda p: p.write_bytes(os.urandom(3000)), "cannot be opened as a video"),
    "eleven_minutes.mkv": (lambda p: write_test_clip(p, frames=2, times=[0.0, 660.0]),
                           "lasts 660.1 s, longer than the limit of 600 s"),
    "square_4k.avi": (lambda p: write_test_clip(p, codec="mpeg4", frames=1, width=4096, height=4096),
                      "is 4096x4096 (16777216 pixels), more than the limit of 8847360 pixels a frame"),
}


@pytest.fixture(scope="module")
def rejected_dataset(tmp_path_factory, matrix_dataset) -> Path:
    """Two good clips and one of each kind that must be rejected."""
    folder = tmp_path_factory.mktemp("rejected")
    (folder / "clips").mkdir()
    good = ["h264.mp4", "vp9.webm"]
    for name in good:
        (folder / "clips" / name).write_bytes((matrix_dataset / "clips" / name).read_bytes())
    for name, (make, _) in REJECTED.items():
        make(folder / "clips" / name)
    _write_table(folder, good + list(REJECTED))
    return folder


def test_each_bad_file_is_rejected_with_its_own_detail(rejected_dataset):
    report = validate_dataset(rejected_dataset, "bad")
    assert report["valid"] is False
    assert report["error_count"] == len(REJECTED)
    for row, (name, (_, detail)) in enumerate(REJECTED.items(), start=3):
        [error] = [e for e in report["errors"] if e.startswith(f"clips/{name} ")]
        assert error.startswith(f"clips/{name} (metadata.csv row {row}): ") and detail in error, error
    assert sorted(c["file_name"] for c in report["clips"]) == ["clips/h264.mp4", "clips/vp9.webm"]


def test_a_rejected_dataset_leaves_nothing_in_s3_but_its_report(tmp_path, s3_env, monkeypatch, rejected_dataset):
    """The dataset_validation DAG's two steps against a real S3 server."""
    import uuid

    from training import s3
    from training.pipeline import dataset_intake

    monkeypatch.setenv("QLORA_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("QLORA_S3_BUCKET", s3_env.bucket)
    dataset_id = str(uuid.uuid4())
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(rejected_dataset.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(rejected_dataset).as_posix())
    client = s3_env.client()
    key = s3.dataset_upload_key(dataset_id, "bad.zip")
    client.upload_file(str(archive), s3_env.bucket, key)

    extracted = dataset_intake.extract(dataset_id, key)
    assert extracted["file_count"] == len(REJECTED) + 3  # published while it is validated
    with pytest.raises(dataset_intake.DatasetRejected) as raised:
        dataset_intake.validate(extracted)
    dataset_intake.publish_report(raised.value.report, key)

    listed = client.list_objects_v2(Bucket=s3_env.bucket, Prefix=s3.dataset_prefix(dataset_id))
    keys = sorted(o["Key"] for o in listed.get("Contents", []))
    assert keys == sorted([key, s3.dataset_report_key(dataset_id)])  # no extracted file is left
    assert "clips/empty.mp4 (metadata.csv row 3): the file is empty (0 bytes)" in raised.value.report["errors"]


def test_a_clip_with_more_frames_than_the_limit_is_rejected_by_name(rejected_dataset):
    """The frame-count limit (20,000 by default: a clip over it takes minutes to generate) with a
    lowered limit: the 12-frame clips go over 10, each with its own detail."""
    from training.data.limits import ClipLimits
    from training.data.validation import ValidationLimits

    report = validate_dataset(rejected_dataset, "many", ValidationLimits(clip=ClipLimits(max_frames=10)))
    assert report["valid"] is False
    for row, name in ((1, "h264.mp4"), (2, "vp9.webm")):
        [error] = [e for e in report["errors"] if e.startswith(f"clips/{name} ")]
        assert error.startswith(f"clips/{name} (metadata.csv row {row}): ") and "has more than 10 frames" in error, error
