"""The generated parts of the site are what `make docs` writes from the code today: a router,
a training parameter or a `qlora` command changed without `make docs` fails here."""

from __future__ import annotations

import difflib
from pathlib import Path

import pytest

from tests.docs.conftest import ROOT


def _differs(path: Path, expected: str) -> str:
    actual = path.read_text(encoding="utf-8") if path.exists() else ""
    diff = "".join(difflib.unified_diff(actual.splitlines(True), expected.splitlines(True),
                                        f"{path.relative_to(ROOT)} (committed)", "what `make docs` writes", n=1))
    return diff[:4000]


@pytest.mark.parametrize("name", ["openapi", "params_table", "cli_reference"])
def test_generated_file_is_current(generator, name):
    path, make = {
        "openapi": (generator.OPENAPI, generator.openapi_text),
        "params_table": (generator.PARAMS_TABLE, generator.params_table_text),
        "cli_reference": (generator.CLI_REFERENCE, generator.cli_reference_text),
    }[name]
    diff = _differs(path, make())
    assert not diff, (f"{path.relative_to(ROOT)} is out of date with the code: run `make docs` and commit "
                      f"the result.\n{diff}")


def test_openapi_file_is_what_the_running_app_serves(openapi):
    """The exported file is the schema of `/v1/openapi.json` of an app built as uvicorn builds it."""
    import json

    from fastapi.testclient import TestClient

    from api.core.config import Settings
    from api.main import create_app

    served = TestClient(create_app(Settings(env="development"))).get("/v1/openapi.json").json()  # no lifespan: no services
    assert served == openapi
    assert json.loads((ROOT / "docs" / "openapi.json").read_text()) == served, "run `make docs`"


def test_params_table_has_a_row_per_parameter(generator):
    from training import params

    rows = [line for line in generator.PARAMS_TABLE.read_text().splitlines() if line.startswith("| `")]
    assert [row.split("`")[1] for row in rows] == list(params.PARAM_NAMES)
    epochs = next(row for row in rows if row.startswith("| `epochs`"))
    assert "`3`" in epochs and "≥ 1, ≤ 100" in epochs
