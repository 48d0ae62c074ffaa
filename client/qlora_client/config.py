"""Where the client talks to and who it is: `QLORA_API_URL`, the stored token (`QLORA_TOKEN`
overrides it), the user's config folder (tokens, the state of interrupted uploads)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click

DEFAULT_API_URL = "http://127.0.0.1:8000/v1"
APP = "qlora"


def api_url(explicit: str | None = None) -> str:
    """The API's base URL (with `/v1`): the argument, else `QLORA_API_URL`, else the local stack's."""
    return (explicit or os.environ.get("QLORA_API_URL") or DEFAULT_API_URL).rstrip("/")


def config_dir() -> Path:
    """The user's config folder for qlora (`$XDG_CONFIG_HOME/qlora`, `~/.config/qlora` on Linux)."""
    return Path(click.get_app_dir(APP))


def credentials_file() -> Path:
    return config_dir() / "credentials.json"


def uploads_dir() -> Path:
    """Where the state of multipart uploads under way is kept (to resume them)."""
    return config_dir() / "uploads"


def _private_folder(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    try:
        folder.chmod(0o700)
    except OSError:
        pass


def write_private(path: Path, data: Any) -> None:
    """Writes JSON readable by the user alone (mode 0600 from the start, replaced atomically)."""
    _private_folder(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(data, out, indent=2)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def stored_login(url: str) -> dict[str, str] | None:
    """`{"token", "username"}` stored for the API at `url` by `qlora login`."""
    data = read_json(credentials_file())
    entry = data.get(url) if isinstance(data, dict) else None
    return entry if isinstance(entry, dict) and entry.get("token") else None


def token(url: str) -> str | None:
    """The bearer token: `QLORA_TOKEN`, else the one stored for `url`."""
    return os.environ.get("QLORA_TOKEN") or (stored_login(url) or {}).get("token")


def store_login(url: str, access_token: str, username: str) -> Path:
    path = credentials_file()
    data = read_json(path)
    data = data if isinstance(data, dict) else {}
    data[url] = {"token": access_token, "username": username}
    write_private(path, data)
    return path


def forget_login(url: str) -> bool:
    path = credentials_file()
    data = read_json(path)
    if not isinstance(data, dict) or url not in data:
        return False
    del data[url]
    write_private(path, data)
    return True
