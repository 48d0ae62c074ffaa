"""Command line of the training engine: `python -m training build-tiny|run|evaluate|predict`.

Exit codes (a contract for the Airflow task):
  0   success
  1   unexpected failure (traceback in the log)
  2   bad arguments or input (one line `error: ...` on stderr, before any training)
  75  stopped by SIGTERM/SIGINT: the current step finished, a checkpoint and the adapter so far
      were saved in the output folder, and `--resume` continues from there
"""

from __future__ import annotations

import argparse
import sys

from training.catalog import MODEL_TYPES

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT, EXIT_STOPPED = 0, 1, 2, 75


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse's own convention)
        self.exit(EXIT_BAD_INPUT, f"error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m training", description="QLoRA fine-tuning of video models.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    tiny = sub.add_parser("build-tiny", help="write a tiny random-weight model, tokenizer and preprocessing")
    tiny.add_argument("--architecture", required=True, choices=("video_llama", "flamingo"))
    tiny.add_argument("--task", required=True, choices=MODEL_TYPES)
    tiny.add_argument("--out", required=True)
    tiny.add_argument("--labels", type=_csv, default=[], help="comma-separated labels to record")
    tiny.add_argument("--catalog-id", help="catalog id to record (gives the rank limits to `run`)")
    tiny.add_argument("--seed", type=int, default=0)

    run = sub.add_parser("run", help="fine-tune with QLoRA, evaluate, save the adapter")
    run.add_argument("--model", required=True, help="model folder or s3:// URI")
    run.add_argument("--data", required=True, help="dataset folder or s3:// URI")
    run.add_argument("--task", required=True, choices=MODEL_TYPES)
    run.add_argument("--output", required=True, help="output folder")
    run.add_argument("--epochs", type=int, default=3)
    run.add_argument("--learning-rate", type=float, default=2e-4)
    run.add_argument("--batch-size", type=int, default=4)
    run.add_argument("--lora-rank", type=int, default=8)
    run.add_argument("--lora-alpha", type=int, default=None, help="default: the catalog's, else 2 x rank")
    run.add_argument("--lora-dropout", type=float, default=0.05)
    run.add_argument("--target-modules", type=_csv, default=[], help="default: the architecture's")
    run.add_argument("--quantization", choices=("nf4", "none"), default="nf4")
    run.add_argument("--frames", type=int, default=None, help="frames sampled per clip")
    run.add_argument("--seed", type=int, default=42)
    run.add_argument("--mlflow-uri", default=None, help="default: $MLFLOW_TRACKING_URI; none: no tracking")
    run.add_argument("--run-name", default=None)
    run.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --output")
    run.add_argument("--checkpoint-every", type=int, default=50, help="steps between checkpoints")
    run.add_argument("--validation-fraction", type=float, default=0.2,
                     help="held-out share when the table has no validation split")
    run.add_argument("--max-steps", type=int, default=None)
    run.add_argument("--warmup-ratio", type=float, default=0.0)
    run.add_argument("--weight-decay", type=float, default=0.0)
    run.add_argument("--no-gradient-checkpointing", dest="gradient_checkpointing", action="store_false")
    run.add_argument("--job-id", default=None, help="MLflow tag (default: $QLORA_JOB_ID)")
    run.add_argument("--experiment", default=None, help="MLflow experiment name")
    run.add_argument("--registered-model-name", default=None)
    run.add_argument("--output-uri", default=None, help="s3:// URI the output folder is uploaded to")
    run.add_argument("--step-delay", type=float, default=0.0, help=argparse.SUPPRESS)

    for name, help_text in (("evaluate", "metrics of an adapter on a dataset's held-out split"),
                            ("predict", "label or caption one clip")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--model", required=True)
        p.add_argument("--adapter", required=True, help="adapter folder written by `run`")
        p.add_argument("--quantization", choices=("nf4", "none"), default="nf4")
        p.add_argument("--frames", type=int, default=None)
        if name == "evaluate":
            p.add_argument("--data", required=True)
            p.add_argument("--task", choices=MODEL_TYPES, default=None, help="default: the adapter's")
            p.add_argument("--split", choices=("validation", "test", "train", "all"), default="validation")
            p.add_argument("--seed", type=int, default=None, help="split seed (default: the training's)")
            p.add_argument("--output", default=None, help="write the metrics JSON here")
        else:
            p.add_argument("--clip", required=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from training.config import ArgumentError  # light
    try:
        if args.command == "build-tiny":
            from training.build_tiny import build_tiny
            out = build_tiny(args.architecture, args.task, args.out, labels=args.labels,
                             catalog_id=args.catalog_id, seed=args.seed)
            print(f"wrote tiny {args.architecture} ({args.task}) model to {out}")
            return EXIT_OK
        if args.command == "run":
            from training.config import TrainArgs
            from training.trainer import run_training
            options = {k: v for k, v in vars(args).items() if k != "command"}
            return run_training(TrainArgs(**options))
        if args.command == "evaluate":
            from training.inference import evaluate_command
            return evaluate_command(args)
        from training.inference import predict_command
        return predict_command(args)
    except ArgumentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
