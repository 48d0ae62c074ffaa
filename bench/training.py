"""Training-engine benchmark (`python -m bench.training`): prints a table, asserts nothing.

1. seconds/step, like for like: `run_training` (the engine, MLflow off and MLflow on against a
   real local `mlflow server`, SQLite backend, file artifact root) vs a bare transformers + peft
   loop written here. Both run in their own process with one torch thread, on the same tiny
   4-bit model, the same seeded batches built inside the step (`collate` of the same dataset),
   the same optimizer, schedule and grad clipping. Wall clock is read at the start of every
   step (`collate` is the first thing a step does); a step's time is the gap to the next start.
   The first WARMUP steps and the gaps across an epoch end (the engine evaluates there) are
   excluded, identically for all variants. Each variant runs `--repeats` times, interleaved;
   the table shows the median of the per-run means.
2. memory: NF4 vs fp32 (= `--quantization none` on the CPU; bf16 on CUDA) footprint and peak RSS;
3. frames decoded per second: the engine's loader vs raw PyAV decode of every frame;
4. a 7B-size VideoLLaMA 3 (Qwen2.5-7B text + SigLIP-so400m/14 vision, published config values),
   random weights written shard by shard (host RAM stays ~3 GB), then trained by the engine
   itself for a few steps with 8 frames, NF4 vs bf16 LoRA: peak GPU memory and s/step. Needs
   CUDA; `--size tiny` runs the same code with tiny dimensions (on the CPU too) as a self-check.

    python -m bench.training                      # everything (section 4 only on CUDA)
    python -m bench.training --sections steps --repeats 5
    python -m bench.training --sections big --size tiny
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from training.build_tiny import build_tiny
from training.data.synthetic import make_dataset

TASK, ARCH, EPOCHS, BATCH, CLIPS, FRAMES, SEED, LR = "video_classification", "video_llama", 6, 4, 40, 4, 42, 2e-3
WARMUP = 3
VARIANTS = ("bare", "engine", "engine+mlflow")
CHILD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


# ---- 1. seconds per step ------------------------------------------------------------------
def step_times(marks: list[float], steps_per_epoch: int, warmup: int = WARMUP) -> list[float]:
    """Step durations from the step-start marks: gap k is step k; drops warm-up steps and the
    last step of each epoch (its gap holds the epoch-end evaluation of the engine)."""
    return [marks[k + 1] - marks[k] for k in range(warmup, len(marks) - 1) if (k + 1) % steps_per_epoch]


def _train_split(model: Path, data: Path):
    from training.data.loader import ClipDataset, read_examples, split_examples
    from training.loading import read_base_model

    base = read_base_model(model)
    splits = split_examples(read_examples(data, TASK), TASK, SEED, 0.2)
    label2id = {label: i for i, label in enumerate(sorted({e.label for e in splits.train + splits.held_out}))}
    train = ClipDataset(splits.train, task=TASK, family=base.family, prep=base.prep, tokenizer=base.tokenizer,
                        frames=FRAMES, label2id=label2id)
    train.check_clips()  # the engine decodes (and caches) every clip before training too
    return base, train, label2id


def bare_loop(model: Path, data: Path, marks: list[float]) -> None:
    """The same training without the engine: plain transformers + peft + torch."""
    import math

    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import get_linear_schedule_with_warmup

    from training.architectures import get_architecture
    from training.data.loader import collate, epoch_batches
    from training.modeling import attach_classifier, batch_loss
    from training.quantization import compute_dtype, device, load_base_model

    base, train, label2id = _train_split(model, data)
    arch = get_architecture(base.family.name)
    torch.manual_seed(SEED)
    dev = device()
    net = prepare_model_for_kbit_training(load_base_model(base.folder, base.family, "nf4", dev, ("classifier",)))
    attach_classifier(net, len(label2id), SEED)
    net = get_peft_model(net, LoraConfig(
        r=8, lora_alpha=16, lora_dropout=0.05, modules_to_save=[*base.family.trainable_modules, "classifier"],
        target_modules=arch.target_regex.format(targets="|".join(arch.default_target_modules))))
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=LR, weight_decay=0.0)
    total = math.ceil(len(train) / BATCH) * EPOCHS
    scheduler = get_linear_schedule_with_warmup(optimizer, 0, total)
    net.train()
    for epoch in range(EPOCHS):
        for indices in epoch_batches(len(train), BATCH, SEED, epoch):
            marks.append(time.perf_counter())
            batch = collate([train[j] for j in indices], base.tokenizer.pad_token_id)
            loss, _ = batch_loss(net, base.family, TASK, base.prep, batch, dev, compute_dtype(dev))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)


def _now() -> float:
    """A step-start mark: on CUDA, after the queued work of the previous step is done."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


def anon_rss_gib() -> float:
    """Resident anonymous memory of this process (Linux): what it really holds, without the
    pages of memory-mapped files such as a safetensors checkpoint being read."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def engine_loop(model: Path, data: Path, out: Path, mlflow_uri: str, marks: list[float], *,
                stop_at: int | None = None, rss: list[float] | None = None, tokens: list[int] | None = None,
                **extra) -> int:
    """`python -m training run` in this process, with a mark at the start of every step. With
    `stop_at`, the process sends itself SIGTERM as step `stop_at` starts: the engine finishes
    that step, saves its checkpoint and adapter and returns 75 (its stop path). With `rss`, the anonymous RSS is read at every mark too."""
    import training.trainer as trainer
    from training.data.loader import BatchFeeder
    from training.params import PARAM_NAMES, TrainingParams
    from training.run_args import RunArgs

    next_batch = BatchFeeder.next_batch

    def marked_next_batch(self, indices):
        marks.append(_now())
        if rss is not None:
            rss.append(anon_rss_gib())
        if len(marks) == stop_at:
            os.kill(os.getpid(), signal.SIGTERM)
        batch, count = next_batch(self, indices)
        if tokens is not None and batch is not None:
            tokens.append(int(batch["input_ids"].numel()))
        return batch, count

    # the loop's first call of a step (its batch, read ahead by the feeder); evaluation reads its own
    BatchFeeder.next_batch = marked_next_batch
    options = dict(model=str(model), data=str(data), task=TASK, output=str(out), mlflow_uri=mlflow_uri,
                   run_name=f"bench-{out.name}", experiment="bench-training")
    chosen = dict(epochs=EPOCHS, batch_size=BATCH, frames=FRAMES, learning_rate=LR, seed=SEED,
                  checkpoint_every_steps=10**6)
    chosen |= {k: v for k, v in extra.items() if k in PARAM_NAMES}
    options |= {k: v for k, v in extra.items() if k not in PARAM_NAMES}
    return trainer.run_training(RunArgs(params=TrainingParams(**chosen), **options))


def _child_steps(variant: str, model: Path, data: Path, out: Path, mlflow_uri: str) -> dict:
    torch.set_num_threads(1)
    marks: list[float] = []
    if variant == "bare":
        bare_loop(model, data, marks)
    else:
        engine_loop(model, data, out, mlflow_uri if variant == "engine+mlflow" else "", marks)
    times = step_times(marks, _steps_per_epoch(data))
    return {"steps": len(marks), "timed": len(times), "mean": statistics.fmean(times)}


def _steps_per_epoch(data: Path) -> int:
    from training.data.loader import read_examples, split_examples

    return -(-len(split_examples(read_examples(data, TASK), TASK, SEED, 0.2).train) // BATCH)


def _run_child(*argv: str, timeout: float = 600) -> dict:
    done = subprocess.run([sys.executable, "-m", "bench.training", "--child", *argv], capture_output=True,
                          text=True, env={**os.environ, **CHILD_ENV}, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"child {argv[0]} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def seconds_per_step(model: Path, data: Path, work: Path, repeats: int) -> list[tuple[str, str]]:
    from devstack.mlflow_server import MLflowServer
    from devstack.ports import free_port

    server = MLflowServer(work / "mlflow", free_port(), None)  # artifacts in a local folder
    server.start()
    try:
        server.wait_ready()
        runs: dict[str, list[float]] = {v: [] for v in VARIANTS}
        timed = 0
        for r in range(repeats):
            for variant in VARIANTS:
                out = work / f"{variant.replace('+', '-')}-{r}"
                result = _run_child("steps", variant, str(model), str(data), str(out), server.url)
                runs[variant].append(result["mean"])
                timed = result["timed"]
        system = _system_metric_keys(server.url)
    finally:
        server.stop()
    med = {v: statistics.median(t) for v, t in runs.items()}
    spread = {v: f"{min(t):.4f}..{max(t):.4f}" for v, t in runs.items()}
    rows = [(f"steps timed per run (of {EPOCHS * _steps_per_epoch(data)}), runs per variant",
             f"{timed}, {repeats}")]
    for variant, label in (("bare", "bare transformers+peft"), ("engine", "engine, MLflow off"),
                           ("engine+mlflow", "engine, MLflow on (local server)")):
        rows.append((f"{label} s/step (median; min..max)", f"{med[variant]:.4f} ({spread[variant]})"))
    rows += [("ratio engine/bare, MLflow off", f"{med['engine'] / med['bare']:.3f}"),
             ("ratio engine/bare, MLflow on", f"{med['engine+mlflow'] / med['bare']:.3f}"),
             ("system metrics in each MLflow run (keys)", system)]
    return rows


def _system_metric_keys(uri: str) -> str:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("bench-training")
    runs = client.search_runs([experiment.experiment_id]) if experiment else []
    counts = [sum(k.startswith("system/") for k in run.data.metrics) for run in runs]
    return ", ".join(map(str, counts)) or "no runs"


# ---- 2. memory, 3. decode ---------------------------------------------------------------------
def memory(model_dir: Path, quantization: str) -> tuple[float, float]:
    code = f"""
import resource, torch
from training.loading import read_base_model
from training.quantization import load_base_model, device
base = read_base_model(__import__('pathlib').Path({str(model_dir)!r}))
m = load_base_model(base.folder, base.family, {quantization!r}, device())
print(m.get_memory_footprint() / 2**20, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                         env={**os.environ, **CHILD_ENV}).stdout
    footprint, rss = out.strip().splitlines()[-1].split()
    return float(footprint), float(rss)


def memory_rows(model: Path) -> list[tuple[str, str]]:
    rows = []
    for q in ("nf4", "none"):
        footprint, rss = memory(model, q)
        label = "NF4" if q == "nf4" else ("bf16" if torch.cuda.is_available() else "fp32 (--quantization none)")
        rows += [(f"{label} footprint MiB", f"{footprint:.2f}"), (f"{label} peak RSS MiB", f"{rss:.0f}")]
    return rows


def decode_rows(data: Path) -> list[tuple[str, str]]:
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
    loader = sampled / (time.perf_counter() - t)
    return [("loader frames/s (8 sampled of 16, 32x32)", f"{loader:.0f}"),
            ("raw PyAV decode frames/s (all frames)", f"{raw_rate:.0f}"),
            ("loader clips/s vs raw clips/s", f"{loader / 8:.0f} vs {raw_rate / 16:.0f}")]


# ---- 4. 7B-size VideoLLaMA 3 ----------------------------------------------------------------
BIG_FRAMES, SHARD_BYTES = 8, 2 << 30
#: the 7B model on the CPU (`--big-on-cpu`): NF4 only (fp32 would need ~31 GiB), 3 steps (one
#: warm-up, one timed, the last cut short by SIGTERM so the slow generation eval is skipped)
CPU_7B_STEPS, CPU_7B_WARMUP = 3, 1
GiB = 2**30

#: the published checkpoints of the catalog's real entries: their stored config.json, processor
#: configs and special token ids (training/models/checkpoints/, sources in its README): VideoLLaMA 3
#: 7B (Qwen2.5-7B text, SigLIP patch-14 vision) and IDEFICS 9B Instruct (LLaMA-7B text, gated
#: cross-attention every 4th layer, ViT-H/14 vision, 6-layer perceiver with 64 latents)
BIG_CHECKPOINTS = {"video_llama": "lkhl/VideoLLaMA3-7B-Image-HF", "flamingo": "HuggingFaceM4/idefics-9b-instruct"}
BIG_MODELS = {"video_llama": "VideoLLaMA 3 7B", "flamingo": "IDEFICS 9B"}


def big_config(arch: str, size: str):
    """The published config of `arch`'s checkpoint ("7b"), or cut to a few layers ("tiny")."""
    from training.models.published import CUT, published_config

    return published_config(BIG_CHECKPOINTS[arch], None if size == "7b" else CUT[arch])


def write_random_model(size: str, folder: Path, arch: str = "video_llama") -> tuple[Path, int]:
    """A loadable model folder with random weights, written tensor by tensor in <= 2 GiB shards
    (the model itself is only built on the meta device), with the published checkpoint's
    processor configs (its real preprocessing), a stand-in tokenizer holding its special tokens
    at their published ids, and 8 frames. `size` "7b" is the published size of `arch`
    (VideoLLaMA 3 7B or IDEFICS 9B), "tiny" the same config cut to a few layers. Returns
    (folder, parameter count)."""
    import shutil

    from safetensors.torch import save_file

    from training.model_info import ModelInfo
    from training.models import get_family
    from training.models.base import Preprocessing
    from training.models.preprocess import IMAGE_PROCESSOR_FILE, VIDEO_PROCESSOR_FILE, read_preprocessing
    from training.models.published import checkpoint_folder, standin_tokenizer

    family = get_family(arch)
    tokenizer = standin_tokenizer(BIG_CHECKPOINTS[arch])
    config = big_config(arch, size)
    with torch.device("meta"):
        shapes = {name: t.shape for name, t in family.model_class()(config).state_dict().items()}
    gen_dev = "cuda" if torch.cuda.is_available() else "cpu"
    generator = torch.Generator(gen_dev).manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    weight_map, shard, shard_bytes, total, n_params = {}, {}, 0, 0, 0

    def flush() -> None:
        nonlocal shard, shard_bytes
        if shard:
            name = f"model-{len(set(weight_map.values())) + 1:05d}.safetensors"
            save_file(shard, str(folder / name), metadata={"format": "pt"})
            weight_map.update({k: name for k in shard})
            shard, shard_bytes = {}, 0

    for name, shape in shapes.items():
        if len(shape) <= 1:  # norm scales 1, biases (and IDEFICS' cross-attention gates) 0
            value = torch.ones(shape) if name.endswith("weight") else torch.zeros(shape)
        else:
            value = torch.empty(shape, device=gen_dev).normal_(0, 0.02, generator=generator)
        value = value.to(torch.bfloat16).cpu()
        shard[name] = value
        shard_bytes += value.numel() * value.element_size()
        total += value.numel() * value.element_size()
        n_params += value.numel()
        if shard_bytes >= SHARD_BYTES:
            flush()
    flush()
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
    config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    for name in (IMAGE_PROCESSOR_FILE, VIDEO_PROCESSOR_FILE):
        if (checkpoint_folder(BIG_CHECKPOINTS[arch]) / name).is_file():
            shutil.copyfile(checkpoint_folder(BIG_CHECKPOINTS[arch]) / name, folder / name)
    read_preprocessing(folder, arch, Preprocessing(architecture=arch, frames=BIG_FRAMES)).save_pretrained(folder)
    ModelInfo(architecture=arch, task="video_captioning", catalog_id=None, tiny=size != "7b",
              labels=[]).save(folder)
    return folder, n_params


def random_model(size: str, work: Path, arch: str) -> tuple[Path, int, bool]:
    """The random model of `arch` in `work`, written unless a complete one is there already
    (`--work DIR`: written once, e.g. while something else runs). -> (folder, parameters, written)"""
    folder = work / f"{arch}-{size}"
    index = folder / "model.safetensors.index.json"
    if index.is_file() and (folder / "qlora_model.json").is_file():  # written last
        return folder, json.loads(index.read_text())["metadata"]["total_size"] // 2, False  # bf16
    return (*write_random_model(size, folder, arch), True)


#: two epochs, evaluated once at the end: the second epoch's steps are timed (their frames come
#: from the in-memory cache in both loops, so the figures are the model's, not the decoder's)
BIG_PARAMS = dict(epochs=2, eval_every_epochs=2, batch_size=1, frames=BIG_FRAMES, learning_rate=2e-4)


def _big_steps_per_epoch(data: Path) -> int:
    from training.data.loader import read_examples, split_examples
    from training.params import TrainingParams

    task = "video_captioning"
    return len(split_examples(read_examples(data, task), task, TrainingParams(**BIG_PARAMS).seed, 0.2).train)


def bare_big_loop(model: Path, data: Path, marks: list[float], tokens: list[int]) -> None:
    """The big model's training without the engine, for the engine/bare ratio: plain
    transformers + peft + bitsandbytes with the LoRA settings, optimizer (paged 8-bit AdamW on
    CUDA), schedule, clipping and data the engine resolves for the same parameters."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import get_linear_schedule_with_warmup

    from training import params
    from training.architectures import get_architecture
    from training.data.loader import ClipDataset, collate, epoch_batches, read_examples, split_examples
    from training.loading import read_base_model
    from training.modeling import batch_loss
    from training.quantization import compute_dtype, device, load_base_model
    from training.trainer import _model_limits

    task = "video_captioning"
    base = read_base_model(model)
    arch = get_architecture(base.family.name)
    p = params.resolve(_model_limits(base), params.TrainingParams(**BIG_PARAMS))
    splits = split_examples(read_examples(data, task), task, p.seed, 0.2)
    train = ClipDataset(splits.train, task=task, family=base.family, prep=base.prep, tokenizer=base.tokenizer,
                        frames=BIG_FRAMES, label2id=None)
    torch.manual_seed(p.seed)
    dev, dtype = device(), compute_dtype(device())
    net = prepare_model_for_kbit_training(load_base_model(base.folder, base.family, "nf4", dev),
                                          use_gradient_checkpointing=True)
    net = get_peft_model(net, LoraConfig(
        r=p.lora_rank, lora_alpha=p.lora_alpha, lora_dropout=p.lora_dropout,
        modules_to_save=list(base.family.trainable_modules) or None,
        target_modules=arch.target_regex.format(targets="|".join(p.target_modules))))
    trainable = [t for t in net.parameters() if t.requires_grad]
    if dev.type == "cuda":
        import bitsandbytes as bnb

        optimizer = bnb.optim.PagedAdamW8bit(trainable, lr=p.learning_rate, weight_decay=p.weight_decay)
    else:
        optimizer = torch.optim.AdamW(trainable, lr=p.learning_rate, weight_decay=p.weight_decay)
    total = len(train) * p.epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, int(p.warmup_ratio * total), total)
    net.train()
    for indices in [b for epoch in range(p.epochs) for b in epoch_batches(len(train), 1, p.seed, epoch)]:
        marks.append(_now())
        batch = collate([train[j] for j in indices], base.tokenizer.pad_token_id)
        tokens.append(int(batch["input_ids"].numel()))
        loss, _ = batch_loss(net, base.family, task, base.prep, batch, dev, dtype)
        loss.backward()
        float(loss.detach())  # the loss a loop logs (the engine does too)
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    marks.append(_now())  # the end of the last step


def _child_big(quantization: str, model: Path, data: Path, out: Path, size: str) -> dict:
    """The engine (or, with quantization "bare", the bare loop in NF4) trains the big model for
    two epochs (batch 1, 8 frames, captioning), the second one's steps timed (but its last, whose
    end holds the engine's evaluation); the 7B model on the CPU for CPU_7B_STEPS steps, stopped
    before the evaluation."""
    from training.loading import read_base_model

    cuda = torch.cuda.is_available()
    cpu_7b = size == "7b" and not cuda
    missing = None
    if not cuda and not cpu_7b and quantization != "bare":  # self-check: every tensor written is expected
        base = read_base_model(model)
        _, info = base.family.model_class().from_pretrained(str(model), output_loading_info=True)
        missing = sorted(set(info["missing_keys"]) | set(info["unexpected_keys"]))
    if not cuda:
        torch.set_num_threads((os.cpu_count() or 1) if cpu_7b else 1)
    steps = CPU_7B_STEPS
    marks: list[float] = []
    rss: list[float] = []
    tokens: list[int] = []
    t0 = time.perf_counter()
    if quantization == "bare":
        bare_big_loop(model, data, marks, tokens)
        code = 0
    else:
        code = engine_loop(model, data, out, "", marks, stop_at=steps if cpu_7b else None, rss=rss, tokens=tokens,
                           task="video_captioning", quantization=quantization, **BIG_PARAMS)
    if cpu_7b:
        first, end = CPU_7B_WARMUP, len(marks) - 1
    else:  # gap k = step k's start to step k+1's: the steps of the second epoch but its last
        per_epoch = _big_steps_per_epoch(data)
        first, end = per_epoch, min(2 * per_epoch - 1, len(marks) - 1)
    times = [marks[k + 1] - marks[k] for k in range(first, end)]
    timed_tokens = tokens[first:first + len(times)]
    result = {"exit": code, "wall_s": time.perf_counter() - t0, "s_per_step": statistics.fmean(times),
              "s_per_step_median": statistics.median(times), "timed": len(times),
              "tokens_per_step": statistics.fmean(timed_tokens) if timed_tokens else None,
              "tokens_per_s": sum(timed_tokens) / sum(times) if times else None,
              "load_s": marks[0] - t0 if marks else None, "missing_or_unexpected": missing}
    if cuda:
        result.update(peak_allocated_gib=torch.cuda.max_memory_allocated() / GiB,
                      peak_reserved_gib=torch.cuda.max_memory_reserved() / GiB,
                      device=torch.cuda.get_device_name())
    else:
        import resource

        result.update(peak_rss_gib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                      training_anon_rss_gib=max(rss[1:] or rss or [float("nan")]))
    return result


def big_model_rows(size: str, work: Path, on_cpu: bool = False, arch: str = "video_llama",
                   variants: tuple[str, ...] = ("nf4", "none", "bare")) -> list[tuple[str, str]]:
    """Rows for one big model: NF4 and bf16 LoRA through the engine, the bare NF4 loop, and the
    engine/bare ratio (variants choose which run)."""
    cuda = torch.cuda.is_available()
    label = f"{BIG_MODELS[arch]}" if size == "7b" else f"tiny {arch} self-check"
    if size == "7b" and not cuda and not on_cpu:
        return [(f"{label} (NF4 vs bf16)",
                 "skipped: needs CUDA (--big-on-cpu: NF4 on the CPU, ~30 min; --size tiny: the self-check)")]
    data = make_dataset(work / f"big-data-{arch}", 12, size=64, frames=16)
    t = time.perf_counter()
    folder, n_params, written = random_model(size, work, arch)
    count = f"{n_params / 1e9:.2f} B" if n_params >= 1e8 else f"{n_params / 1e6:.2f} M"
    rows = [(f"{label} parameters, random checkpoint " + ("written in" if written else "reused"),
             f"{count}, {time.perf_counter() - t:.0f} s")]
    if variants == ("write",):
        return rows
    cpu_7b = size == "7b" and not cuda
    results: dict[str, dict] = {}
    for quantization in ("nf4",) if cpu_7b else variants:
        name = {"nf4": "NF4", "bare": "NF4 bare transformers+peft loop"}.get(quantization, "bf16" if cuda else "fp32")
        try:
            r = _run_child("big", quantization, str(folder), str(data), str(work / f"big-{arch}-{quantization}"),
                           size, timeout=4 * 3600 if cpu_7b else 1800)
        except RuntimeError as exc:  # e.g. out of memory: a figure, not the end of the benchmark
            rows.append((f"{label} {name}", f"failed: {str(exc).strip().splitlines()[-1][:200]}"))
            continue
        if r["exit"] != (75 if cpu_7b else 0):  # the CPU 7B run is stopped on purpose (exit 75)
            rows.append((f"{label} {name}", f"engine exit code {r['exit']}"))
            continue
        results[quantization] = r
        where = f"{os.cpu_count()} CPU threads, fp32 compute" if cpu_7b else ("CUDA" if cuda else "1 CPU thread")
        rows += [(f"{label} {name} start to first step s (load, quantize, data)", f"{r['load_s']:.0f}"),
                 (f"{label} {name} LoRA s/step mean / median ({r['timed']} timed: epoch 2, batch 1, {BIG_FRAMES} frames, "
                  f"{where})", f"{r['s_per_step']:.3f} / {r['s_per_step_median']:.3f}"),
                 (f"{label} {name} tokens/step, tokens/s", f"{r['tokens_per_step']:.0f}, {r['tokens_per_s']:.0f}")]
        if "peak_reserved_gib" in r:
            fits = "fits" if r["peak_reserved_gib"] + 0.5 <= 24 else "does NOT fit"  # + CUDA context
            rows += [(f"{label} {name} peak GPU memory allocated / reserved GiB",
                      f"{r['peak_allocated_gib']:.2f} / {r['peak_reserved_gib']:.2f} ({fits} in 24 GB)"),
                     (f"{label} {name} device", r["device"])]
        else:
            rows += [(f"{label} {name} RSS GiB: training (anonymous) / peak (with the mapped checkpoint)",
                      f"{r['training_anon_rss_gib']:.2f} / {r['peak_rss_gib']:.2f}")]
            if r["missing_or_unexpected"] is not None:
                rows.append((f"{label} {name} checkpoint keys missing/unexpected",
                             f"{r['missing_or_unexpected'] or 'none'}"))
    if "nf4" in results and "bare" in results:
        e, b = results["nf4"], results["bare"]
        rows.append((f"{label} ratio engine/bare s/step NF4 (mean, median)",
                     f"{e['s_per_step'] / b['s_per_step']:.3f}, {e['s_per_step_median'] / b['s_per_step_median']:.3f}"))
    if cpu_7b:
        rows.append((f"{label} fp32 (--quantization none on the CPU)", "skipped: ~31 GiB of weights"))
    return rows


# ---- main -------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.training")
    parser.add_argument("--sections", default="steps,memory,decode,big")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", choices=("7b", "tiny"), default="7b", help="size of the big-model section")
    parser.add_argument("--big-on-cpu", action="store_true",
                        help="without CUDA, still train the 7B model (NF4 only, a few steps; ~30 min on 2 cores)")
    parser.add_argument("--archs", default="video_llama",
                        help="big-model section: architectures, comma-separated (video_llama = VideoLLaMA 3 7B, "
                             "flamingo = IDEFICS 9B)")
    parser.add_argument("--variants", default="nf4,none,bare",
                        help="big-model section: nf4 and none (bf16) through the engine, bare = the NF4 bare loop; "
                             "write = only write the random checkpoints (into --work)")
    parser.add_argument("--work", type=Path, help="folder for the big-model section's checkpoints, kept and "
                                                  "reused (default: a temporary folder)")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args, _ = parser.parse_known_args(argv)  # `python -m bench training` passes its own argv
    if args.child:
        kind, *rest = args.child
        if kind == "steps":
            variant, model, data, out, uri = rest
            result = _child_steps(variant, Path(model), Path(data), Path(out), uri)
        else:
            quantization, model, data, out, size = rest
            result = _child_big(quantization, Path(model), Path(data), Path(out), size)
        print(json.dumps(result))
        return

    sections = set(args.sections.split(","))
    rows: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = make_dataset(work / "data", CLIPS, label_by="colour", size=32, frames=16, validation_fraction=0)
        model = build_tiny(ARCH, TASK, work / "model")
        if "steps" in sections:
            rows += seconds_per_step(model, data, work, args.repeats)
        if "memory" in sections:
            rows += memory_rows(model)
        if "decode" in sections:
            rows += decode_rows(data)
        if "big" in sections:
            for arch in args.archs.split(","):
                found = big_model_rows(args.size, args.work or work, on_cpu=args.big_on_cpu, arch=arch,
                                       variants=tuple(args.variants.split(",")))
                for name, value in found:  # as they come: a long run cut short still reports
                    print(f"# {name}: {value}", flush=True)
                rows += found
    width = max(len(r[0]) for r in rows)
    print(f"{'measure'.ljust(width)}  value")
    for name, value in rows:
        print(f"{name.ljust(width)}  {value}")


if __name__ == "__main__":
    main()
