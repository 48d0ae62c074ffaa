"""The `qlora` command without a stack: usage errors, an unreachable API, the training-parameter
options (a copy of training/params.py that must not drift), and a client that imports nothing
of the service."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.client.conftest import qlora_binary
from training.params import PARAM_NAMES, TrainingParams

REPO = Path(__file__).resolve().parents[2]
CLOSED = "http://127.0.0.1:9/v1"  # the discard port: nothing answers


@pytest.fixture
def run(make_runner):
    return make_runner(CLOSED)


def test_training_params_copy_is_the_definition() -> None:
    """client/qlora_client/training_params.json is what `make client-params` writes from
    training/params.py now (run it after changing a parameter)."""
    check = subprocess.run([sys.executable, str(REPO / "client/tools/export_training_params.py"), "--check"],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    copy = json.loads((REPO / "client/qlora_client/training_params.json").read_text())
    assert copy == TrainingParams.model_json_schema()
    assert list(copy["properties"]) == list(PARAM_NAMES)


def test_every_training_parameter_is_an_option(run) -> None:
    shown = run("train", "start", "--help")
    assert shown.returncode == 0, shown.stderr
    for name in PARAM_NAMES:
        assert "--" + name.replace("_", "-") in shown.stdout, name


def test_options_become_the_training_params_the_api_validates() -> None:
    """What `train start` sends for given options is accepted by TrainingParams as is."""
    code = ("from click.testing import CliRunner\n"
            "import json, qlora_client.cli as cli\n"
            "sent = {}\n"
            "class Fake:\n"
            "    api_url = 'x'\n"
            "    def start_training(self, m, d, n, p, max_runtime_minutes=None):\n"
            "        sent.update(p, max_runtime_minutes=max_runtime_minutes); return {'job_id': 'j', 'status': 'queued'}\n"
            "r = CliRunner().invoke(cli.cli, ['train', 'start', '--model', 'm', '--dataset', 'd', '--name', 'n',\n"
            "    '--epochs', '8', '--learning-rate', '0.002', '--target-modules', 'q_proj,v_proj',\n"
            "    '--lora-rank', '4', '--max-steps', '10', '--lora-dropout', '0', '--max-runtime-minutes', '90'],\n"
            "    obj={'client': Fake()})\n"
            "assert r.exit_code == 0, r.output\n"
            "print(json.dumps(sent))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    sent = json.loads(out.stdout.strip().splitlines()[-1])
    assert sent.pop("max_runtime_minutes") == 90  # a job field beside the training parameters
    assert sent == {"epochs": 8, "learning_rate": 0.002, "target_modules": ["q_proj", "v_proj"], "lora_rank": 4,
                    "max_steps": 10, "lora_dropout": 0.0}
    assert TrainingParams.model_validate(sent).epochs == 8


@pytest.mark.parametrize(("args", "fragment"), [
    (["train", "start", "--model", "m", "--dataset", "d", "--name", "n", "--epochs", "0"], "1<=x<=100"),
    (["train", "start", "--model", "m", "--dataset", "d", "--name", "n", "--learning-rate", "0"], "0<x<=1"),
    (["train", "start", "--model", "m", "--dataset", "d", "--name", "n", "--target-modules", "q_proj,bogus"],
     "'bogus' is not one of"),
    (["train", "start", "--dataset", "d", "--name", "n"], "Missing option '--model'"),
    (["datasets", "upload", "no-such.zip", "--name", "x"], "does not exist"),
    (["datasets", "upload", "{here}", "--name", "x"], "is a directory"),
    (["login", "--username", "ada"], "--password is required when no terminal can prompt"),
    (["signup"], "--username is required"),
    (["train", "frobnicate"], "No such command"),
])
def test_usage_errors_exit_2(run, tmp_path, args, fragment) -> None:
    got = run(*[a.replace("{here}", str(tmp_path)) for a in args])
    assert got.returncode == 2, (got.stdout, got.stderr)
    assert fragment in got.stderr


def test_unreachable_api_is_one_line_and_exit_1(run) -> None:
    got = run("datasets", "list", env={"QLORA_TOKEN": "whatever"})
    assert got.returncode == 1
    lines = got.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: cannot reach the API at http://127.0.0.1:9/v1"), lines
    assert got.stdout == ""


def test_not_logged_in_says_how(run) -> None:
    got = run("whoami")
    assert got.returncode == 1
    assert got.stderr.strip() == "Error: not logged in to http://127.0.0.1:9/v1: run `qlora login` (or set QLORA_TOKEN)"


def test_download_without_the_api_says_so(run) -> None:
    got = run("train", "download", "some-job", "-o", "out", env={"QLORA_TOKEN": "t"})
    assert got.returncode == 1  # (it asks the API for the job first: unreachable here)
    assert "cannot reach the API" in got.stderr


def test_the_client_imports_nothing_of_the_service() -> None:
    """`pip install ./client` alone must work: no torch, Airflow, pydantic, FastAPI, nor the repo's
    packages are imported by the command."""
    code = ("import sys, qlora_client.cli, qlora_client.upload\n"
            "bad = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'airflow', 'pydantic', 'fastapi', "
            "'training', 'api', 'devstack', 'boto3', 'sqlalchemy', 'mlflow'})\n"
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""
    import tomllib

    deps = tomllib.loads((REPO / "client/pyproject.toml").read_text())["project"]["dependencies"]
    assert sorted(d.split(">")[0] for d in deps) == ["click", "httpx", "rich"]
    assert Path(qlora_binary()).exists()


def test_logs_follow_prints_only_the_lines_after_the_last_tail() -> None:
    from qlora_client.cli import _new_lines

    assert _new_lines(["a", "b", "c"], ["b", "c", "d", "e"]) == ["d", "e"]
    assert _new_lines(["a", "b"], ["a", "b"]) == []
    assert _new_lines([], ["a"]) == ["a"]
    assert _new_lines(["x", "y"], ["p", "q"]) == ["p", "q"]  # no overlap: the tail moved past
    assert _new_lines(["a", "a"], ["a", "a", "b"]) == ["b"]


def test_start_is_retried_with_the_same_idempotency_key(monkeypatch) -> None:
    """A start that met a 503 (or no answer) is sent again with the key of the first attempt, so
    the API answers with the job that attempt may have created instead of making a second."""
    import httpx

    from qlora_client.client import ApiError, Client

    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if len(seen) == 1:
            return httpx.Response(503, json={"detail": "The pipeline service (Airflow) is unavailable; retry later"})
        return httpx.Response(202, json={"job_id": "j1", "status": "queued"})

    monkeypatch.setattr("qlora_client.client.time.sleep", lambda s: None)
    client = Client("http://api.test/v1", token="t", transport=httpx.MockTransport(answer))
    assert client.start_training("m", "d", "n", {"epochs": 2}, max_runtime_minutes=30)["job_id"] == "j1"
    keys = [r.headers["idempotency-key"] for r in seen]
    assert len(keys) == 2 and keys[0] == keys[1] and len(keys[0]) == 32
    assert json.loads(seen[1].content)["max_runtime_minutes"] == 30

    seen.clear()
    client = Client("http://api.test/v1", token="t", transport=httpx.MockTransport(
        lambda r: seen.append(r) or httpx.Response(409, json={"detail": "output_name taken"})))
    with pytest.raises(ApiError, match="output_name taken"):
        client.start_training("m", "d", "n")
    assert len(seen) == 1  # a refusal is final: not retried
