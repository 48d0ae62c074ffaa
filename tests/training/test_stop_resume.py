"""SIGTERM mid-run: the step finishes, a checkpoint and a loadable adapter are saved, the process
exits 75 within seconds; `--resume` finishes with the same adapter as an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import torch
from safetensors.torch import load_file

from training.cli import main
from training.result import EXIT_STOPPED, RunStatus, read_result

TASK = "video_classification"


def _args(model, data, out):
    return ["run", "--model", str(model), "--data", str(data), "--task", TASK, "--output", str(out),
            "--epochs", "3", "--batch-size", "4", "--frames", "4", "--learning-rate", "2e-3", "--seed", "3",
            "--checkpoint-every-steps", "4", "--mlflow-uri", ""]


def test_sigterm_saves_and_resume_matches_an_uninterrupted_run(tmp_path, tiny_models, colour_dataset):
    model = tiny_models("video_llama", TASK)
    out = tmp_path / "stopped"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "training", *_args(model, colour_dataset, out),
                             "--step-delay", "0.3"], stderr=subprocess.PIPE, text=True, env=env)
    log = out / "train.log"
    deadline = time.time() + 120
    while time.time() < deadline and not (log.is_file() and "step 6/18" in log.read_text()):
        time.sleep(0.1)
    assert proc.poll() is None, proc.stderr.read()
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=30)
    assert code == EXIT_STOPPED
    assert time.monotonic() - sent < 5  # Airflow sends SIGKILL 5 s after SIGTERM
    text = log.read_text()
    assert "stopped by SIGTERM" in text
    assert (out / "adapter_model.safetensors").is_file() and (out / "label_map.json").is_file()
    assert (out / "checkpoints" / "latest").is_file()
    stopped = read_result(out)
    assert stopped.status == RunStatus.STOPPED and "stopped by SIGTERM" in stopped.error
    assert 6 <= stopped.step < stopped.total_steps == 18
    assert stopped.checkpoints[-1].step == stopped.step  # the checkpoint it saved when it stopped
    assert "adapter_model.safetensors" in stopped.adapter_files

    # the partial adapter loads onto a fresh 4-bit base
    assert main(["predict", "--model", str(model), "--adapter", str(out),
                 "--clip", str(next((colour_dataset / "clips").glob("*.mp4")))]) == 0

    assert main([*_args(model, colour_dataset, out), "--resume"]) == 0
    assert "resumed from step-" in log.read_text()
    finished = read_result(out)
    assert finished.status == RunStatus.COMPLETED and finished.step == 18 and finished.error is None

    straight = tmp_path / "straight"
    assert main(_args(model, colour_dataset, straight)) == 0
    resumed, reference = (load_file(str(p / "adapter_model.safetensors")) for p in (out, straight))
    assert resumed.keys() == reference.keys()
    for name in reference:
        torch.testing.assert_close(resumed[name], reference[name], rtol=1e-5, atol=1e-6)
