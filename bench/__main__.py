"""`make bench`: runs every benchmark module in this folder (each prints its own table).

Run one with `python -m bench.<name>`. Benchmarks measure; they never assert a time.
"""

import pkgutil
import runpy
import sys
from pathlib import Path

names = sorted(m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)]) if not m.name.startswith("_"))
selected = [n for n in names if not sys.argv[1:] or n in sys.argv[1:]]
for name in selected:
    print(f"\n=== bench.{name} ===", flush=True)
    runpy.run_module(f"bench.{name}", run_name="__main__")
