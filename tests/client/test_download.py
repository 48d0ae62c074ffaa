"""`Client.download_adapter`: files fetched from their URLs (a local HTTP server), verified
against the listed SHA-256; a corrupt one is refused and nothing is kept under its name."""

from __future__ import annotations

import hashlib
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

from qlora_client.client import ApiError, Client


@pytest.fixture
def served(tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(SimpleHTTPRequestHandler, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _listing(url: str, files: dict[str, bytes]) -> dict:
    return {"job_id": "j", "partial": False, "expires_at": "2026-11-25T11:00:00Z",
            "files": [{"name": n, "size_bytes": len(b), "sha256": hashlib.sha256(b).hexdigest(),
                       "download_url": f"{url}/{n}"} for n, b in files.items()]}


def test_download_verifies_every_file(served, tmp_path, monkeypatch):
    root, url = served
    files = {"adapter_config.json": b'{"r": 4}', "adapter_model.safetensors": b"w" * 300_000}
    for name, body in files.items():
        (root / name).write_bytes(body)
    client = Client("http://127.0.0.1:9", token="t")
    monkeypatch.setattr(client, "get_adapter", lambda job_id: _listing(url, files))
    seen = []
    client.download_adapter("j", tmp_path / "out", advance=seen.append)
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == files
    assert sum(seen) == sum(len(b) for b in files.values())

    (root / "adapter_model.safetensors").write_bytes(b"x" * 300_000)  # corrupted in storage
    with pytest.raises(ApiError, match="adapter_model.safetensors: downloaded 300000 bytes with SHA-256"):
        client.download_adapter("j", tmp_path / "bad")
    assert sorted(p.name for p in (tmp_path / "bad").iterdir()) == ["adapter_config.json"]  # no torn file

    listing = _listing(url, files)
    listing["files"][0]["download_url"] = f"{url}/expired"
    monkeypatch.setattr(client, "get_adapter", lambda job_id: listing)
    with pytest.raises(ApiError, match="HTTP 404 .*run the command again for fresh ones"):
        client.download_adapter("j", tmp_path / "gone")
