"""`python -m training evaluate` and `python -m training predict`: a trained adapter on a fresh base."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from training.errors import InputError
from training.loading import TRAINING_INFO_FILE, load_adapter_model, read_base_model
from training.model_info import ModelInfo


def load_adapter(base_dir: str | Path, adapter_dir: str | Path, *, quantization: str = "nf4", device=None):
    """A downloaded adapter on its base model, ready for inference (eval mode).

    `base_dir`: the base model's folder (the catalog model's weights, config, tokenizer and
    preprocessing); `adapter_dir`: a folder with every file of `GET /v1/trainings/{id}/adapter`
    (or `qlora train download ID -o DIR`). Returns the `peft.PeftModel` (the LoRA adapter loaded
    with `PeftModel.from_pretrained` onto the base); for a classification model the trained
    classification head is on it and `model.id2label` maps its outputs to labels (None for
    captioning). `quantization`: "nf4" (4-bit, as trained) or "none"; `device`: a
    `torch.device` (default: CUDA when available, else the CPU)."""
    from training.quantization import device as default_device

    base = read_base_model(Path(base_dir), source=str(base_dir))
    model, id2label = load_adapter_model(base, Path(adapter_dir), quantization, device or default_device())
    model.id2label = id2label or None
    return model


def _setup(args: argparse.Namespace):
    from transformers.utils import logging as hf_logging

    from training.quantization import compute_dtype, device
    from training.s3 import local_folder

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    adapter = local_folder(args.adapter, "adapter")
    base = read_base_model(local_folder(args.model, "model"), source=args.model)
    info = ModelInfo.load(adapter)
    train_info = json.loads((adapter / TRAINING_INFO_FILE).read_text()) if (adapter / TRAINING_INFO_FILE).is_file() else {}
    dev = device()
    # the head the training started from (its seed): what "base" is measured with, as in `run --evaluate`
    model, id2label = load_adapter_model(base, adapter, args.quantization, dev, head_seed=train_info.get("seed", 0))
    frames = args.frames or train_info.get("frames") or base.prep.frames
    task = getattr(args, "task", None) or (info.task if info else None) or train_info.get("task")
    if task is None:
        raise InputError("is needed: the adapter does not record its task", field="task")
    return base, model, id2label, frames, task, train_info, dev, compute_dtype(dev)


def sampling_fps(train_info: dict) -> float | None:
    """The rate of the training's fps frame sampling (None: it sampled `frames` uniformly), from
    the params its `training_info.json` records."""
    p = train_info.get("params") or {}
    return p.get("sampling_fps") if p.get("frame_sampling") == "fps" else None


def evaluate_command(args: argparse.Namespace) -> int:
    """The adapter and (unless --no-base) the base model on the held-out split: METRICS_FILE
    `{"task", "split", "adapter", "base", "held_out_examples"}` (+ `samples` for captioning),
    `final_*`/`base_*` metrics and the `evaluation/` artifacts (`training.evaluation_report`) on
    the training's MLflow run (--mlflow-run-id), the file uploaded to --output-uri."""
    from training.data.loader import ClipDataset, read_examples, split_examples
    from training.s3 import local_folder

    base, model, id2label, frames, task, train_info, dev, dtype = _setup(args)
    data_dir = local_folder(args.data, "data")
    rows = read_examples(data_dir, task)
    if args.split == "all":
        examples = [e for e, _ in rows]
    else:
        seed = args.seed if args.seed is not None else train_info.get("seed", 42)
        splits = split_examples(rows, task, seed, train_info.get("validation_fraction", 0.2))
        examples = splits.train if args.split == "train" else splits.held_out
    label2id = {l: i for i, l in id2label.items()} if id2label else None
    if label2id:
        unknown = sorted({e.label for e in examples} - set(label2id))
        if unknown:
            raise InputError(f"labels {', '.join(unknown)} are not among the adapter's labels", field="data")
    from training.data.frame_store import FrameStore
    from training.models.preprocess import size_key, store_resample
    from training.data.loader import BadClips
    from training.settings import get_settings

    # no pass before: clips are read once (the training's frame store holds them already), a clip
    # that does not decode is skipped and counted, as in training
    bad_clips = BadClips(len(examples), get_settings().max_bad_clip_fraction)
    fps = sampling_fps(train_info)  # the training's frame sampling (and so its frame store)
    dataset = ClipDataset(examples, task=task, family=base.family, prep=base.prep, tokenizer=base.tokenizer,
                          frames=frames, label2id=label2id, bad_clips=bad_clips, fps=fps,
                          store=FrameStore.open(data_dir, frames, size_key(base.prep, frames), store_resample(base.prep),
                                                fps=fps))
    batch_size = (train_info.get("params") or {}).get("batch_size") or 8
    from training.evaluation import evaluate
    from training.evaluation_report import SAMPLES

    adapter_metrics = evaluate(model, base.family, task, base.prep, dataset, dev=dev, dtype=dtype,
                               batch_size=batch_size, id2label=id2label, samples=SAMPLES)
    report = held_out_report(model, base, task, dataset, adapter_metrics, dev=dev, dtype=dtype,
                             batch_size=batch_size, id2label=id2label, with_base=args.with_base, split=args.split)
    from training.settings import get_settings

    uri = args.mlflow_uri if args.mlflow_uri is not None else get_settings().mlflow_tracking_uri
    text = publish_report(report, Path(args.output) if args.output else None, mlflow_uri=uri,
                          mlflow_run_id=args.mlflow_run_id, step=train_info.get("steps") or 0,
                          output_uri=args.output_uri)
    print(text)
    return 0


def held_out_report(model, base, task: str, dataset, adapter_metrics: dict, *, dev, dtype, batch_size: int,
                    id2label: dict[int, str] | None, with_base: bool = True, split: str = "validation",
                    should_stop=lambda: False) -> dict | None:
    """The evaluation report of `dataset` (METRICS_FILE's content): `adapter_metrics` (the
    adapter's, `training.evaluation.evaluate` with `samples=SAMPLES`) and, with `with_base`, the
    base model's: the same model with its adapter disabled (peft's `disable_adapter()`: the
    base weights and the classification head the training started from). Used by `evaluate`
    (a fresh process) and by `run --evaluate` (the training's process, its model already loaded).
    None when stopped midway."""
    from training.evaluation import evaluate
    from training.evaluation_report import SAMPLES, caption_samples

    report = {"task": task, "split": split, "held_out_examples": len(dataset), "adapter": adapter_metrics}
    if with_base:
        with model.disable_adapter():
            report["base"] = evaluate(model, base.family, task, base.prep, dataset, dev=dev, dtype=dtype,
                                      batch_size=batch_size, id2label=id2label, samples=SAMPLES,
                                      should_stop=should_stop)
        if not report["base"]:
            return None
    if task != "video_classification":
        report["samples"] = caption_samples(report)
    names = {e.file_name for e in dataset.examples}
    bad = dataset.bad_clips.failed if dataset.bad_clips is not None else {}
    if skipped := {name: reason for name, reason in bad.items() if name in names}:
        report["skipped_clips"] = skipped
    return report


def publish_report(report: dict, metrics_file: Path | None, *, mlflow_uri: str | None, mlflow_run_id: str | None,
                   step: int, output_uri: str | None) -> str:
    """Logs the report to the training's MLflow run (`final_*`/`base_*` metrics at `step`, the
    `evaluation/` artifacts), writes it to `metrics_file` and uploads that file under
    `output_uri` (beside the adapter); returns its JSON text."""
    text = json.dumps(report, indent=2)
    if mlflow_uri and mlflow_run_id:
        _log_final_metrics(mlflow_uri, mlflow_run_id, report, step)
        from training.evaluation_report import log_to_mlflow

        log_to_mlflow(mlflow_uri, mlflow_run_id, report)  # evaluation/: the report, tables, confusion matrix
    if metrics_file:
        metrics_file.parent.mkdir(parents=True, exist_ok=True)
        metrics_file.write_text(text + "\n")
        if output_uri:
            import shutil
            import tempfile

            from training.s3 import upload_folder

            with tempfile.TemporaryDirectory() as folder:  # the metrics file alone, under its name
                shutil.copy2(metrics_file, Path(folder) / metrics_file.name)
                upload_folder(Path(folder), output_uri)
    return text


def _numbers(metrics: dict) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _log_final_metrics(uri: str, run_id: str, report: dict, step: int) -> None:
    """`final_<metric>` (the adapter) and `base_<metric>` on the training's MLflow run."""
    import time

    from mlflow import MlflowClient
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric(f"final_{k}", v, now, step) for k, v in _numbers(report["adapter"]).items()]
    metrics += [Metric(f"base_{k}", v, now, step) for k, v in _numbers(report.get("base") or {}).items()]
    MlflowClient(tracking_uri=uri).log_batch(run_id, metrics=metrics)


class Predictor:
    """One adapter on its base model, labelling or captioning clips one at a time: what
    `python -m training predict` prints and what the registered MLflow model returns
    (`training.mlflow_model`), so both give the same predictions."""

    def __init__(self, args: argparse.Namespace) -> None:
        (self.base, self.model, self.id2label, self.frames, self.task, train_info, self.dev,
         self.dtype) = _setup(args)
        self.fps = sampling_fps(train_info)

    @classmethod
    def load(cls, model: str | Path, adapter: str | Path, *, quantization: str = "nf4",
             frames: int | None = None) -> Predictor:
        """`model`: the base model's folder or `s3://` URI; `adapter`: the adapter's."""
        return cls(argparse.Namespace(model=str(model), adapter=str(adapter), quantization=quantization,
                                      frames=frames))

    def predict(self, clip: str | Path) -> dict:
        """`{"clip", "label", "probabilities"}` (classification) or `{"clip", "caption"}`."""
        from training.data.loader import ClipDataset, Example
        from training.evaluation import classify, generate_captions

        base, id2label = self.base, self.id2label
        clip = Path(clip)
        if not clip.is_file():
            raise InputError(f"{clip} does not exist", field="clip")
        example = Example(clip.name, clip, label=next(iter(id2label.values())) if id2label else None, caption="")
        label2id = {l: i for i, l in id2label.items()} if id2label else None
        dataset = ClipDataset([example], task=self.task, family=base.family, prep=base.prep,
                              tokenizer=base.tokenizer, frames=self.frames, label2id=label2id, fps=self.fps)
        dataset.check_clips()
        if self.task == "video_classification":
            probs = classify(self.model, base.family, base.prep, dataset, 0, self.dev, self.dtype)
            best = int(probs.argmax())
            return {"clip": str(clip), "label": id2label[best],
                    "probabilities": {id2label[i]: round(float(p), 6) for i, p in enumerate(probs)}}
        caption = generate_captions(self.model, base.family, base.prep, dataset, [0], self.dev, self.dtype)[0]
        return {"clip": str(clip), "caption": caption}


def predict_command(args: argparse.Namespace) -> int:
    clip = Path(args.clip)
    if not clip.is_file():
        raise InputError(f"{clip} does not exist", field="clip")
    print(json.dumps(Predictor(args).predict(clip)))
    return 0
