"""End to end with the real `qlora` command: a tiny model trained to completion with
`train start --watch` (the metrics table of adapter vs base), the read commands, Ctrl-C
detaching from a watched job, `train stop`, and `train watch` of a stopped job."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest

from devstack.seed import seed_tiny_models
from tests.client.conftest import qlora_binary
from tests.client.test_cli_stack import signup, toy_archive

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]


@pytest.fixture
def run(make_runner, api_server):
    return make_runner(api_server.base_url.rstrip("/") + "/v1")


def test_train_watch_to_completion_then_detach_and_stop(run, api_server, tmp_path) -> None:
    lines = seed_tiny_models(api_server.s3, tmp_path / "seed.log")
    assert not any("failed" in line for line in lines), lines
    signup(run)
    upload = run("datasets", "upload", str(toy_archive(tmp_path / "toy", clips=12)), "--name", "toy", "--wait")
    assert upload.returncode == 0, upload.stderr
    dataset_id = upload.stdout.strip()

    started = time.monotonic()
    done = run("train", "start", "--model", "flamingo-tiny-classification", "--dataset", dataset_id,
               "--name", "cli-colour", "--epochs", "4", "--learning-rate", "0.002", "--batch-size", "2",
               "--lora-rank", "4", "--watch", timeout=420)
    took = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    progress = [line for line in done.stderr.splitlines() if line.startswith("running training")]
    assert progress and any("loss " in line and "epoch " in line for line in progress), done.stderr
    assert "completed: adapter at s3://" in done.stderr
    table = done.stdout.splitlines()
    assert table[0] == "Held-out evaluation" and table[1].split() == ["METRIC", "BASE", "MODEL", "ADAPTER", "CHANGE"]
    rows = {line.split()[0]: line.split()[1:] for line in table[2:]}
    assert "accuracy" in rows and len(rows["accuracy"]) == 3, table
    print(f"train start --watch to completed: {took:.1f} s; accuracy base/adapter/change {rows['accuracy']}")

    jobs = json.loads(run("train", "list", "--json").stdout)
    job_id = jobs[0]["job_id"]
    assert (jobs[0]["output_name"], jobs[0]["status"]) == ("cli-colour", "completed")
    detail = json.loads(run("train", "show", job_id, "--json").stdout)
    assert detail["training_params"]["epochs"] == 4 and detail["training_params"]["lora_rank"] == 4
    assert detail["metrics"]["final_accuracy"] == float(rows["accuracy"][1])
    logs = run("train", "logs", job_id)
    assert logs.returncode == 0 and "step " in logs.stdout
    evaluation = json.loads(run("train", "evaluation", job_id, "--json").stdout)
    assert evaluation["adapter"]["metrics"]["accuracy"] == detail["metrics"]["final_accuracy"]
    assert evaluation["base"]["metrics"]["accuracy"] == detail["metrics"]["base_accuracy"]
    per_class = evaluation["adapter"]["per_class"]
    assert sum(c["support"] for c in per_class) == evaluation["held_out_examples"] > 0
    shown = run("train", "evaluation", job_id)
    assert shown.returncode == 0 and "Adapter, per class" in shown.stdout and "confusion matrix" in shown.stdout
    assert all(c["label"] in shown.stdout for c in per_class)
    refused = run("train", "resume", job_id)  # the real API's 409, one line
    assert refused.returncode == 1 and "cannot be resumed: it completed" in refused.stderr, refused.stderr
    download = run("train", "download", job_id, "-o", str(tmp_path / "adapter"))
    assert download.returncode == 0, download.stderr
    assert "SHA-256 verified" in download.stderr and download.stdout.strip() == str(tmp_path / "adapter")
    got = sorted(p.name for p in (tmp_path / "adapter").iterdir())
    assert "adapter_config.json" in got and "adapter_model.safetensors" in got and not [n for n in got if ".part" in n]

    # a long job: watch it, Ctrl-C detaches (it keeps running), then stop it
    long = run("train", "start", "--model", "flamingo-tiny-classification", "--dataset", dataset_id,
               "--name", "cli-long", "--epochs", "100", "--batch-size", "1", "--lora-rank", "4")
    assert long.returncode == 0, long.stderr
    long_id = long.stdout.strip()
    watch = subprocess.Popen([qlora_binary(), "train", "watch", long_id], env=run.env, stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        line = watch.stderr.readline()
        seen.append(line)
        if line.startswith("running training") and " step " in line:
            break
    assert seen[-1].startswith("running training"), seen
    watch.send_signal(signal.SIGINT)
    out, err = watch.communicate(timeout=30)
    assert watch.returncode == 130, err
    assert f"Detached from job {long_id}; it keeps running. Stop it with: qlora train stop {long_id}" in err
    assert json.loads(run("train", "show", long_id, "--json").stdout)["status"] == "running"

    follow = subprocess.Popen([qlora_binary(), "train", "logs", long_id, "--follow"], env=run.env,
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    shown = run("train", "show", long_id)
    assert "status" in shown.stdout and "parameters" in shown.stdout and "epochs=100" in shown.stdout

    stop = run("train", "stop", long_id)
    assert stop.returncode == 0 and f"qlora train watch {long_id}" in stop.stderr
    asked = time.monotonic()
    ended = run("train", "watch", long_id, "--json", timeout=240)
    assert ended.returncode == 3, ended.stderr
    assert json.loads(ended.stdout)["status"] == "stopped"
    assert f"Job {long_id} stopped" in ended.stderr
    print(f"stop -> watch ends stopped: {time.monotonic() - asked:.1f} s")
    followed, follow_err = follow.communicate(timeout=60)  # --follow ends with the job
    assert follow.returncode == 0 and "step " in followed and f"job {long_id} stopped" in follow_err
    again = run("train", "stop", long_id)
    assert again.returncode == 1 and again.stderr.startswith("Error: ")
