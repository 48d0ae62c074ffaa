"""Mintlify's own tooling checks the site, offline (the versions pinned in docs/package-lock.json):

* `mint broken-links --check-anchors --check-snippets`: every link between pages resolves;
* `mint openapi-check openapi.json`: Mintlify can read the API schema;
* `node scripts/mint-validate.mjs`: the offline part of `mint validate` (Mintlify's build step
  in strict mode: docs.json against Mintlify's schema, every page parses as MDX, snippets
  resolve, the API reference pages are generated). `mint validate` itself first downloads
  Mintlify's web client and refuses to run offline.

`npm ci` installs the tools into docs/node_modules once (again when package-lock.json changes).
Skipped only where Node.js or npm is missing."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.docs.conftest import DOCS

MODULES = DOCS / "node_modules"
STAMP = MODULES / ".qlora-lock-sha256"
LOCK_FILE = DOCS / ".npm-install.lock"  # serialises installs and runs of concurrent test sessions
ENV = {**os.environ, "MINTLIFY_TELEMETRY_DISABLED": "1", "DO_NOT_TRACK": "1", "NO_COLOR": "1", "CI": "1"}
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _run(args: list[str], cwd: Path, timeout: float = 180) -> tuple[int, str]:
    proc = subprocess.run(args, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)
    return proc.returncode, ANSI.sub("", proc.stdout + proc.stderr)


@pytest.fixture(scope="module")
def mint() -> Iterator[Path]:
    """docs/node_modules from the committed lock file; yields the `mint` executable."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("Node.js and npm are needed for Mintlify's checks of the docs site (node 20+)")
    wanted = hashlib.sha256((DOCS / "package-lock.json").read_bytes()).hexdigest()
    with open(LOCK_FILE, "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not STAMP.exists() or STAMP.read_text().strip() != wanted:
            code, out = _run([npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts"], DOCS, timeout=900)
            assert code == 0, f"`npm ci` in docs/ failed (the npm registry is needed once):\n{out[-3000:]}"
            STAMP.write_text(wanted)
        fcntl.flock(lock, fcntl.LOCK_SH)  # others may read, none reinstall while we run
        yield MODULES / ".bin" / "mint"


def _checks(mint: Path, site: Path, nav_out: Path) -> dict[str, tuple[int, str]]:
    return {
        "broken-links": _run([str(mint), "broken-links", "--check-anchors", "--check-snippets"], site),
        "openapi-check": _run([str(mint), "openapi-check", "openapi.json"], site),
        "validate": _run(["node", str(DOCS / "scripts" / "mint-validate.mjs"), str(site), str(nav_out)], site),
    }


def test_mintlify_accepts_the_site(mint, tmp_path, openapi):
    results = _checks(mint, DOCS, tmp_path / "nav.json")
    for name, (code, out) in results.items():
        assert code == 0, f"mint {name} failed on docs/:\n{out[-4000:]}"
    # the tools print their verdict: a crash that exits 0 must not pass
    assert "no broken links found" in results["broken-links"][1]
    assert "OpenAPI definition is valid" in results["openapi-check"][1]
    assert "build validation passed" in results["validate"][1]
    # the API reference: one generated page per operation
    nav = json.loads((tmp_path / "nav.json").read_text())["navigation"]
    api_tab = next(t for t in nav["tabs"] if t["tab"] == "API reference")
    endpoints = next(g for g in api_tab["groups"] if g["group"] == "Endpoints")
    pages = [p for tag_group in endpoints["pages"] for p in tag_group["pages"]]
    operations = [op for item in openapi["paths"].values() for op in item.values()]
    assert len(pages) == len(operations), (pages, len(operations))
    assert {g["group"] for g in endpoints["pages"]} == {tag for op in operations for tag in op["tags"]}


def _copy_of_site(tmp_path: Path, name: str) -> Path:
    site = tmp_path / name
    shutil.copytree(DOCS, site, ignore=shutil.ignore_patterns("node_modules"))
    return site


def test_broken_links_catches_a_dead_link_and_a_deleted_page(mint, tmp_path):
    site = _copy_of_site(tmp_path, "links")
    quickstart = site / "quickstart.mdx"
    quickstart.write_text(quickstart.read_text() + "\nSee [the old guide](/guides/no-such-page).\n")
    (site / "guides" / "stopping.mdx").unlink()  # index.mdx and others link to it
    code, out = _run([str(mint), "broken-links", "--check-anchors", "--check-snippets"], site)
    assert code != 0, out[-3000:]
    assert "/guides/no-such-page" in out and "/guides/stopping" in out, out[-3000:]


def test_validate_and_openapi_check_catch_a_broken_page_and_schema(mint, tmp_path):
    site = _copy_of_site(tmp_path, "build")
    mlflow_page = site / "guides" / "mlflow.mdx"
    mlflow_page.write_text(mlflow_page.read_text() + "\n<Card title=\"unclosed\">\n")
    (site / "guides" / "airflow.mdx").unlink()  # listed in docs.json's navigation
    spec = json.loads((site / "openapi.json").read_text())
    del spec["info"]
    (site / "broken-openapi.json").write_text(json.dumps(spec))  # docs.json's own stays valid
    code, out = _run([str(mint), "openapi-check", "broken-openapi.json"], site)
    assert code != 0 and "info" in out and "OpenAPI definition is valid" not in out, out[-3000:]
    code, out = _run(["node", str(DOCS / "scripts" / "mint-validate.mjs"), str(site)], site)
    assert code != 0, out[-3000:]
    assert "mlflow.mdx" in out and "guides/airflow" in out, out[-3000:]
