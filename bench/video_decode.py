"""Decoding a camera-sized clip: the engine's sampled decode against raw PyAV, time and peak RSS.

    python -m bench.video_decode [--seconds 60] [--repeats 3] [--frames 8,32] [--size 384]

Generates (once, cached in the temp folder) a 1920x1080 30 fps H.264 clip of `--seconds`
seconds with PyAV (libx264, preset ultrafast, its default keyframe interval of 250 frames, and
a second copy with a 1 s keyframe interval as phones and cameras write), then runs each variant
`--repeats` times, each in a fresh subprocess (so peak RSS is that variant's alone), and prints
the median wall time and the peak RSS (ru_maxrss) beside the RSS of the process before it
decoded anything (imports only):

* raw PyAV, decode every frame (no conversion): the least any full decode costs;
* raw PyAV, decode every frame and convert each to full-size RGB (each array dropped at once);
* the engine (`training.data.frames.decode_frames`): 8 and 32 uniformly sampled frames,
  converted and scaled to `--size` in the decoder, seeking past the GOPs it does not need.

The engine before this change kept every frame as full-size RGB before sampling: that is
frames x 1920 x 1080 x 3 bytes (printed as "old engine, computed"; not run, it would need
~11 GB for 60 s). Measures; asserts nothing.
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
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
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
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": elapsed, "frames": n, "rss_before_kib": before, "peak_kib": peak}))
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--frames", default="8,32")
    parser.add_argument("--size", type=int, default=384, help="engine output: size x size")
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "qlora-bench"))
    args = parser.parse_args()
    counts = [int(c) for c in args.frames.split(",")]
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)

    print(f"clip: {args.seconds} s {WIDTH}x{HEIGHT} {FPS} fps H.264 (libx264 ultrafast), "
          f"engine output {args.size}x{args.size}; median of {args.repeats} runs, each in its own process; "
          f"RSS: peak of the process, and its growth over the process after imports (torch, av)")
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
