"""The `qlora` command: from sign-up to a trained adapter without curl.

Exit codes: 0 success (a watched job `completed`, a dataset `ready`); 1 an error (the API's
`detail` on one line; a dataset in `error`, a job `failed`); 2 a usage error; 3 a watched job
ended `stopped`; 130 Ctrl-C (a watched job keeps running).
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import click

from qlora_client import __version__, config, params, ui
from qlora_client.client import ApiError, Client
from qlora_client.types import TERMINAL_TRAINING, Dataset, Training
from qlora_client.upload import UploadFailed, UploadInterrupted, forget_uploads_of

EXIT_FAILED, EXIT_USAGE, EXIT_STOPPED, EXIT_INTERRUPTED = 1, 2, 3, 130
POLL_S = float(os.environ.get("QLORA_POLL_S", "1.0"))


class _Group(click.Group):
    """Turns the API's refusals into one line `Error: <detail>` and exit 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UploadFailed as exc:
            _fail_upload(exc)
        except ApiError as exc:
            detail = exc.detail
            if exc.status == 401 and "qlora login" not in detail and ctx.invoked_subcommand not in ("login", "signup"):
                detail += " (run `qlora login`)"
            raise click.ClickException(detail) from None


def _fail_upload(exc: UploadFailed) -> NoReturn:
    if exc.resumable and exc.dataset_id:
        ui.info(f"Error: {exc.detail}")
        ui.info("Run the same command again to resume the upload, or abort it with "
                f"`qlora datasets delete {exc.dataset_id}`.")
        sys.exit(EXIT_INTERRUPTED if isinstance(exc, UploadInterrupted) else EXIT_FAILED)
    ui.info(f"Error: {exc.detail}")
    sys.exit(EXIT_INTERRUPTED if isinstance(exc, UploadInterrupted) else EXIT_FAILED)


def _client(ctx: click.Context) -> Client:
    return ctx.ensure_object(dict).setdefault("client", Client(ctx.obj.get("api_url")))


json_option = click.option("--json", "as_json", is_flag=True, help="Print the API's JSON instead.")


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--api-url", envvar="QLORA_API_URL", metavar="URL",
              help=f"The API's base URL [env QLORA_API_URL; default {config.DEFAULT_API_URL}].")
@click.version_option(__version__, prog_name="qlora")
@click.pass_context
def cli(ctx: click.Context, api_url: str | None) -> None:
    """Fine-tune video models with QLoRA through the QLoRA Orchestration Service.

    \b
    qlora signup --username ada --email ada@example.com
    qlora datasets upload toy.zip --name toy --wait
    qlora models list
    qlora train start --model flamingo-tiny-classification --dataset ID --name toy-colour --epochs 8 --watch

    The token of `qlora login` is kept in the user's config folder (mode 0600); QLORA_TOKEN overrides it.
    """
    ctx.ensure_object(dict)["api_url"] = config.api_url(api_url)


# --- auth ----------------------------------------------------------------------------------
def _ask(value: str | None, option: str, prompt: str, *, hide: bool = False, confirm: bool = False) -> str:
    if value:
        return value
    if not sys.stdin.isatty():
        raise click.UsageError(f"{option} is required when no terminal can prompt for it")
    return str(click.prompt(prompt, hide_input=hide, confirmation_prompt=confirm))


def _password(password: str | None, from_stdin: bool, confirm: bool) -> str:
    if from_stdin:
        value = sys.stdin.readline().rstrip("\n")
        if not value:
            raise click.UsageError("--password-stdin: nothing on standard input")
        return value
    return _ask(password, "--password", "Password", hide=True, confirm=confirm)


def _log_in(ctx: click.Context, username: str, password: str) -> None:
    client = _client(ctx)
    token = client.login(username, password)
    path = config.store_login(client.api_url, token, username)
    ui.info(f"Logged in to {client.api_url} as {username} (token in {path})")


@cli.command()
@click.option("--username", help="3-64 letters, digits, '_', '.', '-'.")
@click.option("--email")
@click.option("--password", help="At least 12 characters, also your MLflow UI password (prompted for on a terminal when omitted).")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@click.pass_context
def signup(ctx: click.Context, username: str | None, email: str | None, password: str | None,
           password_stdin: bool) -> None:
    """Create an account, then log in with it."""
    username = _ask(username, "--username", "Username")
    email = _ask(email, "--email", "Email")
    password = _password(password, password_stdin, confirm=True)
    _client(ctx).signup(username, email, password)
    ui.info(f"Signed up as {username}")
    _log_in(ctx, username, password)


@cli.command()
@click.option("--username")
@click.option("--password", help="Prompted for on a terminal when omitted.")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@click.pass_context
def login(ctx: click.Context, username: str | None, password: str | None, password_stdin: bool) -> None:
    """Log in and keep the token in the user's config folder."""
    username = _ask(username, "--username", "Username")
    _log_in(ctx, username, _password(password, password_stdin, confirm=False))


@cli.command()
@click.pass_context
def logout(ctx: click.Context) -> None:
    """Forget the stored token of this API."""
    url = ctx.obj["api_url"]
    ui.info(f"Logged out of {url}" if config.forget_login(url) else f"Not logged in to {url}")


@cli.command()
@json_option
@click.pass_context
def whoami(ctx: click.Context, as_json: bool) -> None:
    """The user the token belongs to."""
    me = _client(ctx).me()
    if as_json:
        return ui.print_json(me)
    ui.fields([("username", me["username"]), ("email", me["email"]), ("id", me["id"]),
               ("api", _client(ctx).api_url), ("token", "QLORA_TOKEN" if os.environ.get("QLORA_TOKEN")
                                                 else str(config.credentials_file()))])


# --- datasets ------------------------------------------------------------------------------
@cli.group()
def datasets() -> None:
    """Upload datasets (.zip of clips + annotations), list, show, delete them."""


@datasets.command("upload")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", required=True, help="Name of the dataset.")
@click.option("--description", default="", help="What the dataset holds.")
@click.option("--wait", is_flag=True, help="Follow the validation until the dataset is ready or in error.")
@click.option("--restart", is_flag=True, help="Abort an interrupted upload of this file instead of resuming it.")
@click.option("--part-size", type=click.IntRange(5, 5120), metavar="MIB",
              help="Part size of a multipart upload in MiB (5-5120; default 64).")
@json_option
@click.pass_context
def datasets_upload(ctx: click.Context, path: Path, name: str, description: str, wait: bool, restart: bool,
                    part_size: int | None, as_json: bool) -> None:
    """Upload the archive at PATH and start its validation.

    Archives above 100 MiB (QLORA_MULTIPART_THRESHOLD bytes) go up as an S3 multipart upload:
    parts are retried, and running the same command again after an interruption resumes it.
    """
    client = _client(ctx)
    total = path.stat().st_size
    if ui.interactive():
        from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                                   TransferSpeedColumn)

        with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                      TimeRemainingColumn(), console=ui.err, transient=False) as bar:
            task = bar.add_task(f"Uploading {path.name}", total=total)
            uploaded = client.upload_dataset(path, name, description, advance=lambda n: bar.advance(task, n),
                                             notify=bar.console.print, resume=not restart,
                                             part_size_bytes=part_size and part_size * 1024**2)
    else:
        ui.info(f"Uploading {path.name} ({ui.size(total)})")
        marks = _Marks(total)
        uploaded = client.upload_dataset(path, name, description, advance=marks.advance, notify=ui.info,
                                         resume=not restart, part_size_bytes=part_size and part_size * 1024**2)
    how = f" in {uploaded.part_count} parts" if uploaded.multipart else ""
    resumed = f", {uploaded.parts_resumed} of them resumed" if uploaded.parts_resumed else ""
    ui.info(f"Uploaded {ui.size(uploaded.size_bytes)}{how}{resumed}: dataset {uploaded.dataset_id}, validating")
    if not wait:
        if as_json:
            return ui.print_json(client.get_dataset(uploaded.dataset_id))
        ui.result(uploaded.dataset_id)
        ui.info(f"Follow its validation: qlora datasets show {uploaded.dataset_id}")
        return
    final = _wait_for_dataset(client, uploaded.dataset_id)
    _end_of_validation(final, as_json)


class _Marks:
    """Plain progress lines every 10% (no terminal)."""

    def __init__(self, total: int, verb: str = "uploaded") -> None:
        self.total, self.done, self.shown, self.verb = total, 0, 0, verb

    def advance(self, n: int) -> None:
        self.done += n
        tenth = int(10 * self.done / self.total) if self.total else 10
        if tenth > self.shown:
            self.shown = tenth
            ui.info(f"{self.verb} {ui.size(self.done)} of {ui.size(self.total)} ({10 * tenth}%)")


def _wait_for_dataset(client: Client, dataset_id: str) -> Dataset:
    seen: list[str] = []

    def update(dataset: Dataset) -> None:
        stage = dataset.get("stage", "")
        if not seen or seen[-1] != stage:
            seen.append(stage)
            if status is None:
                ui.info(f"dataset {dataset_id}: {stage}")
            else:
                status.update(f"Dataset {dataset_id}: {stage}")

    status = ui.err.status(f"Dataset {dataset_id}: validating") if ui.interactive() else None
    try:
        if status is not None:
            with status:
                return client.wait_for_dataset(dataset_id, poll_s=POLL_S, on_update=update)
        return client.wait_for_dataset(dataset_id, poll_s=POLL_S, on_update=update)
    except KeyboardInterrupt:
        ui.info(f"Stopped waiting; the validation goes on. Follow it: qlora datasets show {dataset_id}")
        sys.exit(EXIT_INTERRUPTED)


def _end_of_validation(dataset: Dataset, as_json: bool) -> None:
    if as_json:
        ui.print_json(dataset)
    if dataset.get("status") == "ready":
        if not as_json:
            stats = dataset.get("stats") or {}
            ui.result(dataset["id"])
            ui.info(f"Dataset {dataset['id']} is ready: {stats.get('clip_count', '?')} clips, "
                    f"tasks {', '.join(stats.get('tasks') or []) or '?'}")
        return
    ui.info(f"Error: dataset {dataset.get('id')} is in error: {dataset.get('error') or dataset.get('stage')}")
    sys.exit(EXIT_FAILED)


@datasets.command("list")
@click.option("--limit", type=click.IntRange(1, 1000), help="At most this many (newest first).")
@json_option
@click.pass_context
def datasets_list(ctx: click.Context, limit: int | None, as_json: bool) -> None:
    """Your datasets, newest first."""
    rows = _client(ctx).list_datasets(limit)
    if as_json:
        return ui.print_json(rows)
    ui.table(["ID", "NAME", "STATUS", "STAGE", "FILES", "SIZE", "CREATED"],
             [(d["id"], d["name"], d["status"], d["stage"], d.get("file_count"), ui.size(d.get("total_size_bytes")),
               ui.when(d.get("created_at"))) for d in rows])


@datasets.command("show")
@click.argument("dataset_id")
@json_option
@click.pass_context
def datasets_show(ctx: click.Context, dataset_id: str, as_json: bool) -> None:
    """One dataset with its validation summary."""
    d = _client(ctx).get_dataset(dataset_id)
    if as_json:
        return ui.print_json(d)
    stats = d.get("stats") or {}
    labels = stats.get("labels")
    ui.fields([
        ("id", d["id"]), ("name", d["name"]), ("description", d.get("description")),
        ("status", d["status"]), ("stage", d["stage"]), ("error", d.get("error")),
        ("archive", d.get("s3_path")), ("upload size", ui.size(d.get("upload_size_bytes"))),
        ("files", d.get("file_count") or None), ("extracted size", ui.size(d.get("total_size_bytes")) if d.get("total_size_bytes") else None),
        ("clips", stats.get("clip_count")), ("tasks", ", ".join(stats.get("tasks") or [])),
        ("labels", ", ".join(f"{k} ({v})" for k, v in labels.items()) if isinstance(labels, dict) else None),
        ("splits", ", ".join(f"{k} {v}" for k, v in (stats.get("splits") or {}).items())),
        ("created", ui.when(d.get("created_at"))),
    ])


@datasets.command("delete")
@click.argument("dataset_id")
@click.pass_context
def datasets_delete(ctx: click.Context, dataset_id: str) -> None:
    """Delete a dataset and its S3 objects (also aborts an upload under way)."""
    _client(ctx).delete_dataset(dataset_id)
    forget_uploads_of(dataset_id)
    ui.info(f"Deleted dataset {dataset_id}")


# --- models --------------------------------------------------------------------------------
@cli.group()
def models() -> None:
    """The base models you can fine-tune."""


@models.command("list")
@json_option
@click.pass_context
def models_list(ctx: click.Context, as_json: bool) -> None:
    """Models allowed for QLoRA fine-tuning."""
    rows = _client(ctx).list_models()
    if as_json:
        return ui.print_json(rows)
    ui.table(["ID", "TYPE", "ARCHITECTURE", "LORA RANK", "TINY"],
             [(m["id"], m["model_type"], m["base_architecture"],
               "{min_rank}-{max_rank}".format(**m["supported_lora_params"]), "yes" if m.get("tiny") else "")
              for m in rows])


@models.command("show")
@click.argument("model_id")
@json_option
@click.pass_context
def models_show(ctx: click.Context, model_id: str, as_json: bool) -> None:
    """One model with its LoRA limits and target modules."""
    m = _client(ctx).get_model(model_id)
    if as_json:
        return ui.print_json(m)
    lora = m["supported_lora_params"]
    ui.fields([
        ("id", m["id"]), ("name", m["name"]), ("description", m.get("description")), ("type", m["model_type"]),
        ("architecture", f"{m['base_architecture']} ({m.get('architecture_class')})"), ("version", m.get("version")),
        ("lora rank", f"{lora['min_rank']}-{lora['max_rank']} (default alpha {lora['default_alpha']})"),
        ("default targets", ", ".join(m.get("default_target_modules") or [])),
        ("allowed targets", ", ".join(m.get("allowed_target_modules") or [])),
        ("checkpoint", m.get("checkpoint")), ("weights", m.get("weights_uri")),
        ("tiny", "yes: random weights for CPU runs" if m.get("tiny") else None),
    ])


# --- trainings -----------------------------------------------------------------------------
@cli.group()
def train() -> None:
    """Start, watch, stop QLoRA training jobs."""


@click.pass_context
def _train_start(ctx: click.Context, model: str, dataset: str, name: str, watch: bool, as_json: bool,
                 max_runtime_minutes: int | None, **values: Any) -> None:
    client = _client(ctx)
    started = client.start_training(model, dataset, name, params.from_options(values),
                                    max_runtime_minutes=max_runtime_minutes)
    job_id = started["job_id"]
    if not watch:
        if as_json:
            return ui.print_json(started)
        ui.result(job_id)
        ui.info(f"Started job {job_id} ({started['status']}). Watch it: qlora train watch {job_id}")
        return
    ui.info(f"Started job {job_id}")
    _watch(client, job_id, as_json)


train.add_command(click.Command(
    "start", callback=_train_start,
    params=[
        click.Option(["--model"], required=True, help="A model id of `qlora models list`."),
        click.Option(["--dataset"], required=True, help="The id of one of your ready datasets."),
        click.Option(["--name"], required=True, help="Name of the adapter: 1-64 letters, digits, '.', '_', '-'."),
        click.Option(["--watch"], is_flag=True, help="Follow the job to its end (as `qlora train watch`)."),
        click.Option(["--max-runtime-minutes"], type=click.IntRange(min=1),
                     help="Deadline of the training in minutes (default: the service's): past it the training "
                          "stops, its partial adapter is kept and the job fails."),
        click.Option(["--json", "as_json"], is_flag=True,
                     help="Print the API's JSON (the start answer; with --watch the final job)."),
        *params.options(),
    ],
    help="Start a QLoRA fine-tuning job. Every training parameter is an option; those not given take the "
         "service's defaults (some are the model's: see `qlora models show ID`).",
    short_help="Start a QLoRA fine-tuning job.",
))


@train.command("list")
@click.option("--limit", type=click.IntRange(1, 1000), help="At most this many (newest first).")
@json_option
@click.pass_context
def train_list(ctx: click.Context, limit: int | None, as_json: bool) -> None:
    """Your training jobs, newest first."""
    jobs = _client(ctx).list_trainings(limit)
    if as_json:
        return ui.print_json(jobs)
    ui.table(["JOB", "NAME", "MODEL", "STATUS", "STAGE", "PROGRESS", "CREATED"],
             [(j["job_id"], j.get("output_name"), j["model_id"], j["status"], j.get("stage"),
               f"{100 * (j.get('progress') or 0):.0f}%", ui.when(j.get("created_at"))) for j in jobs])


@train.command("show")
@click.argument("job_id")
@json_option
@click.pass_context
def train_show(ctx: click.Context, job_id: str, as_json: bool) -> None:
    """Status, progress, parameters, metrics and links of a job."""
    j = _client(ctx).get_training(job_id)
    if as_json:
        return ui.print_json(j)
    p = j.get("training_params") or {}
    ui.fields([
        ("job", j["job_id"]), ("name", j.get("output_name")), ("model", j["model_id"]), ("dataset", j["dataset_id"]),
        ("status", j["status"] + (" (stop requested)" if j.get("stop_requested") and j["status"] == "running" else "")),
        ("stage", j.get("stage")), ("progress", f"{100 * (j.get('progress') or 0):.0f}%"),
        ("eta", ui.duration(j["eta_seconds"]) if j.get("eta_seconds") is not None else None),
        ("error", j.get("error")), ("adapter", j.get("output_path")),
        ("parameters", ", ".join(f"{k}={','.join(v) if isinstance(v, list) else v}" for k, v in p.items()
                                  if v is not None)),
        ("created", ui.when(j.get("created_at"))), ("started", ui.when(j.get("started_at"))),
        ("completed", ui.when(j.get("completed_at"))),
        ("mlflow", j.get("mlflow_run_url")), ("airflow", j.get("airflow_run_url")),
    ])
    _metrics_table(j)


@train.command("stop")
@click.argument("job_id")
@click.pass_context
def train_stop(ctx: click.Context, job_id: str) -> None:
    """Stop a queued or running job (its partial adapter is kept)."""
    answer = _client(ctx).stop_training(job_id)
    ui.info(f"{answer.get('message', 'Stop requested')}; follow it: qlora train watch {job_id}")


@train.command("resume")
@click.argument("job_id")
@click.option("--watch", is_flag=True, help="Follow the job to its end (as `qlora train watch`).")
@json_option
@click.pass_context
def train_resume(ctx: click.Context, job_id: str, watch: bool, as_json: bool) -> None:
    """Resume a stopped or failed job from its last checkpoint.

    The job continues to its planned end in a new run (weights, optimizer and step restored; the
    same MLflow run goes on). Only jobs with an uploaded checkpoint can be resumed
    (`qlora train show` lists none otherwise).
    """
    client = _client(ctx)
    answer = client.resume_training(job_id)
    if not watch:
        if as_json:
            return ui.print_json(answer)
        ui.info(f"{answer['message']}. Watch it: qlora train watch {job_id}")
        return
    ui.info(answer["message"])
    _watch(client, job_id, as_json)


@train.command("evaluation")
@click.argument("job_id")
@json_option
@click.pass_context
def train_evaluation(ctx: click.Context, job_id: str, as_json: bool) -> None:
    """The held-out evaluation: the adapter against the base model on the same clips.

    Classification: the metrics, per-class precision/recall/F1 and the confusion matrix;
    captioning: the metrics and the reference, base and adapter captions of sample clips.
    """
    report = _client(ctx).get_evaluation(job_id)
    if as_json:
        return ui.print_json(report)
    adapter, base = report["adapter"], report.get("base") or {}
    _comparison_table(adapter.get("metrics") or {}, base.get("metrics") or {},
                      f"Held-out evaluation ({report['held_out_examples']} clips)")
    if adapter.get("per_class"):
        ui.table(["LABEL", "PRECISION", "RECALL", "F1", "SUPPORT"],
                 [(c["label"], f"{c['precision']:.3f}", f"{c['recall']:.3f}", f"{c['f1']:.3f}", c["support"])
                  for c in adapter["per_class"]], title="Adapter, per class")
    matrix = adapter.get("confusion_matrix")
    if matrix:
        ui.table(["TRUE \\ PREDICTED", *matrix["labels"]],
                 [(label, *row) for label, row in zip(matrix["labels"], matrix["matrix"])],
                 title="Adapter, confusion matrix")
    if report.get("samples"):
        ui.table(["CLIP", "REFERENCE", "BASE MODEL", "ADAPTER"],
                 [(x["file_name"], x["reference"], x.get("base") or "", x["adapter"]) for x in report["samples"]],
                 title="Captions")
    if report.get("mlflow_run_url"):
        ui.info(f"In MLflow: {report['mlflow_run_url']}")


@train.command("logs")
@click.argument("job_id")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines until the job ends.")
@click.pass_context
def train_logs(ctx: click.Context, job_id: str, follow: bool) -> None:
    """The recent lines of the training task's log."""
    client = _client(ctx)
    job = client.get_training(job_id)
    shown = _lines(job.get("logs"))
    for line in shown:
        ui.result(line)
    if not follow:
        return
    try:
        while job.get("status") not in TERMINAL_TRAINING:
            time.sleep(POLL_S)
            job = client.get_training(job_id)
            lines = _lines(job.get("logs"))
            for line in _new_lines(shown, lines):
                ui.result(line)
            shown = lines
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)
    ui.info(f"job {job_id} {job['status']}")


def _lines(text: str | None) -> list[str]:
    return (text or "").splitlines()


def _new_lines(before: list[str], now: list[str]) -> list[str]:
    """The lines of the tail `now` that come after the tail `before` (they may overlap)."""
    for k in range(min(len(before), len(now)), 0, -1):
        if before[-k:] == now[:k]:
            return now[k:]
    return now if now != before else []


@train.command("watch")
@click.argument("job_id")
@json_option
@click.pass_context
def train_watch(ctx: click.Context, job_id: str, as_json: bool) -> None:
    """Follow a job to its end: stage, epoch, step, loss and ETA, then its metrics.

    Exit 0 when it completed, 1 when it failed, 3 when it was stopped. Ctrl-C detaches (the job
    keeps running).
    """
    _watch(_client(ctx), job_id, as_json)


@train.command("download")
@click.argument("job_id")
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), default=Path("."),
              help="Folder to put the adapter in (created if missing).")
@json_option
@click.pass_context
def train_download(ctx: click.Context, job_id: str, output: Path, as_json: bool) -> None:
    """Download a job's adapter (completed, or the partial one of a stopped job).

    Each file is verified against the SHA-256 the API lists; a file that does not match is not
    kept. Load the folder with training.inference.load_adapter(base_dir, adapter_dir).
    """
    client = _client(ctx)
    listing = client.get_adapter(job_id)
    total = sum(f["size_bytes"] for f in listing["files"])
    if ui.interactive():
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

        with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                      console=ui.err, transient=False) as bar:
            task = bar.add_task(f"Downloading {len(listing['files'])} files", total=total)
            listing = client.download_adapter(job_id, output, advance=lambda n: bar.advance(task, n))
    else:
        ui.info(f"Downloading {len(listing['files'])} files ({ui.size(total)})")
        marks = _Marks(total, "downloaded")
        listing = client.download_adapter(job_id, output, advance=marks.advance)
    if as_json:
        return ui.print_json(listing)
    what = "partial adapter (the job was stopped)" if listing["partial"] else "adapter"
    ui.info(f"Downloaded the {what} of job {job_id}: {len(listing['files'])} files, {ui.size(total)}, "
            "SHA-256 verified")
    ui.result(str(output))


# --- watching a job ------------------------------------------------------------------------
_STEP = re.compile(r"\bstep (\d+)/(\d+)")


def _progress_facts(job: Training) -> dict[str, str]:
    """Epoch, step, loss and ETA of a job's detail (step from the log tail's last `step N/M`)."""
    metrics = job.get("metrics") or {}
    facts: dict[str, str] = {}
    epochs = (job.get("training_params") or {}).get("epochs")
    if "epoch" in metrics:
        facts["epoch"] = f"{metrics['epoch']:.1f}" + (f"/{epochs}" if epochs else "")
    steps = _STEP.findall(job.get("logs") or "")
    if steps:
        facts["step"] = "/".join(steps[-1])
    if "loss" in metrics:
        facts["loss"] = f"{metrics['loss']:.4f}"
    if job.get("eta_seconds") is not None and job.get("status") == "running":
        facts["eta"] = ui.duration(job["eta_seconds"])
    return facts


def _watch(client: Client, job_id: str, as_json: bool) -> None:
    try:
        final = _follow(client, job_id)
    except KeyboardInterrupt:
        ui.info(f"Detached from job {job_id}; it keeps running. Stop it with: qlora train stop {job_id}")
        sys.exit(EXIT_INTERRUPTED)
    if as_json:
        ui.print_json(final)
    status = final["status"]
    if status == "completed":
        if not as_json:
            ui.info(f"Job {job_id} completed" + (f": adapter at {final['output_path']}" if final.get("output_path") else ""))
            _metrics_table(final)
            if final.get("mlflow_run_url"):
                ui.info(f"MLflow run: {final['mlflow_run_url']}")
        return
    if status == "stopped":
        partial = f"; partial adapter at {final['output_path']}" if final.get("output_path") else ""
        ui.info(f"Job {job_id} stopped{partial}")
        sys.exit(EXIT_STOPPED)
    ui.info(f"Error: job {job_id} failed: {final.get('error') or 'no reason given'}")
    sys.exit(EXIT_FAILED)


def _follow(client: Client, job_id: str) -> Training:
    if not ui.interactive():
        last: list[tuple[Any, ...]] = []

        def line(job: Training) -> None:
            facts = _progress_facts(job)
            key = (job["status"], job.get("stage"), int(10 * (job.get("progress") or 0)))
            if not last or last[-1] != key:
                last.append(key)
                words = [job["status"], job.get("stage") or "", f"{100 * (job.get('progress') or 0):.0f}%",
                         *(f"{k} {v}" for k, v in facts.items())]
                ui.info(" ".join(w for w in words if w))

        return client.wait_for_training(job_id, poll_s=POLL_S, on_update=line)

    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
                  TextColumn("{task.fields[facts]}"), console=ui.err) as bar:
        task = bar.add_task(f"job {job_id[:8]}", total=1.0, facts="")

        def draw(job: Training) -> None:
            facts = _progress_facts(job)
            status = job["status"] + (f" · {job['stage']}" if job.get("stage") else "")
            bar.update(task, completed=job.get("progress") or 0, description=status,
                       facts=" · ".join(f"{k} {v}" for k, v in facts.items()))

        return client.wait_for_training(job_id, poll_s=POLL_S, on_update=draw)


def _metrics_table(job: Training) -> None:
    """The adapter's final metrics against the base model's (`final_X` vs `base_X`)."""
    metrics = job.get("metrics") or {}
    _comparison_table({k[len("final_"):]: v for k, v in metrics.items() if k.startswith("final_")},
                      {k[len("base_"):]: v for k, v in metrics.items() if k.startswith("base_")},
                      "Held-out evaluation")


def _comparison_table(adapter: dict[str, float], base: dict[str, float], title: str) -> None:
    """One row per metric: the base model's value, the adapter's, the change."""
    names = sorted((set(adapter) | set(base)) - {"eval_examples"})
    if not names:
        return

    def fmt(value: float | None) -> str:
        return "" if value is None else f"{value:.4g}"

    rows = []
    for name in names:
        b, a = base.get(name), adapter.get(name)
        change = f"{a - b:+.4g}" if b is not None and a is not None else ""
        rows.append((name, fmt(b), fmt(a), change))
    ui.table(["METRIC", "BASE MODEL", "ADAPTER", "CHANGE"], rows, title=title)


def main() -> None:
    cli(prog_name="qlora")


if __name__ == "__main__":
    main()
