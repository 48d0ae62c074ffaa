"""Training-engine benchmark (`python -m bench.training`): prints a table, asserts nothing.

1. seconds/step: `python -m training run` (MLflow on, local sqlite store) vs a bare
   transformers + peft loop written here, same tiny 4-bit model, data and batch size;
2. memory: NF4 vs fp32 (= `--quantization none` on the CPU; bf16 on CUDA) footprint and peak RSS;
3. frames decoded per second: the engine's loader vs raw PyAV decode of every frame;
4. on CUDA only: a 7B-size VideoLLaMA 3 from published config values, random weights, NF4 vs bf16.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import torch

from training.build_tiny import build_tiny
from training.data.synthetic import make_dataset

TASK, ARCH, EPOCHS, BATCH = "video_classification", "video_llama", 4, 4


def engine_seconds_per_step(model: Path, data: Path, work: Path) -> float:
    out = work / "engine"
    cmd = [sys.executable, "-m", "training", "run", "--model", str(model), "--data", str(data), "--task", TASK,
           "--output", str(out), "--epochs", str(EPOCHS), "--batch-size", str(BATCH), "--frames", "4",
           "--learning-rate", "2e-3", "--mlflow-uri", f"sqlite:///{work}/mlflow.db", "--checkpoint-every", "1000"]
    subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    stamps = [datetime.strptime(m, "%Y-%m-%d %H:%M:%S,%f") for m in
              re.findall(r"^(\S+ \S+) INFO step \d+/", (out / "train.log").read_text(), re.M)]
    return (stamps[-1] - stamps[1]).total_seconds() / (len(stamps) - 2)


def bare_seconds_per_step(model_dir: Path, data: Path) -> float:
    """The same work without the engine: load, LoRA, a plain loop over pre-built batches."""
    code = f"""
import time, torch
torch.set_num_threads(1)
from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
from training.loading import read_base_model
from training.data.loader import ClipDataset, read_examples, split_examples, collate, epoch_batches
from training.quantization import load_base_model, device
from training.modeling import attach_classifier, batch_loss
base = read_base_model(__import__('pathlib').Path({str(model_dir)!r}))
sp = split_examples(read_examples({str(data)!r}, {TASK!r}), {TASK!r}, 42, 0.2)
l2i = {{l: i for i, l in enumerate(sorted({{e.label for e in sp.train}}))}}
ds = ClipDataset(sp.train, task={TASK!r}, family=base.family, prep=base.prep, tokenizer=base.tokenizer, frames=4, label2id=l2i)
m = prepare_model_for_kbit_training(load_base_model(base.folder, base.family, 'nf4', device(), ('classifier',)))
attach_classifier(m, len(l2i), 0)
m = get_peft_model(m, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules=r'.*language_model\\..*\\.(q_proj|v_proj)$', modules_to_save=['model.projector', 'classifier']))
opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=2e-3)
batches = [collate([ds[i] for i in b], 0) for e in range({EPOCHS}) for b in epoch_batches(len(ds), {BATCH}, 42, e)]
m.train(); times = []
for b in batches:
    t = time.perf_counter(); loss, _ = batch_loss(m, base.family, {TASK!r}, base.prep, b, device(), torch.float32)
    loss.backward(); opt.step(); opt.zero_grad(); times.append(time.perf_counter() - t)
print(sum(times[1:]) / len(times[1:]))
"""
    done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    return float(done.stdout.strip().splitlines()[-1])


def memory(model_dir: Path, quantization: str) -> tuple[float, float]:
    code = f"""
import resource, torch
from training.loading import read_base_model
from training.quantization import load_base_model, device
base = read_base_model(__import__('pathlib').Path({str(model_dir)!r}))
m = load_base_model(base.folder, base.family, {quantization!r}, device())
print(m.get_memory_footprint() / 2**20, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    footprint, rss = out.strip().splitlines()[-1].split()
    return float(footprint), float(rss)


def decode_rates(data: Path) -> tuple[float, float]:
    import av

    from training.data.frames import decode_frames

    clips = sorted((data / "clips").glob("*.mp4"))
    t = time.perf_counter()
    raw = 0
    for clip in clips:
        with av.open(str(clip)) as c:
            raw += sum(1 for f in c.decode(video=0) if f.to_ndarray(format="rgb24") is not None)
    raw_rate = raw / (time.perf_counter() - t)
    t = time.perf_counter()
    sampled = sum(decode_frames(clip, 8).shape[0] for clip in clips)
    return sampled / (time.perf_counter() - t), raw_rate


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = make_dataset(work / "data", 40, label_by="colour", size=32, frames=16)
        model = build_tiny(ARCH, TASK, work / "model")
        rows = []
        engine, bare = engine_seconds_per_step(model, data, work), bare_seconds_per_step(model, data)
        rows += [("engine s/step (MLflow on)", f"{engine:.4f}"), ("bare transformers+peft s/step", f"{bare:.4f}"),
                 ("ratio engine/bare", f"{engine / bare:.3f}")]
        for q in ("nf4", "none"):
            footprint, rss = memory(model, q)
            label = "NF4" if q == "nf4" else ("bf16" if torch.cuda.is_available() else "fp32 (--quantization none)")
            rows += [(f"{label} footprint MiB", f"{footprint:.2f}"), (f"{label} peak RSS MiB", f"{rss:.0f}")]
        loader, raw = decode_rates(data)
        rows += [("loader frames/s (8 sampled of 16, 32x32)", f"{loader:.0f}"),
                 ("raw PyAV decode frames/s (all frames)", f"{raw:.0f}"),
                 ("loader clips/s vs raw clips/s", f"{loader / 8:.0f} vs {raw / 16:.0f}")]
        if torch.cuda.is_available():
            rows.append(("7B video_llama", "NOT IMPLEMENTED yet (CUDA present)"))
        else:
            rows.append(("7B video_llama (NF4 vs bf16)", "skipped: no CUDA device"))
        width = max(len(r[0]) for r in rows)
        print(f"{'measure'.ljust(width)}  value")
        for name, value in rows:
            print(f"{name.ljust(width)}  {value}")


if __name__ == "__main__":
    main()
