"""`make up` wall time and the memory (RSS) of the local stack at rest.

Runs `python -m devstack up` in a fresh state folder on shifted ports (beside a running
`make up`), three ways: cold (empty folder: migrations, bucket, tiny-model seeding), again while
running (idempotent no-op), and after `down` (state kept). Then sums the RSS of every process
of every service. Usage: `python -m bench.stack [--no-seed] [--rest SECONDS]`."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from devstack.stack import Ports, Stack

REPO = Path(__file__).resolve().parents[1]
OFFSET = 30  # ports 8030, 8110, 5030, 9030, ...


def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _group(pgid: int) -> list[tuple[int, str]]:
    """Every process of a service's process group (leader and the workers it forked)."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getpgid(int(entry)) == pgid:
                    cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
                    members.append((int(entry), cmd))
            except (OSError, ProcessLookupError):
                continue
    return sorted(members)


def _short(cmd: str) -> str:
    words = [w for w in cmd.split() if not w.startswith("/") or w.endswith(("weed", "python"))]
    text = " ".join(Path(w).name if w.startswith("/") else w for w in words)
    return text[:60]


def _timed_up(env: dict, seed: bool) -> tuple[float, str]:
    """Wall time of one `devstack up` and its per-service readiness lines."""
    started = time.monotonic()
    argv = [sys.executable, "-m", "devstack", "up"] + ([] if seed else ["--no-seed"])
    result = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"devstack up failed:\n{result.stdout}{result.stderr}")
    phases = [line.strip() for line in result.stdout.splitlines() if "ready in" in line or "answer" in line]
    return time.monotonic() - started, "; ".join(phases)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--no-seed", action="store_true", help="skip seeding the tiny models")
    parser.add_argument("--rest", type=float, default=20, help="seconds to let the stack settle before RSS")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="qlora-bench-stack-"))
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("QLORA_", "AWS_", "MLFLOW_"))},
           "QLORA_STACK_DIR": str(folder), "QLORA_STACK_PORT_OFFSET": str(OFFSET)}
    try:
        cold = _timed_up(env, seed=not args.no_seed)
        again = _timed_up(env, seed=not args.no_seed)
        subprocess.run([sys.executable, "-m", "devstack", "down"], env=env, cwd=REPO, check=True,
                       capture_output=True)
        restart = _timed_up(env, seed=not args.no_seed)
        time.sleep(args.rest)
        os.environ.update(QLORA_STACK_DIR=str(folder), QLORA_STACK_PORT_OFFSET=str(OFFSET))
        stack = Stack(folder, Ports.shifted(OFFSET))
        print(f"\n`python -m devstack up` (warm venv, ports +{OFFSET}, seeding {'off' if args.no_seed else 'on'})")
        for label, (seconds, phases) in (("cold (empty state folder)", cold), ("again while running (no-op)", again),
                                         ("after down (state kept)", restart)):
            print(f"  {label:30} {seconds:7.1f} s  {phases}")
        print(f"  (load average now: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}, "
              f"{os.cpu_count()} CPUs)")
        print(f"\nRSS at rest ({args.rest:.0f} s after up)")
        print(f"  {'service':10} {'pid':>7} {'RSS MiB':>8}  process")
        total = 0
        for service in stack.services:
            service_total = 0
            for leader in service.pids():
                for pid, cmd in _group(leader):
                    rss = _rss_kib(pid)
                    service_total += rss
                    print(f"  {service.name:10} {pid:>7} {rss / 1024:8.0f}  {_short(cmd)}")
            print(f"  {service.name:10} {'all':>7} {service_total / 1024:8.0f}")
            total += service_total
        print(f"  {'TOTAL':10} {'':>7} {total / 1024:8.0f}")
    finally:
        subprocess.run([sys.executable, "-m", "devstack", "down"], env=env, cwd=REPO, capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
