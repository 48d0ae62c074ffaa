"""`python -m devstack up|down|status` (what `make up`, `make down`, `make status` run)."""

from __future__ import annotations

import argparse
import sys
import time

from devstack.processes import ServiceError
from devstack.stack import Stack


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack", description=__doc__)
    parser.add_argument("command", choices=("up", "down", "status"))
    parser.add_argument("--no-seed", action="store_true", help="up: do not seed the tiny models into S3")
    args = parser.parse_args(argv)
    stack = Stack()
    if args.command == "up":
        started = time.monotonic()
        try:
            if stack.up(log=lambda line: print(line, flush=True), seed=not args.no_seed):
                print(f"stack up in {time.monotonic() - started:.1f} s\n")
            else:
                print("already running\n")
        except ServiceError as exc:
            print(f"error: {exc}\n(logs under {stack.folder}; `make down` stops what started)", file=sys.stderr)
            return 1
        print(stack.summary())
    elif args.command == "down":
        stack.down()
    else:
        print(f"{'service':10} {'port':>6}  {'health':9} pids")
        for name, pids, port, healthy in stack.status():
            state = "healthy" if healthy else ("UNHEALTHY" if pids else "stopped")
            print(f"{name:10} {port:>6}  {state:9} {' '.join(map(str, pids)) or '-'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
