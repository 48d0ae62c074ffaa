"""The stack's secrets, generated once into `.stack/secrets.env` and reused ever after."""

from __future__ import annotations

import secrets
from pathlib import Path

GENERATORS = {
    "QLORA_JWT_SECRET": lambda: secrets.token_urlsafe(48),
    "QLORA_WEBHOOK_SECRET_KEY": lambda: secrets.token_urlsafe(48),  # encrypts webhook signing secrets at rest
    "AIRFLOW_ADMIN_PASSWORD": lambda: secrets.token_urlsafe(12),
    "AIRFLOW_JWT_SECRET": lambda: secrets.token_urlsafe(48),
    "AIRFLOW_API_SECRET_KEY": lambda: secrets.token_urlsafe(32),
    "S3_ACCESS_KEY": lambda: "qlora" + secrets.token_hex(8),
    "S3_SECRET_KEY": lambda: secrets.token_urlsafe(30),
    # MLflow's basic-auth app: the operators' admin, the API's and the workers' accounts, the Flask secret
    "MLFLOW_ADMIN_PASSWORD": lambda: secrets.token_urlsafe(18),
    "MLFLOW_API_PASSWORD": lambda: secrets.token_urlsafe(18),
    "MLFLOW_WORKER_PASSWORD": lambda: secrets.token_urlsafe(18),
    "MLFLOW_FLASK_SECRET_KEY": lambda: secrets.token_urlsafe(32),
}


def read_env_file(path: Path) -> dict[str, str]:
    values = {}
    if path.exists():
        for line in path.read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep and not line.lstrip().startswith("#"):
                values[key.strip()] = value.strip()
    return values


def load_or_create(path: Path) -> dict[str, str]:
    """Existing values are kept; only missing ones are generated (file mode 600)."""
    values = read_env_file(path)
    missing = {k: make() for k, make in GENERATORS.items() if not values.get(k)}
    if missing:
        values.update(missing)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600, exist_ok=True)
        path.write_text("# generated once by `make up`; delete to rotate (then `make clean`)\n"
                        + "".join(f"{k}={v}\n" for k, v in values.items()))
        path.chmod(0o600)
    return values
