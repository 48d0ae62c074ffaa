"""Decoding a camera-sized clip: the engine's sampled decode against raw PyAV, time and peak RSS.

    python -m bench.video_decode [--seconds 60] [--repeats 3] [--frames 8,32] [--size 384]

Generates (once, cached in the temp folder) a 1920x1080 30 fps H.264 clip of `--seconds`
seconds with PyAV (libx264, preset ultrafast, its default keyframe interval of 250 frames, and
a second copy with a 1 s keyframe interval as phones and cameras write), then runs each variant
`--repeats` times, each in a fresh subprocess (so peak RSS is that variant's alone), and prints
the median wall time and the peak RSS while it decodes (VmHWM, reset after the imports through
/proc/self/clear_refs; ru_maxrss where that is not allowed) beside the RSS of the process before it
decoded anything (imports only):

* raw PyAV, decode every frame (no conversion): the least any full decode costs;
* raw PyAV, decode every frame and convert each to full-size RGB (each array dropped at once);
* the engine (`training.data.frames.decode_frames`): 8 and 32 uniformly sampled frames,
  converted and scaled to `--size` in the decoder, seeking past the GOPs it does not need.

The engine before this change kept every frame as full-size RGB before sampling: that is
frames x 1920 x 1080 x 3 bytes (printed as "old engine, computed"; not run, it would need
~11 GB for 60 s).

`--parts` also runs, in the same invocation:

* training: steps per second of the engine (`python -m training run`, tiny VideoLLaMA 3
  classification model, NF4, batch 4, 8 frames, one epoch, no MLflow) with every clip decoded
  in the loop (`QLORA_DATA_WORKERS` = 0, 1, 2; no frame store) against the same run on frames
  decoded beforehand (a frame store filled by a previous run: the loop only loads tensors), on
  two kinds of step: the tiny model's own CPU step (competes with the decoders for the cores),
  and an accelerator-like step (`--step-delay`: the CPU idles while the step runs, as on a
  GPU). Steps/s are from the engine's step log lines (first step left out);
* validation: clips per second of the dataset validation (`training.data.validation.
  validate_dataset`: the table checks and every clip decoded by `probe_clip`) against raw PyAV
  decoding every frame of the same clips, in the same process.

The machine's load average is printed beside the figures. Measures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WIDTH, HEIGHT, FPS = 1920, 1080, 30

CHILD = r"""
import json, resource, sys, time
variant, path, frames, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
import av, numpy, torch
from training.data.frames import decode_frames
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])
try:  # reset the peak (VmHWM) to what the process holds now, so the peak is the decode's, not the imports'
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    reset = True
except OSError:
    reset = False
before = status("VmRSS") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
n = 0
if variant == "raw":
    with av.open(path) as c:
        s = c.streams.video[0]; s.thread_type = "AUTO"
        for f in c.decode(s):
            n += 1
elif variant == "raw_rgb":
    with av.open(path) as c:
        s = c.streams.video[0]; s.thread_type = "AUTO"
        for f in c.decode(s):
            f.to_ndarray(format="rgb24"); n += 1
else:
    n = decode_frames(path, frames, (size, size)).shape[0]
elapsed = time.perf_counter() - t
peak = status("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": elapsed, "frames": n, "rss_before_kib": before, "peak_kib": peak, "reset": reset}))
"""


def make_clip(path: Path, seconds: int, gop: int | None) -> Path:
    """A 1080p30 H.264 clip with motion everywhere: a moving diagonal gradient and a bouncing box."""
    import av
    import numpy as np

    if path.is_file() and path.stat().st_size > 0:
        return path
    tmp = path.with_suffix(".part.mp4")
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    base = ((xx + yy) % 256).astype(np.uint8)
    with av.open(str(tmp), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.options = {"preset": "ultrafast", **({"g": str(gop), "keyint_min": str(gop)} if gop else {})}
        for i in range(seconds * FPS):
            shift = (i * 7) % 256
            image = np.empty((HEIGHT, WIDTH, 3), np.uint8)
            image[..., 0] = base + np.uint8(shift)
            image[..., 1] = base[::-1] + (2 * shift) % 256
            image[..., 2] = 90
            x = (i * 23) % (WIDTH - 200)
            image[400:600, x:x + 200] = (250, 250, 250)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    tmp.rename(path)
    return path


def run_variant(variant: str, clip: Path, frames: int, size: int) -> dict:
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root)}
    out = subprocess.run([sys.executable, "-c", CHILD, variant, str(clip), str(frames), str(size)],
                         capture_output=True, text=True, env=env, check=True, cwd=root)
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(clip: Path, variants: list[tuple[str, str, int]], repeats: int, size: int) -> list[tuple]:
    results: dict[str, list[dict]] = {label: [] for label, _, _ in variants}
    for _ in range(repeats):  # interleaved, so drift hits every variant alike
        for label, variant, frames in variants:
            results[label].append(run_variant(variant, clip, frames, size))
    rows = []
    raw_time = statistics.median(r["seconds"] for r in results[variants[0][0]])
    for label, _, _ in variants:
        runs = results[label]
        seconds = statistics.median(r["seconds"] for r in runs)
        peak = max(r["peak_kib"] for r in runs) / 1024
        before = statistics.median(r["rss_before_kib"] for r in runs) / 1024
        rows.append((label, runs[0]["frames"], seconds, seconds / raw_time, peak, peak - before))
    return rows


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# --- training: decoding in the loop against pre-decoded frames ----------------------------------

def _clip_folder(root: Path, clips: int, width: int, height: int, seconds: int, fps: int) -> Path:
    """`clips` copies of one H.264 clip (each its own file, so each is decoded), labelled
    red/blue alternately; 4 held out by the table's split column."""
    import csv
    import shutil

    from training.data.synthetic import write_test_clip

    folder = root / f"train_{clips}x{width}x{height}_{seconds}s{fps}"
    if (folder / "metadata.csv").is_file():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "clips").mkdir(parents=True)
    one = write_test_clip(folder / "one.mp4", codec="h264", frames=seconds * fps, width=width, height=height,
                          fps=fps, encoder_options={"preset": "ultrafast"})
    with open(folder / "metadata.csv.part", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file_name", "label", "split"])
        for i in range(clips):
            shutil.copyfile(one, folder / "clips" / f"c{i:03d}.mp4")
            writer.writerow([f"clips/c{i:03d}.mp4", ("red", "blue")[i % 2], "validation" if i < 4 else "train"])
    one.unlink()
    (folder / "metadata.csv.part").rename(folder / "metadata.csv")
    return folder


def _engine_steps(model: Path, data: Path, out: Path, cache: Path, workers: int, store: bool,
                  delay: float) -> dict:
    """One engine run; steps/s between its step log lines (the first step left out)."""
    import re
    import shutil
    from datetime import datetime

    root = Path(__file__).resolve().parent.parent
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(root), "QLORA_CACHE_DIR": str(cache),
           "QLORA_DATA_WORKERS": str(workers), "QLORA_FRAME_STORE_MAX_GB": "20" if store else "0",
           "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "training", "run", "--model", str(model), "--data", str(data), "--task",
           "video_classification", "--output", str(out), "--epochs", "1", "--batch-size", "4", "--frames", "8",
           "--mlflow-uri", "", "--step-delay", str(delay)]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=root)
    wall = time.perf_counter() - t
    log = (out / "train.log").read_text() if (out / "train.log").is_file() else proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(f"engine failed ({proc.returncode}): {log[-2000:]}")
    stamps = [datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f")
              for m in re.finditer(r"^(\S+ \S+) INFO step \d+/\d+", log, re.M)]
    span = (stamps[-1] - stamps[0]).total_seconds()
    return {"steps": len(stamps), "steps_per_s": (len(stamps) - 1) / span if span > 0 else float("nan"),
            "wall_s": wall}


def bench_training(cache: Path, clips: int, delay: float, which: set[str]) -> None:
    from training.build_tiny import build_tiny

    model = cache / "tiny-video_llama-classification"
    if not (model / "config.json").is_file():
        build_tiny("video_llama", "video_classification", model)
    kinds = [(what, shape) for key, what, shape in (
        ("tiny", "tiny clips: 64x64, 2 s at 8 fps, H.264", dict(width=64, height=64, seconds=2, fps=8)),
        ("camera", "camera-like clips: 640x360, 10 s at 30 fps, H.264", dict(width=640, height=360, seconds=10,
                                                                            fps=30))) if key in which]
    steps = [("the tiny model's CPU step", 0.0), (f"accelerator-like step ({delay:.2f} s, CPU idle)", delay)]
    print(f"\ntraining: engine steps/s, batch 4, 8 frames, {clips - 4} training clips, one epoch; "
          f"{os.cpu_count()} CPUs, load average before: {load_average()}")
    print(f"{'clips':<52} {'step':<36} {'frames from':<34} {'steps/s':>8} {'vs pre-decoded':>15}")
    for what, shape in kinds:
        import shutil

        data = _clip_folder(cache, clips, **shape)
        store_cache = cache / "engine-cache"
        shutil.rmtree(store_cache, ignore_errors=True)
        _engine_steps(model, data, cache / "out", store_cache, 0, True, 0.0)  # fills the frame store
        for step_name, step_delay in steps:
            base = _engine_steps(model, data, cache / "out", store_cache, 0, True, step_delay)
            rows = [("pre-decoded (frame store)", base)]
            for workers in (0, 1, 2):
                rows.append((f"decoded in the loop, {workers} workers",
                             _engine_steps(model, data, cache / "out", cache / "no-store", workers, False, step_delay)))
            for source, r in rows:
                print(f"{what:<52} {step_name:<36} {source:<34} {r['steps_per_s']:>8.2f} "
                      f"{r['steps_per_s'] / base['steps_per_s']:>15.2f}", flush=True)
    print(f"load average after: {load_average()}")


# --- validation throughput ---------------------------------------------------------------------

def bench_validation(cache: Path, clips: int) -> None:
    import av

    from training.data.validation import validate_dataset

    data = _clip_folder(cache, clips, width=1280, height=720, seconds=10, fps=30)
    paths = sorted((data / "clips").glob("*.mp4"))
    print(f"\nvalidation: {len(paths)} clips of 1280x720, 10 s at 30 fps, H.264; load average before: "
          f"{load_average()}")
    t = time.perf_counter()
    frames = 0
    for path in paths:
        with av.open(str(path)) as c:
            s = c.streams.video[0]
            s.thread_type = "AUTO"
            frames += sum(1 for _ in c.decode(s))
    raw = time.perf_counter() - t
    from training.data.video_probe import probe_clip

    t = time.perf_counter()
    for path in paths:
        probe_clip(path)
    probed = time.perf_counter() - t
    t = time.perf_counter()
    report = validate_dataset(data, "bench")
    validated = time.perf_counter() - t
    assert report["valid"], report["errors"]
    print(f"{'what':<60} {'seconds':>8} {'clips/s':>8} {'vs raw':>7}")
    print(f"{'raw PyAV: decode every frame of every clip':<60} {raw:>8.2f} {len(paths) / raw:>8.2f} {1.0:>7.2f}")
    print(f"{'probe_clip of every clip (what validation does per clip)':<60} {probed:>8.2f} "
          f"{len(paths) / probed:>8.2f} {raw / probed:>7.2f}")
    print(f"{'validate_dataset (table checks + every clip probed)':<60} {validated:>8.2f} "
          f"{len(paths) / validated:>8.2f} {raw / validated:>7.2f}")
    print(f"({frames} frames decoded by the raw pass; load average after: {load_average()})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--frames", default="8,32")
    parser.add_argument("--size", type=int, default=384, help="engine output: size x size")
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "qlora-bench"))
    parser.add_argument("--parts", default="decode,training,validation")
    parser.add_argument("--train-clips", type=int, default=28, help="clips of the training part (4 held out)")
    parser.add_argument("--step-delay", type=float, default=0.5,
                        help="seconds of the accelerator-like step of the training part")
    parser.add_argument("--train-kinds", default="tiny,camera", help="clips of the training part: tiny, camera")
    parser.add_argument("--validation-clips", type=int, default=12)
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    counts = [int(c) for c in args.frames.split(",")]
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)

    print(f"{os.cpu_count()} CPUs, load average: {load_average()}")
    if "training" in parts:
        bench_training(cache, args.train_clips, args.step_delay, set(args.train_kinds.split(",")))
    if "validation" in parts:
        bench_validation(cache, args.validation_clips)
    if "decode" not in parts:
        return
    print(f"\nclip: {args.seconds} s {WIDTH}x{HEIGHT} {FPS} fps H.264 (libx264 ultrafast), "
          f"engine output {args.size}x{args.size}; median of {args.repeats} runs, each in its own process; "
          f"RSS: peak of the process while it decodes (its peak reset after the imports through "
          f"/proc/self/clear_refs), and its growth over the RSS after imports (torch, av)")
    for gop, what in ((None, "x264 default keyframe interval (250)"), (FPS, "keyframe every 1 s")):
        name = f"h264_{WIDTH}x{HEIGHT}_{FPS}fps_{args.seconds}s_g{gop or 'default'}.mp4"
        t = time.perf_counter()
        clip = make_clip(cache / name, args.seconds, gop)
        made = time.perf_counter() - t
        variants = [("raw PyAV: decode every frame", "raw", 0),
                    ("raw PyAV: decode + full-size RGB every frame", "raw_rgb", 0)]
        variants += [(f"engine: {n} sampled frames -> {args.size}x{args.size}", "engine", n) for n in counts]
        rows = measure(clip, variants, args.repeats, args.size)
        total_frames = rows[0][1]
        print(f"\n{what}: {clip} ({clip.stat().st_size / 2**20:.1f} MiB, {total_frames} frames"
              f"{f', generated in {made:.0f} s' if made > 1 else ''})")
        print(f"{'variant':<52} {'frames':>6} {'time s':>8} {'vs raw':>7} {'peak RSS MiB':>13} {'growth MiB':>11}")
        for label, frames, seconds, ratio, peak, growth in rows:
            print(f"{label:<52} {frames:>6} {seconds:>8.2f} {ratio:>7.2f} {peak:>13.0f} {growth:>11.0f}")
        old = total_frames * WIDTH * HEIGHT * 3 / 2**20
        print(f"{'old engine (all frames kept as RGB), computed':<52} {total_frames:>6} {'':>8} {'':>7} "
              f"{old:>13.0f} {old:>11.0f}")


if __name__ == "__main__":
    main()
