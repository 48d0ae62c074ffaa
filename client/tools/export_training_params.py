"""Writes `qlora_client/training_params.json`, the JSON schema of the training parameters, from
their one definition (`training/params.py`, `TrainingParams`) in this repository.

The client package must not import `training/` (it installs alone, without torch, pydantic or
the service), so `qlora train start` builds its options from this copy; `make client-params`
rewrites it and `tests/client/test_cli_offline.py` fails when it differs from the
definition.

    python client/tools/export_training_params.py           # rewrite the copy
    python client/tools/export_training_params.py --check   # exit 1 when it is out of date
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COPY = ROOT / "client" / "qlora_client" / "training_params.json"


def render() -> str:
    """The copy's text as the definition gives it now."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from training.params import TrainingParams

    return json.dumps(TrainingParams.model_json_schema(), indent=2) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not COPY.exists() or COPY.read_text() != text:
            print(f"{COPY.relative_to(ROOT)} is out of date with training/params.py: run `make client-params`",
                  file=sys.stderr)
            return 1
        return 0
    COPY.write_text(text)
    print(f"wrote {COPY.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
