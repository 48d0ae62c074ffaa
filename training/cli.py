"""Command line of the training engine: `python -m training build-tiny|run|evaluate|predict`.

The exit codes and the result manifest are the contract of `training.result`. This is the only
place that turns the library's domain errors (`training.errors.InputError`,
`training.params.InvalidParams`) into option names and exit code 2.
"""

from __future__ import annotations

import argparse
import re
import sys

from training import params
from training.catalog import MODEL_TYPES
from training.result import EXIT_BAD_INPUT, EXIT_OK


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

    run = sub.add_parser("run", help="fine-tune with QLoRA and save the adapter (see `evaluate` for its metrics)")
    run.add_argument("--model", required=True, help="model folder or s3:// URI")
    run.add_argument("--data", required=True, help="dataset folder or s3:// URI")
    run.add_argument("--task", required=True, choices=MODEL_TYPES)
    run.add_argument("--output", required=True, help="output folder (adapter, checkpoints, result.json, log)")
    params.add_cli_options(run)
    engine = run.add_argument_group("engine options")
    engine.add_argument("--quantization", choices=("nf4", "none"), default="nf4")
    engine.add_argument("--mlflow-uri", default=None, help="default: $MLFLOW_TRACKING_URI; '': no tracking")
    engine.add_argument("--experiment", default=None, help="MLflow experiment name")
    engine.add_argument("--run-name", default=None)
    engine.add_argument("--job-id", default=None, help="MLflow tag (default: $QLORA_JOB_ID)")
    engine.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --output")
    engine.add_argument("--validation-fraction", type=float, default=0.2,
                        help="held-out share when the table has no validation split")
    engine.add_argument("--no-gradient-checkpointing", dest="gradient_checkpointing", action="store_false")
    engine.add_argument("--output-uri", default=None,
                        help="s3:// URI the adapter (final, or partial when stopped) is uploaded to")
    engine.add_argument("--checkpoint-uri", default=None,
                        help="s3:// prefix each checkpoint is uploaded under as it is saved (the last two kept)")
    engine.add_argument("--clip-report", default=None,
                        help="the dataset's validation report (path or s3:// URI): its decoded clips are trusted; "
                             "without it clips are checked as they are read")
    engine.add_argument("--evaluate", action="store_true",
                        help="after training, evaluate the adapter and the base model on the held-out split here "
                             "(as `evaluate` does, the model already loaded): metrics.json in --output")
    engine.add_argument("--step-delay", type=float, default=0.0, help=argparse.SUPPRESS)

    for name, help_text in (("evaluate", "the adapter and the base model on a dataset's held-out split"),
                            ("predict", "label or caption one clip")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--model", required=True, help="model folder or s3:// URI")
        p.add_argument("--adapter", required=True, help="adapter folder written by `run`, or s3:// URI")
        p.add_argument("--quantization", choices=("nf4", "none"), default="nf4")
        p.add_argument("--frames", type=int, default=None, help="default: the adapter's")
        if name == "evaluate":
            p.add_argument("--data", required=True)
            p.add_argument("--task", choices=MODEL_TYPES, default=None, help="default: the adapter's")
            p.add_argument("--split", choices=("validation", "test", "train", "all"), default="validation")
            p.add_argument("--seed", type=int, default=None, help="split seed (default: the training's)")
            p.add_argument("--output", default=None, help="write the metrics JSON here")
            p.add_argument("--no-base", dest="with_base", action="store_false",
                           help="skip the base model (by default both are measured)")
            p.add_argument("--mlflow-uri", default=None, help="default: $MLFLOW_TRACKING_URI; '': none")
            p.add_argument("--mlflow-run-id", default=None, help="log final_*/base_* metrics to this run")
            p.add_argument("--output-uri", default=None, help="s3:// URI the metrics JSON is uploaded to")
        else:
            p.add_argument("--clip", required=True)
    return parser


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def describe(exc: Exception) -> str:
    """A domain error as one line in the command line's terms (option names, not field names)."""
    from training.errors import InputError

    if isinstance(exc, InputError) and exc.field:
        return f"{_option(exc.field)} {exc.message}"
    if isinstance(exc, params.InvalidParams):
        names = "|".join(params.PARAM_NAMES)
        return "; ".join(re.sub(rf"^({names})\b", lambda m: _option(m.group(1)), p) for p in exc.problems)
    return str(exc)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from training.errors import InputError  # light

    try:
        if args.command == "build-tiny":
            from training.build_tiny import build_tiny
            out = build_tiny(args.architecture, args.task, args.out, labels=args.labels,
                             catalog_id=args.catalog_id, seed=args.seed)
            print(f"wrote tiny {args.architecture} ({args.task}) model to {out}")
            return EXIT_OK
        if args.command == "run":
            from training.run_args import RunArgs
            from training.trainer import run_training
            given = params.params_from_cli(args)
            options = {k: v for k, v in vars(args).items() if k != "command" and k not in params.PARAM_NAMES}
            return run_training(RunArgs(params=given, **options))
        if args.command == "evaluate":
            from training.inference import evaluate_command
            return evaluate_command(args)
        from training.inference import predict_command
        return predict_command(args)
    except (InputError, params.InvalidParams) as exc:
        print(f"error: {describe(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
