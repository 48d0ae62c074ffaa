"""What the pages of the site say agrees with the code: every curl call names an operation of
the API, every `qlora` command line parses with the real command, the dataset examples are read
by the dataset reader as the page says, the lifecycle page names every state, stage and task."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import pytest

from tests.docs.conftest import DOCS, ROOT

PAGES = sorted(p for p in DOCS.rglob("*.mdx") if "node_modules" not in p.parts)


def _code_blocks(text: str, lang: str | None = None) -> list[tuple[str, str, str]]:
    """(language, title, body) of each fenced code block."""
    blocks = re.findall(r"^```(\w+)?[ \t]*([^\n]*)\n(.*?)^```", text, flags=re.M | re.S)
    return [(l, t.strip(), b) for l, t, b in blocks if lang is None or l == lang]


def _shell_commands(body: str) -> list[str]:
    """The commands of a bash block: continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", body)
    commands = []
    for line in joined.splitlines():
        line = re.sub(r"\s+#.*$", "", line).strip()
        if line and not line.startswith("#"):
            commands.append(line)
    return commands


def test_every_page_is_in_the_navigation():
    import json

    nav = json.dumps(json.loads((DOCS / "docs.json").read_text())["navigation"])
    pages = [p.relative_to(DOCS).with_suffix("").as_posix() for p in PAGES if "snippets" not in p.parts]
    missing = [p for p in pages if f'"{p}"' not in nav]
    assert not missing, f"pages not reachable from docs.json's navigation: {missing}"


def test_every_curl_call_is_an_operation_of_the_api(openapi):
    templates = [(method.upper(), re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", path) + "$"))
                 for path, item in openapi["paths"].items() for method in item]
    calls = []
    for page in PAGES:
        for _, _, body in _code_blocks(page.read_text(), "bash"):
            for command in _shell_commands(body):
                for match in re.finditer(r"curl (.*?)(?:\||$)", command):
                    args = match.group(1)
                    url = re.search(r"(?:\$API|http://127\.0\.0\.1:8000/v1)(/[^\s\"']*)", args)
                    if not url:
                        continue  # the PUT to a pre-signed S3 URL
                    method = re.search(r"-X (\w+)", args)
                    path = "/v1" + re.sub(r"<[^>]+>", "ID", url.group(1)).split("?")[0]
                    calls.append((page.name, method.group(1) if method else "GET", path))
    assert len(calls) >= 10, calls
    unknown = [c for c in calls if not any(m == c[1] and t.match(c[2]) for m, t in templates)]
    assert not unknown, f"curl calls in the docs that the API does not serve: {unknown}"


def _qlora_lines() -> list[tuple[str, list[str]]]:
    lines = []
    for page in PAGES:
        for _, _, body in _code_blocks(page.read_text(), "bash"):
            for command in _shell_commands(body):
                if command.startswith("qlora "):
                    args = shlex.split(re.sub(r"<([^>]+)>", r"\1", command))[1:]
                    lines.append((page.name, args))
    return lines


def test_every_qlora_command_line_parses_with_the_real_command(tmp_path, monkeypatch):
    import click

    monkeypatch.chdir(tmp_path)  # the archives the lines upload exist here

    sys.path.insert(0, str(ROOT / "client"))
    try:
        from qlora_client.cli import cli
    finally:
        sys.path.remove(str(ROOT / "client"))
    lines = _qlora_lines()
    assert len(lines) >= 5, lines
    failures = []
    for page, args in lines:
        for arg in args:
            if arg.endswith(".zip"):
                (tmp_path / arg).touch()
        ctx = click.Context(cli, info_name="qlora")
        command, rest = cli, list(args)
        try:
            while isinstance(command, click.Group) and rest and not rest[0].startswith("-"):
                name, *rest = rest
                command = command.get_command(ctx, name)
                if command is None:
                    raise click.UsageError(f"no command {name!r}")
                ctx = click.Context(command, info_name=name, parent=ctx)
            command.parse_args(ctx, rest)  # options, arguments, required ones, ranges
        except click.exceptions.Exit:  # --help, --version: a valid line
            pass
        except click.ClickException as exc:
            failures.append(f"{page}: qlora {shlex.join(args)}: {exc.format_message()}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("table", ["metadata.csv", "metadata.jsonl"])
def test_dataset_format_examples_read_as_documented(tmp_path, table):
    from training.data.dataset_format import read_dataset

    page = (DOCS / "guides" / "dataset-format.mdx").read_text()
    (body,) = [b for _, title, b in _code_blocks(page) if title == table]
    root = tmp_path / "toy"  # zipped inside one top-level folder, as the page says works
    (root / "clips").mkdir(parents=True)
    (root / table).write_text(body)
    for name in re.findall(r"clips/\w+\.mp4", body):
        (root / name).write_bytes(b"")
    dataset = read_dataset(tmp_path)
    assert dataset.source == table and dataset.root == root
    assert dataset.supports("video_classification") and dataset.supports("video_captioning")
    frame = dataset.frame
    assert sorted(set(frame["label"])) == ["blue", "red"]
    assert set(frame["split"]) == {"train", "validation", "test"}
    assert all((root / f).is_file() for f in frame["file_name"])


def test_dataset_format_page_names_what_the_reader_accepts():
    from training.data.dataset_format import SPLITS, TABLE_NAMES, TASK_COLUMNS, VIDEO_EXTENSIONS

    page = (DOCS / "guides" / "dataset-format.mdx").read_text()
    for word in (*VIDEO_EXTENSIONS, *TABLE_NAMES, *SPLITS, *TASK_COLUMNS.values(), "file_name"):
        assert f"`{word}`" in page, word


def test_lifecycle_page_names_every_state_stage_and_task():
    from training import job_spec

    page = (DOCS / "guides" / "job-lifecycle.mdx").read_text()
    diagram = next(b for lang, _, b in _code_blocks(page) if lang == "mermaid" and "stateDiagram" in b)
    for state in job_spec.JOB_STATES:
        assert re.search(rf"\b{state}\b", diagram), f"state {state} missing from the diagram"
    for stage in job_spec.STAGES:
        assert f"| `{stage}` |" in page, f"stage {stage} missing from the table"
    for task_id in job_spec.TASK_IDS:
        assert f"`{task_id}`" in page and f"{task_id}[" in page, f"task {task_id} missing"
    for task_id, stage in job_spec.TASK_STAGES.items():
        row = next(line for line in page.splitlines() if line.startswith(f"| `{stage.value}` |"))
        assert f"`{task_id}`" in row, f"{task_id} belongs to stage {stage.value}"


def _variables(settings_class) -> list[list[str]]:
    """Each field's environment variable names (its aliases, else the prefixed field name)."""
    prefix = settings_class.model_config.get("env_prefix", "")
    names = []
    for name, field in settings_class.model_fields.items():
        alias = field.validation_alias
        choices = [c for c in getattr(alias, "choices", [alias]) if isinstance(c, str)] if alias else []
        names.append(choices or [f"{prefix}{name}".upper()])
    return names


def test_the_readme_documents_every_setting():
    """The README's configuration table names every variable the API (`api/core/config.py`) and
    the pipeline (`training/settings.py`) read; QLORA_JOB_ID is the train task's to its engine."""
    from api.core.config import Settings
    from training.settings import PipelineSettings

    readme = (ROOT / "README.md").read_text()
    missing = [names for names in _variables(Settings) + _variables(PipelineSettings)
               if not any(f"`{n}`" in readme for n in names) and names != ["QLORA_JOB_ID"]]
    assert not missing, f"add these to the README's configuration table: {missing}"
