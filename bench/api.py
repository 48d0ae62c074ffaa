"""API latency under load: `GET /v1/datasets` (1,000 datasets in the table) and
`POST /v1/datasets/upload-initiate`, each beside the trivial authenticated `GET /v1/auth/me`
of the same server in the same run, at 20 concurrent clients.

    python -m bench.api [--db postgres|sqlite] [--datasets 1000] [--clients 20] [--seconds 10]

Starts its own PostgreSQL 15 (or SQLite), SeaweedFS and the API under uvicorn (one worker) on
free loopback ports in a temp folder, and stops them at the end. Measures; asserts nothing.
Airflow is not started: every seeded dataset is `ready`, so the list needs no Airflow call.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import shutil
import statistics
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx

from devstack.api_server import APIServer
from devstack.ports import free_ports
from devstack.postgres import Postgres
from devstack.seaweedfs import SeaweedFS


ROUNDS = 4
WARM_UP_S = 0.5


@dataclass
class Result:
    name: str
    latencies_ms: list[float]
    seconds: float
    errors: int

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies_ms)

    @property
    def p99(self) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]

    @property
    def rps(self) -> float:
        return len(self.latencies_ms) / self.seconds


async def load(base: str, name: str, method: str, path: str, headers: dict[str, str], body: dict | None,
               clients: int, seconds: float) -> Result:
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, headers=headers, limits=limits, timeout=60) as http:
        warm_end = time.perf_counter() + WARM_UP_S
        end = warm_end + seconds

        async def worker() -> None:
            nonlocal errors
            while (now := time.perf_counter()) < end:
                start = time.perf_counter()
                resp = await http.request(method, path, json=body)
                took = (time.perf_counter() - start) * 1000
                if resp.status_code >= 400:
                    errors += 1
                elif now >= warm_end:
                    latencies.append(took)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        measured = time.perf_counter() - max(started, warm_end)
    return Result(name, latencies, measured, errors)


def seed_datasets(database_url: str, username: str, count: int) -> None:
    from sqlalchemy import select

    from api.db import make_engine, make_sessionmaker
    from api.models import Dataset, DatasetStage, User
    from api.models.base import new_id, utcnow
    from training.s3 import dataset_upload_key

    engine = make_engine(database_url)
    with make_sessionmaker(engine)() as session:
        owner = session.scalar(select(User).where(User.username == username))
        now = utcnow()
        rows = []
        for i in range(count):
            dataset_id = new_id()
            ds = Dataset(id=dataset_id, owner_id=owner.id, name=f"dataset {i}", description="bench dataset " * 4,
                         file_name="clips.zip", s3_key=dataset_upload_key(dataset_id, "clips.zip"),
                         file_count=21, total_size_bytes=123456, created_at=now - timedelta(seconds=i),
                         stats={"tasks": ["video_classification"], "labels": {"left": 10, "right": 10}})
            ds.set_stage(DatasetStage.READY)
            rows.append(ds)
        session.add_all(rows)
        session.commit()
    engine.dispose()


def signup(base: str, username: str) -> dict[str, str]:
    password = "bench-password-123"
    httpx.post(f"{base}/v1/auth/signup", json={"username": username, "email": f"{username}@example.com",
                                                "password": password}, timeout=30).raise_for_status()
    token = httpx.post(f"{base}/v1/auth/login", json={"username": username, "password": password},
                       timeout=30).json()["access_token"]
    return {"Authorization": f"Bearer {token}"}


def print_table(pairs: list[tuple[Result, Result]], clients: int) -> None:
    print(f"\n{clients} concurrent clients; latency in ms; ratio = route / trivial route of the same phase")
    header = f"{'route':<36}{'requests':>9}{'errors':>7}{'p50':>9}{'p99':>9}{'req/s':>9}{'p50 x':>8}{'p99 x':>8}{'req/s x':>9}"
    print(header)
    print("-" * len(header))
    for route, trivial in pairs:
        for r in (trivial, route):
            ratio = r is route
            print(f"{r.name:<36}{len(r.latencies_ms):>9}{r.errors:>7}{r.p50:>9.1f}{r.p99:>9.1f}{r.rps:>9.1f}"
                  + (f"{r.p50 / trivial.p50:>8.1f}{r.p99 / trivial.p99:>8.1f}{r.rps / trivial.rps:>9.2f}" if ratio
                     else f"{'1.0':>8}{'1.0':>8}{'1.00':>9}"))
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", choices=("postgres", "sqlite"), default="postgres")
    parser.add_argument("--datasets", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="qlora-bench-api-"))
    folder.chmod(0o755)
    services: list = []
    try:
        ports = free_ports(12)
        if args.db == "postgres":
            pg = Postgres(folder / "pg", ports[11])
            pg.start()
            services.append(pg)
            database_url = pg.create_database("bench")
        else:
            database_url = f"sqlite:///{folder / 'api.db'}"
        s3 = SeaweedFS(folder / "s3", s3_port=ports[0], master_port=ports[1], volume_port=ports[2],
                       filer_port=ports[3], admin_port=ports[4], grpc_ports=tuple(ports[5:10]),
                       access_key="bench", secret_key=secrets.token_urlsafe(24), bucket="qlora-bench")
        s3.start()
        services.append(s3)
        s3.wait_ready()
        env = {**s3.settings.env(), "QLORA_DATABASE_URL": database_url, "QLORA_RECONCILE_INTERVAL_S": "0",
               "QLORA_AIRFLOW_URL": f"http://127.0.0.1:{ports[10]}", "QLORA_JWT_SECRET": secrets.token_urlsafe(48)}
        api = APIServer(folder / "api", ports[10], env)
        api.start()
        services.append(api)
        api.wait_ready()
        base = api.url

        lister = f"bench_{uuid.uuid4().hex[:8]}"
        list_headers = signup(base, lister)
        seed_datasets(database_url, lister, args.datasets)
        assert len(httpx.get(f"{base}/v1/datasets", headers=list_headers, timeout=60).json()) == args.datasets
        init_headers = signup(base, f"bench_{uuid.uuid4().hex[:8]}")
        initiate = {"file_name": "clips.zip", "file_type": "application/zip", "dataset_name": "bench",
                    "dataset_description": "benchmark upload"}
        print(f"API on {args.db} ({database_url.split('://')[0]}), uvicorn 1 worker; "
              f"{args.datasets} datasets for the list user; {args.seconds:.0f} s per route in {ROUNDS} slices alternating with the trivial route, "
              f"each after a {WARM_UP_S} s warm-up")

        def run(name: str, method: str, path: str, headers: dict[str, str], body: dict | None = None) -> Result:
            return asyncio.run(load(base, name, method, path, headers, body, args.clients, args.seconds / ROUNDS))

        def paired(name: str, method: str, path: str, headers: dict[str, str], body: dict | None = None):
            """Route and trivial route alternate in ROUNDS slices, so load drift hits both alike."""
            trivial, route = Result("GET /v1/auth/me", [], 0.0, 0), Result(name, [], 0.0, 0)
            for _ in range(ROUNDS):
                for total, result in ((trivial, run(trivial.name, "GET", "/v1/auth/me", headers)),
                                      (route, run(name, method, path, headers, body))):
                    total.latencies_ms += result.latencies_ms
                    total.seconds += result.seconds
                    total.errors += result.errors
            return route, trivial

        pairs = [
            paired(f"GET /v1/datasets ({args.datasets} rows)", "GET", "/v1/datasets", list_headers),
            paired("POST /v1/datasets/upload-initiate", "POST", "/v1/datasets/upload-initiate", init_headers,
                   initiate),
        ]
        print_table(pairs, args.clients)
    finally:
        for service in reversed(services):
            service.stop()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
