"""End to end through the real stack (API on uvicorn + PostgreSQL, SeaweedFS, Airflow with the
dataset_validation DAG, MLflow): a user uploads datasets with presigned URLs and each ends
`ready` with the right counts or `error` with a precise detail."""

from __future__ import annotations

import csv
import os
import time
import uuid
import zipfile
from pathlib import Path

import httpx
import pytest

from training.data.synthetic import make_dataset, zip_folder

pytestmark = [pytest.mark.e2e, pytest.mark.stack, pytest.mark.timeout(600)]

POLL_TIMEOUT_S = 180


def _first_row_of(folder: Path, index: int) -> tuple[int, str]:
    with open(folder / "metadata.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return index + 1, rows[index]["file_name"]


def _archives(tmp: Path) -> dict[str, dict]:
    cases: dict[str, dict] = {}

    good = make_dataset(tmp / "good" / "squares", 20)
    files = [p for p in good.rglob("*") if p.is_file()]
    cases["valid"] = {"zip": zip_folder(tmp / "good", tmp / "squares.zip"),
                      "file_count": len(files), "total_size_bytes": sum(p.stat().st_size for p in files)}

    corrupt = tmp / "corrupt.zip"
    corrupt.write_bytes(os.urandom(4096))
    cases["corrupt"] = {"zip": corrupt, "detail": "corrupt.zip: not a zip archive"}

    slip = tmp / "slip.zip"
    with zipfile.ZipFile(slip, "w") as zf:
        zf.writestr("metadata.csv", "file_name,label\nclip.mp4,a\n")
        zf.writestr("../../../tmp/evil.mp4", b"boom")
    cases["zip_slip"] = {"zip": slip, "detail": "unsafe archive member '../../../tmp/evil.mp4': it "
                                                "escapes the extraction folder (zip slip"}

    missing = make_dataset(tmp / "missing", 4)
    row, name = _first_row_of(missing, 2)
    (missing / name).unlink()
    cases["missing_clip"] = {"zip": zip_folder(missing, tmp / "missing.zip"),
                             "detail": f"{name} (metadata.csv row {row}): no such file in the archive"}

    broken = make_dataset(tmp / "broken", 4)
    row, name = _first_row_of(broken, 1)
    (broken / name).write_bytes(os.urandom(5000))
    cases["undecodable"] = {"zip": zip_folder(broken, tmp / "broken.zip"),
                            "detail": f"{name} (metadata.csv row {row}): cannot be opened as a video"}
    return cases


def test_upload_validate_ready_or_precise_error(api_server, tmp_path):
    cases = _archives(tmp_path)
    base = api_server.base_url.rstrip("/") + "/v1"
    user = f"e2e_{uuid.uuid4().hex[:8]}"
    with httpx.Client(base_url=base, timeout=30) as api:
        assert api.post("/auth/signup", json={"username": user, "email": f"{user}@example.com",
                                              "password": "correct horse battery"}).status_code == 201
        login = api.post("/auth/login", json={"username": user, "password": "correct horse battery"})
        assert login.status_code == 200, login.text
        api.headers["Authorization"] = f"Bearer {login.json()['access_token']}"

        for name, case in cases.items():
            init = api.post("/datasets/upload-initiate", json={
                "file_name": case["zip"].name, "file_type": "application/zip",
                "dataset_name": f"e2e {name}", "dataset_description": name})
            assert init.status_code == 200, init.text
            body = init.json()
            put = httpx.put(body["upload_url"], content=case["zip"].read_bytes(), timeout=30)
            assert put.status_code == 200, put.text
            started = time.perf_counter()
            done = api.post("/datasets/upload-complete",
                            json={"dataset_id": body["dataset_id"], "s3_key": body["s3_key"]})
            assert done.status_code == 200, done.text
            case.update(id=body["dataset_id"], started=started)

        pending = dict(cases)
        deadline = time.monotonic() + POLL_TIMEOUT_S
        while pending and time.monotonic() < deadline:
            for name, case in list(pending.items()):
                got = api.get(f"/datasets/{case['id']}")
                assert got.status_code == 200, got.text
                if got.json()["status"] != "processing":
                    case.update(final=got.json(), seconds=time.perf_counter() - case["started"])
                    del pending[name]
            time.sleep(1)
        assert not pending, {n: api.get(f"/datasets/{c['id']}").json() for n, c in pending.items()}

    print("upload-complete -> final status seconds:",
          {name: round(case["seconds"], 1) for name, case in cases.items()})
    valid = cases["valid"]["final"]
    assert valid["status"] == "ready", valid
    assert valid["file_count"] == cases["valid"]["file_count"] == 21
    assert valid["total_size_bytes"] == cases["valid"]["total_size_bytes"]
    for name in ("corrupt", "zip_slip", "missing_clip", "undecodable"):
        final = cases[name]["final"]
        assert final["status"] == "error", (name, final)
        assert cases[name]["detail"] in (final.get("error") or ""), (name, final)
