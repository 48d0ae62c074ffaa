"""`make bench`: runs every benchmark module in this folder (each prints its own table).

Run one with `python -m bench.<name>`. Benchmarks measure; they never assert a time.
`bench.load` (the API under 20 users' 200 job submissions and 50 pollers) runs only by name.
"""

import pkgutil
import runpy
import sys
from pathlib import Path

#: run only when named (`python -m bench load`): a full private stack and ~25 minutes on a loaded 2-core machine
BY_NAME_ONLY = {"load"}
names = sorted(m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)]) if not m.name.startswith("_"))
selected = [n for n in names if n in sys.argv[1:] or (not sys.argv[1:] and n not in BY_NAME_ONLY)]
for name in selected:
    print(f"\n=== bench.{name} ===", flush=True)
    sys.argv = [f"bench.{name}"]  # each with its defaults: the names given here are not its options
    runpy.run_module(f"bench.{name}", run_name="__main__")
