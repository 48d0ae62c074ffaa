"""Checkpoint-upload overhead on step time (`python -m bench.checkpoints`): prints a table,
asserts nothing.

The engine (`run_training`, MLflow off, one torch thread, the tiny 4-bit VideoLLaMA of
bench.training on the same seeded batches) in a child process per run, variants interleaved:

  none          no checkpoint (`checkpoint_every_steps` = 10**6)
  local/step    a checkpoint every step, kept on disk only
  s3/step       a checkpoint every step, uploaded to a real local S3 (SeaweedFS, signed requests)
                and the older ones deleted there (the last two kept)
  s3/epoch      the default: one per epoch, uploaded

Time per step is the gap between step starts after WARMUP steps, epoch ends included (that is
where `s3/epoch` saves), so the mean counts every checkpoint. The ratio is against `none`.

    python -m bench.checkpoints --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.training import ARCH, CHILD_ENV, CLIPS, TASK, WARMUP, engine_loop
from training.build_tiny import build_tiny
from training.data.synthetic import make_dataset

VARIANTS = {"none": dict(checkpoint_every_steps=10**6), "local/step": dict(checkpoint_every_steps=1),
            "s3/step": dict(checkpoint_every_steps=1, upload=True), "s3/epoch": dict(checkpoint_every_steps=None, upload=True)}
EPOCHS = 3


def _child(variant: str, model: Path, data: Path, out: Path) -> dict:
    import torch

    from training import s3
    from training.result import read_result

    torch.set_num_threads(1)
    options = dict(VARIANTS[variant])
    if options.pop("upload", False):
        options["checkpoint_uri"] = s3.s3_uri(os.environ["QLORA_S3_BUCKET"], s3.checkpoints_prefix(out.name))
    marks: list[float] = []
    engine_loop(model, data, out, "", marks, epochs=EPOCHS, **options)
    gaps = [b - a for a, b in zip(marks[WARMUP:], marks[WARMUP + 1:])]
    result = read_result(out)
    size = sum(f.size_bytes for c in result.checkpoints for f in c.files) / max(1, len(result.checkpoints))
    return {"mean": statistics.fmean(gaps), "steps": len(marks), "checkpoint_bytes": size,
            "uploaded": all(c.uri for c in result.checkpoints) and bool(result.checkpoints)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.checkpoints")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args, _ = parser.parse_known_args(argv)
    if args.child:
        variant, model, data, out = args.child
        print(json.dumps(_child(variant, Path(model), Path(data), Path(out))))
        return

    from devstack.ports import free_ports
    from devstack.seaweedfs import SeaweedFS

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = make_dataset(work / "data", CLIPS, label_by="colour", size=32, frames=16, validation_fraction=0)
        model = build_tiny(ARCH, TASK, work / "model")
        ports = free_ports(10)
        server = SeaweedFS(work / "s3", s3_port=ports[0], master_port=ports[1], volume_port=ports[2],
                           filer_port=ports[3], admin_port=ports[4], grpc_ports=tuple(ports[5:]),
                           access_key="bench-" + secrets.token_hex(4), secret_key=secrets.token_urlsafe(24),
                           bucket="bench")
        server.start()
        try:
            server.wait_ready()
            env = {**os.environ, **CHILD_ENV, **server.settings.env()}
            runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
            for r in range(args.repeats):
                for variant in VARIANTS:
                    out = work / f"{variant.replace('/', '-')}-{r}"
                    done = subprocess.run([sys.executable, "-m", "bench.checkpoints", "--child", variant, str(model),
                                           str(data), str(out)], capture_output=True, text=True, env=env, timeout=600)
                    if done.returncode != 0:
                        raise RuntimeError(f"{variant} failed:\n{done.stderr[-3000:]}")
                    runs[variant].append(json.loads(done.stdout.strip().splitlines()[-1]))
        finally:
            server.stop()
    base = statistics.median(r["mean"] for r in runs["none"])
    rows = [("steps per run, runs per variant", f"{runs['none'][0]['steps']}, {args.repeats}")]
    for variant, results in runs.items():
        med = statistics.median(r["mean"] for r in results)
        spread = f"{min(r['mean'] for r in results):.4f}..{max(r['mean'] for r in results):.4f}"
        rows.append((f"{variant} s/step (median; min..max)", f"{med:.4f} ({spread})"))
        if variant != "none":
            rows.append((f"{variant} ratio vs none", f"{med / base:.3f}"))
            rows.append((f"{variant} checkpoint size KiB, all uploaded",
                         f"{results[0]['checkpoint_bytes'] / 1024:.0f}, {all(r['uploaded'] for r in results)}"))
    width = max(len(r[0]) for r in rows)
    print(f"{'measure'.ljust(width)}  value")
    for name, value in rows:
        print(f"{name.ljust(width)}  {value}")


if __name__ == "__main__":
    main()
