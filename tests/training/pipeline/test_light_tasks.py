"""Issue 16: the light tasks of `qlora_training` (validate_inputs, prepare, register, finalize)
start in a fresh task process, so what their work imports is paid on every job. Their code
paths must not pull in the engine's libraries (torch, transformers, peft, PyAV, pandas): a fresh
interpreter runs validate_inputs' checks and prepare's cache filling (S3 stubbed) and lists the
heavy modules it loaded. (The DAG file itself: tests/dags/test_qlora_training_dag.py.)"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
HEAVY = ("torch", "transformers", "peft", "bitsandbytes", "av", "pandas", "numpy", "mlflow", "training.trainer",
         "training.data.loader")

CODE = """
import json, sys
from datetime import datetime, timezone
from training import s3, job_spec
from training.catalog import load_catalog
from training.pipeline import job_inputs

REPORT = json.dumps({"valid": True, "tasks": ["video_classification"], "clip_count": 1, "clips": []}).encode()

class Body:
    def __init__(self, data): self.data = data
    def read(self): return self.data

class Client:  # what prepare and validate_inputs ask of S3
    def get_object(self, **kw): return {"Body": Body(REPORT)}
    def get_paginator(self, name):
        class Pages:
            def paginate(self, **kw):
                return [{"Contents": [{"Key": kw["Prefix"] + "a.json", "Size": 2,
                                       "LastModified": datetime(2026, 1, 1, tzinfo=timezone.utc)}]}]
        return Pages()
    def download_file(self, bucket, key, path):
        open(path, "wb").write(b"{}")

s3.client = lambda: Client()
conf = {"job_id": "j", "user": "u", "model_id": "flamingo-tiny-classification", "dataset_id": "d",
        "output_name": "o", "epochs": 1, "lora_rank": 4}
assert not job_spec.validate_job_conf(conf)
model = load_catalog().get(conf["model_id"])
report = job_inputs.read_dataset_report("d")
assert not job_spec.validate_job_request(model, report["tasks"], job_spec.conf_params(conf))
job_spec.resolve_job_params(model, job_spec.conf_params(conf)).model_dump()
cached = job_inputs.fill_worker_cache(conf["model_id"], conf["dataset_id"])
assert cached.model_downloads == cached.data_downloads == 1
print("HEAVY=" + json.dumps([m for m in HEAVY if m in sys.modules]))
"""


def test_validate_inputs_and_prepare_import_nothing_heavy(tmp_path):
    code = f"HEAVY = {HEAVY!r}\n" + textwrap.dedent(CODE)
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "QLORA_CACHE_DIR": str(tmp_path), "HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    line = next(l for l in done.stdout.splitlines() if l.startswith("HEAVY="))
    assert json.loads(line[len("HEAVY="):]) == []
