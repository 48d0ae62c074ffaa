"""The real `qlora` command (a subprocess, stdin/stdout not terminals unless a pty is asked for)
against the real stack of `api_server`: uvicorn + PostgreSQL, SeaweedFS, Airflow running the
DAGs, MLflow. Accounts and tokens, uploads (single PUT and multipart: a retried part, an
interrupted upload resumed, one aborted), validation errors, the error paths."""

from __future__ import annotations

import json
import os
import pty
import select
import stat
import subprocess
import time
import uuid
import zipfile
from pathlib import Path

import pytest

from tests.client.conftest import qlora_binary
from training import s3 as s3_layout
from training.data.synthetic import make_dataset, zip_folder

PASSWORD = "correct horse battery"
MIB = 1024**2


@pytest.fixture
def run(make_runner, api_server):
    return make_runner(api_server.base_url.rstrip("/") + "/v1")


def signup(run) -> str:
    user = f"cli_{uuid.uuid4().hex[:8]}"
    got = run("signup", "--username", user, "--email", f"{user}@example.com", "--password", PASSWORD)
    assert got.returncode == 0, got.stderr
    return user


def toy_archive(folder: Path, clips: int = 8, padding: int = 0) -> Path:
    """A valid dataset archive; `padding` random bytes in an extra file make it as large as needed."""
    make_dataset(folder / "data" / "squares", clips)
    archive = zip_folder(folder / "data", folder / f"{folder.name}.zip")
    if padding:
        with zipfile.ZipFile(archive, "a", zipfile.ZIP_STORED) as zf:
            zf.writestr("squares/padding.bin", os.urandom(padding))
    return archive


def list_names(run) -> list[str]:
    return [d["name"] for d in json.loads(run("datasets", "list", "--json").stdout)]


def single_line_error(got: subprocess.CompletedProcess) -> str:
    lines = got.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), got.stderr
    return lines[0]


def test_accounts_tokens_and_api_errors(run, tmp_path) -> None:
    user = signup(run)
    creds = run.config / "credentials.json"
    assert stat.S_IMODE(creds.stat().st_mode) == 0o600
    assert stat.S_IMODE(creds.parent.stat().st_mode) == 0o700
    me = run("whoami", "--json")
    assert me.returncode == 0 and json.loads(me.stdout)["username"] == user
    assert user in run("whoami").stdout

    # QLORA_TOKEN overrides the stored token
    bad = run("whoami", env={"QLORA_TOKEN": "not-a-token"})
    assert bad.returncode == 1 and "(run `qlora login`)" in single_line_error(bad)
    wrong = run("login", "--username", user, "--password-stdin", stdin="wrong password\n")
    assert wrong.returncode == 1 and single_line_error(wrong) == "Error: Incorrect username or password"
    again = run("signup", "--username", user, "--email", f"{user}@example.com", "--password", PASSWORD)
    assert again.returncode == 1 and "already exists" in single_line_error(again)
    short = run("signup", "--username", "x" + user, "--email", f"x{user}@example.com", "--password", "short")
    assert short.returncode == 1 and "password" in single_line_error(short)

    missing = run("datasets", "show", "no-such-dataset")
    assert missing.returncode == 1 and single_line_error(missing) == "Error: Dataset not found"
    no_job = run("train", "show", "no-such-job", "--json")
    assert no_job.returncode == 1 and no_job.stdout == "" and single_line_error(no_job)
    unknown = run("train", "start", "--model", "no-such-model", "--dataset", "d", "--name", "n", "--epochs", "2")
    assert unknown.returncode == 1 and "no-such-model" in single_line_error(unknown)

    models = run("models", "list", "--json")
    assert models.returncode == 0
    ids = [m["id"] for m in json.loads(models.stdout)]
    assert "flamingo-tiny-classification" in ids
    shown = run("models", "show", "flamingo-tiny-classification")
    assert shown.returncode == 0 and "lora rank" in shown.stdout and "\x1b[" not in shown.stdout
    table = run("models", "list")
    assert table.stdout.splitlines()[0].split()[:2] == ["ID", "TYPE"] and "\x1b[" not in table.stdout

    assert run("logout").returncode == 0
    assert run("whoami").returncode == 1
    relog = run("login", "--username", user, "--password-stdin", stdin=PASSWORD + "\n")
    assert relog.returncode == 0 and run("whoami").returncode == 0


def test_upload_wait_ready_error_and_delete(run, api_server, tmp_path) -> None:
    signup(run)
    good = toy_archive(tmp_path / "good")
    broken = tmp_path / "broken.zip"  # the table names a clip the archive lacks
    with zipfile.ZipFile(broken, "w") as zf:
        zf.writestr("metadata.csv", "file_name,label\nmissing.mp4,left\nother.mp4,right\n")
    # both at once (their validations run side by side), the good one first
    waiting = subprocess.Popen([qlora_binary(), "datasets", "upload", str(good), "--name", "toy", "--description",
                                "squares", "--wait", "--json"], env=run.env, stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while not list_names(run):
        time.sleep(0.2)
    bad = run("datasets", "upload", str(broken), "--name", "broken", "--wait")
    stdout, stderr = waiting.communicate(timeout=120)
    assert waiting.returncode == 0, stderr
    ready = json.loads(stdout)
    assert (ready["status"], ready["name"], ready["stats"]["clip_count"]) == ("ready", "toy", 8)
    assert "uploaded" in stderr and "\x1b[" not in stderr + stdout  # plain lines, no colour

    assert bad.returncode == 1
    error = bad.stderr.strip().splitlines()[-1]
    assert error.startswith("Error: dataset ") and "is in error: Validation failed" in error, bad.stderr
    assert "missing.mp4" in error

    listed = json.loads(run("datasets", "list", "--json").stdout)
    assert [d["name"] for d in listed] == ["broken", "toy"]  # newest first
    bad_id = listed[0]["id"]
    assert run("datasets", "delete", bad_id).returncode == 0
    assert run("datasets", "show", bad_id).returncode == 1
    s3 = api_server.s3.client()
    assert s3.list_objects_v2(Bucket=api_server.s3.bucket, Prefix=s3_layout.dataset_prefix(bad_id)).get("KeyCount") == 0

    wrong_type = tmp_path / "clips.tar"
    wrong_type.write_bytes(b"not a zip")
    refused = run("datasets", "upload", str(wrong_type), "--name", "x")
    assert refused.returncode == 1 and refused.stderr.count("Error") == 1
    assert refused.stderr.strip().splitlines()[-1].startswith("Error: Unsupported archive type for file_name")


def _pty_run(argv: list[str], env: dict[str, str], timeout: float = 120) -> tuple[int, str]:
    """Runs `argv` with stdin/stdout/stderr on a pseudo-terminal; returns (exit code, output)."""
    pid, fd = pty.fork()
    if pid == 0:  # the child
        os.execve(argv[0], argv, env)
    chunks, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                data = os.read(fd, 65536)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    return os.waitstatus_to_exitcode(status), b"".join(chunks).decode(errors="replace")


def test_progress_bar_on_a_terminal(run, tmp_path) -> None:
    signup(run)
    archive = toy_archive(tmp_path / "tty", padding=3 * MIB)
    code, output = _pty_run([qlora_binary(), "datasets", "upload", str(archive), "--name", "tty"],
                            {**run.env, "TERM": "xterm-256color"})
    assert code == 0, output
    assert "━" in output and "\x1b[" in output  # a rich bar, with colour
    assert "Uploading tty.zip" in output and "MB" in output


def _pending(api_server, dataset_id: str) -> list[dict]:
    return api_server.s3.client().list_multipart_uploads(
        Bucket=api_server.s3.bucket, Prefix=s3_layout.dataset_prefix(dataset_id)).get("Uploads", [])


def test_multipart_upload_retried_interrupted_resumed_and_aborted(run, api_server, tmp_path) -> None:
    signup(run)
    archive = toy_archive(tmp_path / "big", padding=11 * MIB)  # three parts of 5 MiB
    puts = tmp_path / "puts.log"
    env = {"QLORA_MULTIPART_THRESHOLD": str(MIB), "QLORA_UPLOAD_CONCURRENCY": "1", "QLORA_TEST_PUT_LOG": str(puts)}

    # Ctrl-C while part 2 goes up: part 1 stays in S3, the state file stays for a resume
    first = run("datasets", "upload", str(archive), "--name", "big", "--part-size", "5",
                env={**env, "QLORA_TEST_INTERRUPT_AT_PART": "2"})
    assert first.returncode == 130, first.stderr
    assert "in 3 parts of 5 MiB as dataset" in first.stderr
    dataset_id = first.stderr.split("as dataset ")[1].split()[0]
    assert f"Run the same command again to resume the upload, or abort it with `qlora datasets delete {dataset_id}`" \
        in first.stderr
    (upload,) = _pending(api_server, dataset_id)
    held = api_server.s3.client().list_parts(Bucket=api_server.s3.bucket, Key=upload["Key"],
                                             UploadId=upload["UploadId"]).get("Parts", [])
    assert [p["PartNumber"] for p in held] == [1]
    assert len(list((run.config / "uploads").glob("*.json"))) == 1
    assert puts.read_text().split() == ["1", "2"]

    # the same command resumes: part 1 is not sent again, part 2's dropped connection is retried
    puts.unlink()
    second = run("datasets", "upload", str(archive), "--name", "big", "--part-size", "5", "--wait", "--json",
                 env={**env, "QLORA_TEST_FAIL_PART_ONCE": "2"})
    assert second.returncode == 0, second.stderr
    assert f"Resuming the upload of dataset {dataset_id}: 1 of 3 parts are already in S3" in second.stderr
    assert "in 3 parts, 1 of them resumed" in second.stderr
    assert puts.read_text().split() == ["2", "2", "3"]
    final = json.loads(second.stdout)
    assert (final["id"], final["status"], final["upload_size_bytes"]) == (dataset_id, "ready", archive.stat().st_size)
    body = api_server.s3.client().get_object(Bucket=api_server.s3.bucket, Key=upload["Key"])["Body"].read()
    assert body == archive.read_bytes()
    assert _pending(api_server, dataset_id) == [] and list((run.config / "uploads").glob("*.json")) == []

    # another interrupted upload, aborted by deleting its dataset: nothing left, locally or in S3
    other = toy_archive(tmp_path / "other", padding=11 * MIB)
    cut = run("datasets", "upload", str(other), "--name", "other", "--part-size", "5", env={**env, "QLORA_TEST_INTERRUPT_AT_PART": "3"})
    assert cut.returncode == 130
    other_id = cut.stderr.split("as dataset ")[1].split()[0]
    assert len(_pending(api_server, other_id)) == 1
    assert run("datasets", "delete", other_id).returncode == 0
    assert _pending(api_server, other_id) == [] and list((run.config / "uploads").glob("*.json")) == []
    assert api_server.s3.client().list_objects_v2(
        Bucket=api_server.s3.bucket, Prefix=s3_layout.dataset_prefix(other_id)).get("KeyCount") == 0

    # --restart aborts an interrupted upload and starts anew
    cut = run("datasets", "upload", str(other), "--name", "other", "--part-size", "5", env={**env, "QLORA_TEST_INTERRUPT_AT_PART": "2"})
    old_id = cut.stderr.split("as dataset ")[1].split()[0]
    fresh = run("datasets", "upload", str(other), "--name", "other", "--part-size", "5", "--restart", env=env)
    assert fresh.returncode == 0, fresh.stderr
    assert f"Aborted the earlier upload of this file (dataset {old_id})" in fresh.stderr
    assert run("datasets", "show", old_id).returncode == 1 and _pending(api_server, old_id) == []
