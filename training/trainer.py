"""`python -m training run`: the QLoRA fine-tuning loop, in one readable function.

Stop and resume: SIGTERM or SIGINT sets a flag; the loop finishes the step it is in, saves a
checkpoint (trainable weights, optimizer, scheduler, RNG states, step) under
`OUTPUT/checkpoints/` and the adapter so far in OUTPUT, marks the MLflow run KILLED with the
reason, and exits with code 75 (see training/cli.py). A second signal exits at once.
`--resume` reloads the last checkpoint and replays the same seeded batch order, so the result
equals an uninterrupted run with the same seed.

What the run produced is reported in `OUTPUT/result.json` (`training.result`), updated as soon
as each part is known. The run trains and saves (and uploads, with `--output-uri`) the adapter;
its held-out metrics against the base model are `python -m training evaluate`'s job.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import torch

from training import params
from training.architectures import get_architecture
from training.catalog import load_catalog
from training.data.loader import (BadClips, BatchFeeder, ClipDataset, epoch_batches, read_examples,
                                  split_examples, trusted_clips)
from training.errors import InputError
from training.loading import LABEL_MAP_FILE, TRAINING_INFO_FILE, read_base_model
from training.model_info import ModelInfo
from training.params import ModelLimits, TrainingParams
from training.result import (ADAPTER_MARKER, EXIT_OK, EXIT_STOPPED, LOG_FILE, RESULT_FILE, Checkpoint, EngineResult,
                             RunStatus, file_entries, read_result, write_result)
from training.run_args import RunArgs
from training.settings import get_settings

log = logging.getLogger("training")
CHECKPOINTS = "checkpoints"
#: checkpoints kept, in the output folder and under `--checkpoint-uri` alike (older ones deleted)
KEEP_CHECKPOINTS = 2


class StopFlag:
    """Set by SIGTERM/SIGINT; a second signal raises KeyboardInterrupt (exit without saving)."""

    def __init__(self) -> None:
        self.reason: str | None = None

    def __bool__(self) -> bool:
        return self.reason is not None

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, _frame) -> None:
        name = signal.Signals(signum).name
        if self.reason is not None:
            raise KeyboardInterrupt(f"second {name}")
        self.reason = f"stopped by {name}"
        log.warning("%s: finishing the current step, then saving a checkpoint and the adapter", name)


def setup_logging(output: Path) -> None:
    output.mkdir(parents=True, exist_ok=True)
    logger = logging.getLogger("training")
    logger.setLevel(logging.INFO)
    logger.handlers.clear()
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s")
    for handler in (logging.StreamHandler(sys.stderr), logging.FileHandler(output / LOG_FILE)):
        handler.setFormatter(fmt)
        logger.addHandler(handler)
    logger.propagate = False
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    import warnings

    # gradient checkpointing of frozen (vision) blocks and deprecations: noise in a job log
    warnings.filterwarnings("ignore", message=".*requires_grad=True.*")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*use_reentrant.*")


def _seed_all(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _model_limits(base) -> ModelLimits:
    entry = load_catalog().get(base.catalog_id) if base.catalog_id else None
    if entry:
        return ModelLimits.of_catalog(entry)
    return ModelLimits.of_architecture(get_architecture(base.family.name), base.prep.frames)


def _tracking_uri(args: RunArgs) -> str | None:
    if args.mlflow_uri is not None:
        return args.mlflow_uri or None
    return get_settings().mlflow_tracking_uri


def _trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(output: Path, model, optimizer, scheduler, step: int, extra: dict) -> Path:
    from safetensors.torch import save_file

    root = output / CHECKPOINTS
    final = root / f"step-{step:07d}"
    tmp = root / f".tmp-{step:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(_trainable_state(model), str(tmp / "trainable.safetensors"))
    state = {"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "rng_cpu": torch.get_rng_state(),
             "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None, **extra}
    torch.save(state, tmp / "state.pt")
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    (root / "latest").write_text(final.name + "\n")
    older = sorted(p for p in root.glob("step-*") if p != final)
    for old in older[:max(0, len(older) - (KEEP_CHECKPOINTS - 1))]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(output: Path) -> Path | None:
    marker = output / CHECKPOINTS / "latest"
    if marker.is_file():
        path = output / CHECKPOINTS / marker.read_text().strip()
        if (path / "state.pt").is_file():
            return path
    return None


def load_checkpoint(path: Path, model, optimizer, scheduler, state: dict | None = None) -> dict:
    """Restores `path` into the model, optimizer, scheduler and RNG; `state`: its `state.pt`
    when the caller read it already."""
    from safetensors.torch import load_file

    weights = load_file(str(path / "trainable.safetensors"))
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value.to(params[name].device, params[name].dtype))
    state = state if state is not None else torch.load(path / "state.pt", weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng_cpu"])
    if state.get("rng_cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng_cuda"])
    return state


def _progress_bar(total: int, initial: int):
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)


def run_training(args: RunArgs) -> int:
    """Validates everything, trains, saves (and uploads) the adapter; returns the exit code.
    Bad input raises `InputError` / `params.InvalidParams` before any training (the CLI's exit 2),
    after recording it as a failed result."""
    args.validate()
    output = Path(args.output)
    setup_logging(output)
    previous = read_result(output) if args.resume else None  # a resumed run keeps its checkpoints
    result = EngineResult(checkpoints=previous.checkpoints) if previous else EngineResult()
    try:
        return _run(args, output, result)
    except (InputError, params.InvalidParams) as exc:
        result.status, result.error = RunStatus.FAILED, str(exc)
        write_result(output, result)
        raise
    except BaseException as exc:
        if result.status == RunStatus.RUNNING:
            result.status, result.error = RunStatus.FAILED, f"{type(exc).__name__}: {exc}"
            write_result(output, result)
        raise


def _run(args: RunArgs, output: Path, result: EngineResult) -> int:
    stop = StopFlag()
    stop.install()
    started = time.time()

    # ---- inputs, all checked before any training -------------------------------------------
    from training.s3 import local_folder

    base = read_base_model(local_folder(args.model, "model"), source=args.model)
    arch = get_architecture(base.family.name)
    p: TrainingParams = params.resolve(_model_limits(base), args.params)  # every default filled in
    frames = p.frames or base.prep.frames
    fps = p.sampling_fps if p.frame_sampling == "fps" else None  # None: `frames` uniformly
    result.params = p.model_dump()

    data_dir = local_folder(args.data, "data")
    splits = split_examples(read_examples(data_dir, args.task), args.task, p.seed, args.validation_fraction)
    label2id = id2label = None
    if args.task == "video_classification":
        labels = sorted({e.label for e in splits.train + splits.held_out})
        if len(labels) < 2:
            raise InputError(f"video_classification needs at least 2 labels, the dataset has {len(labels)}",
                             field="data")
        label2id = {label: i for i, label in enumerate(labels)}
        id2label = {i: label for label, i in label2id.items()}
    # no pass over the clips here: they are decoded as batches need them (issue 16)
    from training.data.frame_store import FrameStore
    from training.models.preprocess import size_key, store_resample

    bad_clips = BadClips(len(splits.train) + len(splits.held_out), get_settings().max_bad_clip_fraction)
    store = FrameStore.open(data_dir, frames, size_key(base.prep, frames), store_resample(base.prep), fps=fps)
    common = dict(task=args.task, family=base.family, prep=base.prep, tokenizer=base.tokenizer, frames=frames,
                  label2id=label2id, store=store, bad_clips=bad_clips, fps=fps)
    train_set, held_set = ClipDataset(splits.train, **common), ClipDataset(splits.held_out, **common)
    log.info("data: %d train / %d held-out clips (%s split), %s; %s; frame store %s",
             len(train_set), len(held_set), splits.source,
             f"{frames} frames per clip" if fps is None else f"{fps:g} frames a second, at most {frames} per clip",
             trusted_clips(args.clip_report or _report_beside(data_dir), splits.train + splits.held_out, bad_clips),
             store.folder if store else "off")

    # one optimizer step = `gradient_accumulation_steps` batches
    batches_per_epoch = math.ceil(len(train_set) / p.batch_size)
    steps_per_epoch = math.ceil(batches_per_epoch / p.gradient_accumulation_steps)
    total_steps = min(steps_per_epoch * p.epochs, p.max_steps or 10**12)
    result.total_steps = total_steps
    checkpoint = latest_checkpoint(output) if args.resume else None
    if args.resume and checkpoint is None:
        log.info("--resume: no checkpoint in %s, starting from step 0", output)
    state = torch.load(checkpoint / "state.pt", weights_only=False) if checkpoint else None
    step = state["step"] if state else 0

    # the batches this run will read, in the loop's order, decoded ahead of it by worker processes
    # while the model loads (started before the model and the tracker's thread, so they fork a
    # small process with no other thread running)
    workers = get_settings().data_worker_count
    feeder = BatchFeeder(train_set, _planned_batches(len(train_set), p, steps_per_epoch, total_steps, step),
                         base.tokenizer.pad_token_id, workers=workers, seed=p.seed)
    log.info("decoding: %s", f"{workers} worker processes ahead of the loop (QLORA_DATA_WORKERS)" if workers
             else "in the training process (QLORA_DATA_WORKERS=0)")

    # ---- model -----------------------------------------------------------------------------
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import get_linear_schedule_with_warmup

    from training.evaluation import evaluate
    from training.modeling import attach_classifier, batch_loss
    from training.quantization import compute_dtype, device, load_base_model
    from training.tracking import make_tracker

    _seed_all(p.seed)
    dev, dtype = device(), compute_dtype(device())
    model = load_base_model(base.folder, base.family, args.quantization, dev, extra_skip=("classifier",))
    if args.quantization == "nf4":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=args.gradient_checkpointing)
    elif args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    keep = list(base.family.trainable_modules)
    if label2id:
        attach_classifier(model, len(label2id), p.seed)
        keep.append("classifier")
    lora = LoraConfig(r=p.lora_rank, lora_alpha=p.lora_alpha, lora_dropout=p.lora_dropout,
                      target_modules=arch.target_regex.format(targets="|".join(p.target_modules)),
                      modules_to_save=keep or None)
    try:
        model = get_peft_model(model, lora)
    except ValueError as exc:
        raise InputError(f"{', '.join(p.target_modules)}: {exc}", field="target_modules") from None
    trainable = [t for t in model.parameters() if t.requires_grad]
    n_trainable, n_total = sum(t.numel() for t in trainable), sum(t.numel() for t in model.parameters())
    log.info("model: %s (%s), %s on %s, LoRA r=%d alpha=%d targets=%s, %d trainable / %d parameters",
             base.config.model_type, base.family.name, args.quantization, dev.type, p.lora_rank, p.lora_alpha,
             ",".join(p.target_modules), n_trainable, n_total)

    if dev.type == "cuda" and args.quantization == "nf4":
        import bitsandbytes as bnb

        optimizer = bnb.optim.PagedAdamW8bit(trainable, lr=p.learning_rate, weight_decay=p.weight_decay)
    else:
        optimizer = torch.optim.AdamW(trainable, lr=p.learning_rate, weight_decay=p.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(p.warmup_ratio * total_steps), total_steps)

    run_id = None
    if checkpoint:
        load_checkpoint(checkpoint, model, optimizer, scheduler, state)
        run_id = state.get("mlflow_run_id")
        log.info("resumed from %s (step %d of %d)", checkpoint.name, step, total_steps)

    tracker = make_tracker(_tracking_uri(args))
    job_id = args.job_id or get_settings().job_id or ""
    tags = {"job_id": job_id, "dataset": args.data, "base_model": base.catalog_id or args.model,
            "task": args.task, "architecture": base.family.name}
    tracker.start(experiment=args.experiment or "qlora-training", run_name=args.run_name, params={
        **params.mlflow_params(p), **args.engine_options(),
        "train_examples": len(train_set), "held_out_examples": len(held_set), "split_source": splits.source,
        "trainable_parameters": n_trainable, "total_parameters": n_total, "device": dev.type,
        "total_steps": total_steps}, tags=tags, run_id=run_id)
    result.mlflow_run_id, result.mlflow_experiment_id = tracker.run_id, tracker.experiment_id
    result.step = step
    if checkpoint:
        tracker.set_tags({"resumed_from_step": str(step)})

    def clip_skipped(name: str, reason: str, count: int) -> None:  # log line: BadClips; here MLflow + manifest
        tracker.log_metrics({"skipped_clips": count}, step)
        tracker.set_tags({"skipped_clips": ", ".join(list(bad_clips.failed)[:20])})
        result.skipped_clips = dict(bad_clips.failed)
        write_result(output, result)

    bad_clips.on_skip = clip_skipped
    write_result(output, result)  # the run is known before the first step

    last_loss: float | None = None
    last_eval: dict[str, float] = {}
    final_eval: dict = {}  # the adapter's full metrics after the last step (for --evaluate's report)

    def checkpoint_now(reason: str) -> None:
        from datetime import datetime, timezone

        folder = save_checkpoint(output, model, optimizer, scheduler, step,
                                 {"mlflow_run_id": tracker.run_id, "reason": reason})
        entry = Checkpoint(step=step, epoch=round(step / steps_per_epoch, 4), name=folder.name,
                           created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                           metrics={**({"train_loss": last_loss} if last_loss is not None else {}),
                                    **{k if k.startswith("eval_") else f"eval_{k}": v for k, v in last_eval.items()}},
                           files=file_entries(folder))
        if args.checkpoint_uri:
            entry.uri = _upload_checkpoint(folder, args.checkpoint_uri)
        kept = {c.name for c in result.checkpoints} & {f.name for f in (output / CHECKPOINTS).glob("step-*")}
        dropped = [c for c in result.checkpoints if c.name not in kept and c.name != folder.name]
        result.checkpoints = [c for c in result.checkpoints if c.name in kept and c.name != folder.name]
        result.checkpoints.append(entry)
        result.step = step
        tracker.flush()  # the metrics up to its step reach MLflow before it is listed: a resume leaves no gap
        write_result(output, result)  # lists the new one only once it is uploaded
        for old in dropped:  # then the ones no longer listed leave S3 too
            if old.uri:
                _delete_uploaded(old.uri)

    def save_and_upload() -> None:
        save_adapter(output, model, base, args, p, label2id, splits, frames, step, total_steps)
        files = _adapter_files(output)
        result.adapter_files = sorted(f.name for f in files.iterdir())
        result.adapter_manifest = file_entries(files)
        if args.output_uri:  # S3 down for a while (a restart) is waited out, within a bound
            from training.s3 import upload_folder_retrying

            within = 0.0 if stop else get_settings().adapter_upload_retry_s  # a stop has seconds, not minutes
            log.info("uploaded %d files to %s", upload_folder_retrying(files, args.output_uri, within),
                     args.output_uri)
            result.output_uri = args.output_uri

    # ---- the loop --------------------------------------------------------------------------
    bar = _progress_bar(total_steps, step)
    model.train()
    window_start, window_samples = time.perf_counter(), 0
    status = "FINISHED"
    try:
        first_epoch = step // steps_per_epoch
        for epoch in range(first_epoch, p.epochs):
            batches = list(epoch_batches(len(train_set), p.batch_size, p.seed, epoch))
            groups = [batches[k:k + p.gradient_accumulation_steps]
                      for k in range(0, len(batches), p.gradient_accumulation_steps)]
            for i, group in enumerate(groups):
                if epoch * steps_per_epoch + i < step:
                    continue  # done before the checkpoint we resumed from
                if stop or step >= total_steps:
                    break
                step_loss, samples = 0.0, 0
                for indices in group:
                    batch, count = feeder.next_batch(indices)  # skips (and counts) clips that do not decode
                    if batch is None:
                        continue
                    loss, _ = batch_loss(model, base.family, args.task, base.prep, batch, dev, dtype)
                    (loss / len(group)).backward()
                    step_loss += float(loss.detach()) / len(group)
                    samples += count
                torch.nn.utils.clip_grad_norm_(trainable, 1.0)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                window_samples += samples
                now = time.perf_counter()
                metrics = {"loss": step_loss, "learning_rate": scheduler.get_last_lr()[0],
                           "samples_per_second": window_samples / max(now - window_start, 1e-9),
                           "progress": step / total_steps, "epoch": epoch + (i + 1) / steps_per_epoch}
                window_start, window_samples = now, 0
                last_loss = step_loss
                tracker.log_metrics(metrics, step)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{metrics['loss']:.4f}", epoch=epoch + 1)
                else:
                    log.info("step %d/%d epoch %d loss %.4f lr %.2e %.1f samples/s progress %.3f", step, total_steps,
                             epoch + 1, metrics["loss"], metrics["learning_rate"], metrics["samples_per_second"],
                             metrics["progress"])
                if p.checkpoint_every_steps and step % p.checkpoint_every_steps == 0 and step < total_steps:
                    checkpoint_now("periodic")
                if args.step_delay:
                    time.sleep(args.step_delay)
            if stop:
                break
            epoch_ended = step == min((epoch + 1) * steps_per_epoch, total_steps)
            if epoch_ended and ((epoch + 1) % p.eval_every_epochs == 0 or step >= total_steps):
                from training.evaluation_report import SAMPLES

                metrics = evaluate(model, base.family, args.task, base.prep, held_set, dev=dev, dtype=dtype,
                                   batch_size=p.batch_size, id2label=id2label, should_stop=lambda: bool(stop),
                                   samples=SAMPLES if step >= total_steps else 5)
                if metrics:
                    log.info("epoch %d eval: %s", epoch + 1, _numbers(metrics))
                    tracker.log_metrics({f"epoch_{k}": v for k, v in _numbers(metrics).items()}, step)
                    last_eval = _numbers(metrics)
                    if step >= total_steps:
                        final_eval = metrics
            if epoch_ended and p.checkpoint_every_steps is None and step < total_steps and not stop:
                checkpoint_now("epoch")
            if step >= total_steps:
                break

        if bar is not None:
            bar.close()
            bar = None
        if stop:  # Airflow SIGKILLs ~5 s after its SIGTERM: what a resume and the user need comes first
            checkpoint_now(stop.reason or "stopped")
            save_and_upload()
            result.status, result.error = RunStatus.STOPPED, f"{stop.reason} at step {step} of {total_steps}"
            write_result(output, result)
            log.warning("%s at step %d/%d: checkpoint and adapter saved in %s; exit code %d", stop.reason, step,
                        total_steps, output, EXIT_STOPPED)
            tracker.set_tags({"stop_reason": stop.reason, "stopped_at_step": str(step)})
            status = "KILLED"  # (the log stays in the task's log; no upload of it in this window)
            return EXIT_STOPPED

        save_and_upload()
        tracker.log_artifacts(_adapter_files(output), "adapter")
        log.info("done in %.1f s: %s", time.time() - started, output)
        if args.evaluate and held_set.examples:
            evaluate_here(args, output, model, base, held_set, final_eval, dev=dev, dtype=dtype,
                          batch_size=p.batch_size, id2label=id2label, tracker=tracker, step=step,
                          should_stop=lambda: bool(stop))
        tracker.log_file(output / LOG_FILE, "logs")
        result.status, result.step = RunStatus.COMPLETED, step
        write_result(output, result)
        return EXIT_OK
    except KeyboardInterrupt:
        status = "KILLED"
        log.warning("interrupted twice: exiting without saving")
        result.status, result.error = RunStatus.STOPPED, "interrupted twice: nothing saved"
        write_result(output, result)
        return EXIT_STOPPED
    except BaseException:
        status = "FAILED"
        raise
    finally:
        feeder.close()
        if bar is not None:
            bar.close()
        tracker.end(status)


def evaluate_here(args: RunArgs, output: Path, model, base, held_set: ClipDataset, adapter_metrics: dict, *, dev,
                  dtype, batch_size: int, id2label, tracker, step: int, should_stop) -> Path | None:
    """`--evaluate`: the evaluation report of the held-out split (the adapter's metrics of the
    last epoch's evaluation, the base model's with the adapter disabled), as `python -m training
    evaluate` writes it: METRICS_FILE in `output` (uploaded under `output_uri`), `final_*`,
    `base_*` and `evaluation/` in the MLflow run. A failure or a stop midway is logged and
    leaves no METRICS_FILE (the DAG's `evaluate` task then runs the evaluation itself): the
    adapter is complete and uploaded already. Returns the file, or None."""
    from training.evaluation import evaluate
    from training.evaluation_report import SAMPLES
    from training.inference import held_out_report, publish_report
    from training.result import METRICS_FILE

    started = time.time()
    try:
        if not adapter_metrics:  # no evaluation after the last step (eval_every_epochs did not fall on it)
            adapter_metrics = evaluate(model, base.family, args.task, base.prep, held_set, dev=dev, dtype=dtype,
                                       batch_size=batch_size, id2label=id2label, samples=SAMPLES,
                                       should_stop=should_stop)
        report = held_out_report(model, base, args.task, held_set, adapter_metrics, dev=dev, dtype=dtype,
                                 batch_size=batch_size, id2label=id2label, should_stop=should_stop) \
            if adapter_metrics else None
        if report is None:
            log.warning("evaluation stopped before its end: no %s", METRICS_FILE)
            return None
        tracker.flush()
        publish_report(report, output / METRICS_FILE, mlflow_uri=_tracking_uri(args), mlflow_run_id=tracker.run_id,
                       step=step, output_uri=args.output_uri)
    except Exception as exc:  # the training is done and uploaded: a separate evaluation can still follow
        log.warning("evaluation after training failed, no %s: %s: %s", METRICS_FILE, type(exc).__name__, exc)
        (output / METRICS_FILE).unlink(missing_ok=True)
        return None
    log.info("evaluated adapter and base model on %d held-out clips in %.1f s: %s", len(held_set),
             time.time() - started, METRICS_FILE)
    return output / METRICS_FILE


def _planned_batches(n: int, p: TrainingParams, steps_per_epoch: int, total_steps: int,
                     step: int) -> list[list[int]]:
    """The batches the loop below reads from `step` on, in its order (each epoch's seeded
    permutation, grouped by `gradient_accumulation_steps`, until `total_steps`)."""
    plan: list[list[int]] = []
    for epoch in range(step // steps_per_epoch, p.epochs):
        batches = epoch_batches(n, p.batch_size, p.seed, epoch)
        for i in range(0, len(batches), p.gradient_accumulation_steps):
            if epoch * steps_per_epoch + i // p.gradient_accumulation_steps < step:
                continue
            if step >= total_steps:
                return plan
            plan += batches[i:i + p.gradient_accumulation_steps]
            step += 1
    return plan


def _report_beside(data_dir: Path) -> str | None:
    """The validation report beside a dataset's local `files/` folder (the worker cache), if any."""
    from training.s3 import dataset_report_beside

    report = dataset_report_beside(data_dir)
    return str(report) if data_dir.name == "files" and report.is_file() else None


def _upload_checkpoint(folder: Path, checkpoint_uri: str) -> str | None:
    """Uploads a checkpoint folder under `checkpoint_uri`; its URI, or None when S3 refused (the
    training goes on: the checkpoint stays on the worker, the log says why)."""
    from training.s3 import upload_folder

    uri = checkpoint_uri.rstrip("/") + f"/{folder.name}/"
    started = time.perf_counter()
    try:
        count = upload_folder(folder, uri)
    except Exception as exc:  # a lost checkpoint upload must not lose the training
        log.warning("could not upload checkpoint %s to %s: %s", folder.name, uri, exc)
        return None
    log.info("checkpoint %s: %d files uploaded to %s in %.2f s", folder.name, count, uri,
             time.perf_counter() - started)
    return uri


def _delete_uploaded(uri: str) -> None:
    from training import s3

    try:
        bucket, key = s3.split_s3_uri(uri)
        s3.delete_prefix(s3.client(), bucket, key)
    except Exception as exc:
        log.warning("could not delete the old checkpoint %s: %s", uri, exc)


def _numbers(metrics: dict) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _adapter_files(output: Path) -> Path:
    """A folder with only the files of the adapter (not checkpoints or logs), for upload."""
    folder = output / ".adapter"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    for path in output.iterdir():
        if path.is_file() and path.name not in (LOG_FILE, RESULT_FILE) and not path.name.startswith("."):
            os.link(path, folder / path.name) if hasattr(os, "link") else shutil.copy2(path, folder / path.name)
    return folder


def save_adapter(output: Path, model, base, args: RunArgs, p: TrainingParams, label2id, splits, frames, step,
                 total_steps) -> None:
    """adapter_model.safetensors + adapter_config.json, tokenizer, preprocessing, label map."""
    model.save_pretrained(str(output))
    base.tokenizer.save_pretrained(str(output))
    prep = base.prep
    prep.frames = frames
    prep.save_pretrained(output)
    if label2id:
        (output / LABEL_MAP_FILE).write_text(json.dumps(
            {"label2id": label2id, "id2label": {str(i): l for l, i in label2id.items()}}, indent=2) + "\n")
    ModelInfo(architecture=base.family.name, task=args.task, catalog_id=base.catalog_id,
              labels=sorted(label2id or [])).save(output)
    info = {"base_model": args.model, "catalog_id": base.catalog_id, "task": args.task, "seed": p.seed,
            "validation_fraction": args.validation_fraction, "split_source": splits.source, "frames": frames,
            "lora_rank": p.lora_rank, "lora_alpha": p.lora_alpha, "target_modules": p.target_modules,
            "quantization": args.quantization, "steps": step, "total_steps": total_steps,
            "complete": step >= total_steps, "params": p.model_dump()}
    (output / TRAINING_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
