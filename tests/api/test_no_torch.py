"""The API runs without the training engine's and Airflow's packages: its slim image
(docker-compose.yaml, requirements-api.lock) installs neither torch nor Airflow.

A fresh Python, in which `import torch` (and Airflow, transformers, peft, bitsandbytes,
accelerate) fails as if not installed, imports `api.main`, starts the app on SQLite with the
real S3, Airflow and MLflow clients (pointed at a closed port) and serves requests; at the
end none of those packages is in `sys.modules`. No service is started."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
NOT_INSTALLED = ("torch", "airflow", "transformers", "peft", "bitsandbytes", "accelerate")
MARK = "@@RESULT@@"

CODE = """
import json, sys

NOT_INSTALLED = set(sys.argv[2].split(","))


class NotInstalled:
    \"\"\"First on sys.meta_path: these top-level packages are not found, by `import` or probes.\"\"\"

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in NOT_INSTALLED:
            raise ModuleNotFoundError(f"No module named {name!r} (not installed in the API image)", name=name)
        return None


sys.meta_path.insert(0, NotInstalled())

from fastapi.testclient import TestClient

from api.core.config import Settings
from api.main import create_app

settings = Settings(
    database_url=f"sqlite:///{sys.argv[1]}/api.db",
    s3_bucket="qlora", s3_endpoint_url="http://127.0.0.1:9", aws_access_key_id="k", aws_secret_access_key="s",
    airflow_url="http://127.0.0.1:9", mlflow_tracking_uri="http://127.0.0.1:9", reconcile_interval_s=0,
)
out = {}
with TestClient(create_app(settings)) as client:
    out["openapi"] = client.get("/v1/openapi.json").status_code
    out["anonymous"] = client.get("/v1/models/allowed").status_code
    user = {"username": "ada", "email": "ada@example.com", "password": "correct-horse-1"}
    out["signup"] = client.post("/v1/auth/signup", json=user).status_code
    token = client.post("/v1/auth/login", json={"username": "ada", "password": user["password"]}).json()["access_token"]
    allowed = client.get("/v1/models/allowed", headers={"Authorization": f"Bearer {token}"})
    out["allowed"] = allowed.status_code
    out["models"] = len(allowed.json()) if allowed.status_code == 200 else allowed.text
out["imported"] = sorted(m for m in sys.modules if m.partition(".")[0] in NOT_INSTALLED)
print("@@RESULT@@" + json.dumps(out))
"""


def test_the_api_serves_without_torch_or_airflow(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QLORA_", "AWS_", "MLFLOW_", "AIRFLOW"))}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(CODE), str(tmp_path), ",".join(NOT_INSTALLED)],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=180)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(MARK)]
    assert proc.returncode == 0 and lines, proc.stderr[-6000:]
    result = json.loads(lines[-1][len(MARK):])
    assert result["imported"] == []
    assert (result["openapi"], result["anonymous"], result["signup"], result["allowed"]) == (200, 401, 201, 200)
    assert isinstance(result["models"], int) and result["models"] > 0, result["models"]
