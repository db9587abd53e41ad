"""Projection rebuild benchmark: our runner vs eventsourcing's stock ``ProjectionRunner``.

    python bench/projections.py                       # 1,000,000 events, embedded PostgreSQL
    python bench/projections.py --events 200000 --stock-events 20000
    python bench/projections.py --database-url postgresql://user:pw@127.0.0.1/postgres

1. Generates N realistic ``Delivery.Received`` events (the four providers' bodies shaped
   like ``ledger.ingest.samples.build`` makes them; dedup keys and kinds by the providers' rules,
   checked on a sample with the real verifiers) and COPYs them into ``stored_events`` of a
   fresh database (as the owner; the log's triggers still run).
2. Rebuilds every projection in ``projections/`` one at a time, blue/green, with the real
   runner (``ledger.readmodels.runner``): prints events/s per projection. The empty live generation is
   marked caught up first, so the timing is the rebuild alone.
3. Times eventsourcing 9.5's own ``ProjectionRunner`` (a PostgreSQL-recorded application
   reading the same kind of log, one-table view: counts per provider, written with the
   tracking record in one transaction per event) on a smaller log, and our runner on the
   same log with a comparable one-table projection; prints the ratio.

Only 127.0.0.1 / the embedded server's socket is touched; everything is created in
databases named ``ledger_bench_*`` and dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import logging
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
import msgspec

# This file's directory would shadow the ``projections`` package: put the repository first.
_HERE = str(Path(__file__).resolve().parent)
sys.path[:] = [str(Path(_HERE).parent), *(p for p in sys.path if p not in ("", _HERE))]

from ledger.app import prepare_database  # noqa: E402
from ledger.database import (  # noqa: E402
    create_database,
    drop_database,
    start_embedded,
)
from ledger.domain.events import (  # noqa: E402
    DELIVERY_TOPIC,
    RECEIVED_TOPIC,
    DeliveryState,
    MsgspecTranscoder,
    decode_delivery,
    delivery_id,
    encode_state,
)
from ledger.ingest.providers import build_providers  # noqa: E402
from ledger.ingest.providers.base import kept_headers  # noqa: E402
from ledger.readmodels.contract import Conn  # noqa: E402
from ledger.readmodels.runner import ProjectionRunner, available, connect, register, start_rebuild  # noqa: E402
from ledger.store.eventstore import StoredRecord  # noqa: E402
from tests.support import test_settings  # noqa: E402

SETTINGS = test_settings()
PROVIDERS = build_providers(SETTINGS)
JSON = msgspec.json.Encoder()
BASE_TIME = datetime(2026, 1, 1, tzinfo=UTC)
MIX = ("mayar",) * 7 + ("midtrans",) * 6 + ("xendit",) * 4 + ("partner",) * 3
MAYAR_EVENTS = (
    ("payment.success",) * 14
    + ("payment.received",) * 2
    + ("subscription.activated", "subscription.renewed", "subscription.cancelled")
    + ("payment.pending",)
)
MIDTRANS_CODES = {"pending": "201", "settlement": "200", "capture": "200", "expire": "202"}


# -- realistic deliveries ---------------------------------------------------------------


def _ts(i: int) -> tuple[datetime, str]:
    t = BASE_TIME + timedelta(milliseconds=37 * i)
    return t, t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def delivery(i: int) -> tuple[str, dict[str, str], bytes, str, str]:
    """Event ``i``: (provider, headers, body, dedup key, kind), deterministic in ``i``."""
    provider = MIX[i % len(MIX)]
    _, iso = _ts(i)
    uid = uuid.UUID(bytes=hashlib.blake2b(i.to_bytes(8, "big"), digest_size=16).digest())
    customer = f"customer{(i * 7919) % 20000}@example.id"
    if provider == "mayar":
        event = MAYAR_EVENTS[(i // len(MIX)) % len(MAYAR_EVENTS)]
        data: dict[str, Any] = {
            "id": str(uid),
            "status": "SUCCESS",
            "customerName": "Budi",
            "customerEmail": customer,
            "amount": 50000 if i % 3 else 250000,
            "productName": "Token pack",
            "createdAt": iso,
        }
        if event.startswith("payment."):
            data["package"] = "silver" if i % 3 else "gold"
        else:
            data["licenseCode"] = f"LIC-{i % 5000:05d}"
            data["expiredAt"] = "2027-01-01T00:00:00.000Z"
        body = JSON.encode({"event": event, "data": data})
        headers = {"content-type": "application/json", "x-callback-token": "<token>"}
        return provider, headers, body, f"mayar:{uid}:{event}", event
    if provider == "midtrans":
        order = f"INV-{i // 40:08d}"  # consecutive notifications of one order
        status = ("pending", "settlement", "capture", "expire")[(i // len(MIX)) % 4]
        code = MIDTRANS_CODES[status]
        gross = "299000.00"
        key = SETTINGS.midtrans_server_key or ""
        midtrans_body: dict[str, Any] = {
            "transaction_time": iso.replace("T", " ")[:19],
            "transaction_status": status,
            "transaction_id": str(uid),
            "status_message": "midtrans payment notification",
            "status_code": code,
            "signature_key": hashlib.sha512(f"{order}{code}{gross}{key}".encode()).hexdigest(),
            "payment_type": "bank_transfer",
            "order_id": order,
            "merchant_id": "G000000000",
            "gross_amount": gross,
            "currency": "IDR",
            "va_numbers": [{"va_number": "8578000000111", "bank": "bca"}],
        }
        if status == "capture":
            midtrans_body["fraud_status"] = "accept"
        body = JSON.encode(midtrans_body)
        dedup = f"midtrans:{order}:{uid}:{status}:{code}"
        if status == "capture":
            dedup += ":accept"
        return provider, {"content-type": "application/json"}, body, dedup, status
    if provider == "xendit":
        status = ("PENDING", "PAID", "SETTLED", "EXPIRED")[(i // len(MIX)) % 4]
        inv: dict[str, Any] = {
            "id": uid.hex[:24],
            "external_id": f"booking-{i // 30:08d}",
            "user_id": "5f0c0e0a1b2c3d4e5f607182",
            "status": status,
            "merchant_name": "Toko Contoh",
            "amount": 32000,
            "created": iso,
            "updated": iso,
            "currency": "IDR",
            "payer_email": customer,
            "description": "Booking payment",
        }
        if status in ("PAID", "SETTLED"):
            inv |= {
                "paid_amount": 32000,
                "paid_at": iso,
                "payment_method": "QR_CODE",
                "payment_channel": "QRIS",
            }
        body = JSON.encode(inv)
        headers = {"content-type": "application/json", "x-callback-token": "<token>"}
        return provider, headers, body, f"xendit:{inv['id']}:{status}", status
    booking = f"BK-{i // len(MIX):08d}"
    event = ("booking.paid", "booking.updated")[i % 2]
    body = JSON.encode(
        {
            "event": event,
            "booking_id": booking,
            "status": "LUNAS",
            "paid_amount": 32000,
            "payment_method": "QRIS",
            "payment_details": {"invoice_id": f"INV-{i:08X}"},
            "timestamp": iso,
        }
    )
    headers = {"content-type": "application/json", "x-pwa-signature": "<hmac>"}
    return "partner", headers, body, f"partner:{booking}:{event}:LUNAS:{iso}", event


def signed_headers(provider: str, headers: dict[str, str], body: bytes) -> dict[str, str]:
    """The real credentials, for the fidelity check against the real verifiers."""
    real = dict(headers)
    if provider == "mayar":
        real["x-callback-token"] = SETTINGS.mayar_token or ""
    elif provider == "xendit":
        real["x-callback-token"] = SETTINGS.xendit_token or ""
    elif provider == "partner":
        secret = (SETTINGS.partner_secret or "").encode()
        real["x-pwa-signature"] = hmac.new(secret, body, hashlib.sha256).hexdigest()
    return real


def check_fidelity(n: int, every: int = 997) -> None:
    """Sampled events must be accepted by the real verifiers with the same key and kind."""
    for i in range(0, n, every):
        provider, headers, body, key, kind = delivery(i)
        accepted = PROVIDERS[provider].accept(signed_headers(provider, headers, body), body)
        if (accepted.dedup_key, accepted.kind) != (key, kind):
            raise SystemExit(f"generator drifted from {provider}: {accepted} != {(key, kind)}")


def rows(start: int, stop: int) -> list[tuple[uuid.UUID, int, str, bytes]]:
    out = []
    for i in range(start, stop):
        provider, headers, body, key, kind = delivery(i)
        stamp, _ = _ts(i)
        state = DeliveryState(
            originator_topic=DELIVERY_TOPIC,
            timestamp=stamp,
            provider=provider,
            dedup_key=key,
            kind=kind,
            source="127.0.0.1",
            scheme=PROVIDERS[provider].scheme,
            headers=kept_headers(headers),
            body_sha256=hashlib.sha256(body).hexdigest(),
            body_b64=base64.b64encode(body).decode("ascii"),
        )
        out.append((delivery_id(key), 1, RECEIVED_TOPIC, encode_state(state)))
    return out


def chunks(n: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n, size):
        yield start, min(n, start + size)


async def load(url: str, n: int) -> float:
    """COPY ``n`` events into the log (generated by two processes while PostgreSQL
    copies); return the seconds taken.

    The row triggers (hash chain) are skipped with ``session_replication_role = replica``
    when the owner is a superuser: they cost ~150 us per row and projections never read
    the hash. Positions are still issued in order by the sequence.
    """
    t0 = time.perf_counter()
    conn = await asyncpg.connect(url)
    loop = asyncio.get_running_loop()
    try:
        if await conn.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"):
            await conn.execute("SET session_replication_role = replica")
        with ProcessPoolExecutor(2) as pool:
            todo = list(chunks(n, 25_000))
            window = [loop.run_in_executor(pool, rows, a, b) for a, b in todo[:4]]
            todo = todo[4:]
            done = 0
            while window:  # at most four chunks in memory
                records = await window.pop(0)
                if todo:
                    window.append(loop.run_in_executor(pool, rows, *todo.pop(0)))
                await conn.copy_records_to_table(
                    "stored_events",
                    records=records,
                    columns=["originator_id", "originator_version", "topic", "state"],
                )
                done += len(records)
                print(f"\r  loaded {done:,}/{n:,}", end="", flush=True)
        await conn.execute("RESET session_replication_role")
        await conn.execute("ANALYZE stored_events")
    finally:
        await conn.close()
    print()
    return time.perf_counter() - t0


# -- our runner ---------------------------------------------------------------------


class ProviderCounts:
    """The comparable one-table view: deliveries per provider (and the last position)."""

    name = "bench_counts"
    version = 1
    topics = (RECEIVED_TOPIC,)
    schema_sql = "CREATE TABLE counts (provider text PRIMARY KEY, n bigint NOT NULL)"

    async def apply(self, conn: Conn, records: Sequence[StoredRecord]) -> None:
        counts: dict[str, int] = {}
        for r in records:
            p = decode_delivery(r.state).provider
            counts[p] = counts.get(p, 0) + 1
        await conn.execute(
            "INSERT INTO counts SELECT * FROM unnest($1::text[], $2::bigint[]) "
            "ON CONFLICT (provider) DO UPDATE SET n = counts.n + excluded.n",
            list(counts),
            list(counts.values()),
        )

    async def digest(self, conn: Conn) -> str:
        got = await conn.fetch("SELECT provider, n FROM counts ORDER BY provider")
        return hashlib.sha256(repr([tuple(r) for r in got]).encode()).hexdigest()


class Timing(msgspec.Struct):
    """Wall seconds, plus CPU seconds of this process and of the runner's PostgreSQL
    backends (the machine is shared: CPU time shows the cost without the waiting)."""

    wall: float
    python_cpu: float
    postgres_cpu: float | None

    def line(self, events: int) -> str:
        pg = "n/a" if self.postgres_cpu is None else f"{self.postgres_cpu:.1f}"
        cpu = self.python_cpu + (self.postgres_cpu or 0)
        return (
            f"{self.wall:6.1f} s: {events / self.wall:9,.0f} ev/s  "
            f"(CPU: python {self.python_cpu:.1f} s, postgres {pg} s; "
            f"{events / cpu:,.0f} ev per CPU-second)"
        )


def _backend_cpu(pids: list[int]) -> float | None:
    """utime + stime of local PostgreSQL backends from /proc (None if not readable)."""
    total = 0
    try:
        for pid in pids:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            total += int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return None
    return total / os.sysconf("SC_CLK_TCK")


async def rebuild(url: str, proj: Any, head: int, batch_size: int) -> Timing:
    """Time one blue/green rebuild from position 0 to the switch."""
    conn = await connect(url, "ledger-bench-watch")
    try:
        await register(conn, proj)
        # The live generation has nothing to do in this benchmark: mark it caught up.
        await conn.execute(
            "UPDATE projection_tracking t SET position = $2 FROM projections p "
            "WHERE p.name = $1 AND t.name = p.name AND t.generation = p.live_generation",
            proj.name,
            head,
        )
        generation, _ = await start_rebuild(conn, proj)
        runner = ProjectionRunner(
            url, {proj.name: proj}, batch_size=batch_size, app_name="ledger-bench"
        )
        t0, c0 = time.perf_counter(), time.process_time()
        await runner.start()
        try:
            while True:
                state = await conn.fetchrow(
                    "SELECT live_generation, state, error FROM projections WHERE name = $1",
                    proj.name,
                )
                if state["live_generation"] == generation:
                    break
                if state["state"] == "failed":
                    raise SystemExit(f"{proj.name} failed: {state['error']}")
                await asyncio.sleep(0.02)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            pids = await conn.fetch(
                "SELECT pid FROM pg_stat_activity WHERE application_name = 'ledger-bench'"
            )
            return Timing(wall, cpu, _backend_cpu([r["pid"] for r in pids]))
        finally:
            await runner.stop()
    finally:
        await conn.close()


# -- eventsourcing's stock runner ---------------------------------------------------


def stock_seconds(url: str, head: int) -> float:
    """eventsourcing 9.5: ProjectionRunner over a PostgreSQL application on ``url``."""
    from eventsourcing.application import Application
    from eventsourcing.domain import DomainEventProtocol
    from eventsourcing.persistence import Tracking
    from eventsourcing.postgres import PostgresTrackingRecorder
    from eventsourcing.projection import Projection, ProjectionRunner
    from psycopg.sql import SQL, Identifier

    class Stored(Application[uuid.UUID]):  # its events table: "stored_events"
        def construct_transcoder(self) -> MsgspecTranscoder:
            return MsgspecTranscoder()

    class CountsView(PostgresTrackingRecorder):
        def __init__(self, datastore: Any, **kw: Any) -> None:
            super().__init__(datastore, **kw)
            self.sql_create_statements.append(
                SQL(
                    "CREATE TABLE IF NOT EXISTS {0}.stock_counts "
                    "(provider text PRIMARY KEY, n bigint NOT NULL)"
                ).format(Identifier(self.datastore.schema))
            )

        def incr(self, provider: str, tracking: Tracking) -> None:
            with self.datastore.transaction(commit=True) as curs:
                curs.execute(
                    SQL(
                        "INSERT INTO {0}.stock_counts VALUES (%s, 1) ON CONFLICT (provider) "
                        "DO UPDATE SET n = stock_counts.n + 1"
                    ).format(Identifier(self.datastore.schema)),
                    (provider,),
                )
                self._insert_tracking(curs, tracking)

    class StockCounts(Projection[CountsView]):
        name = "stockcounts"
        topics = (RECEIVED_TOPIC,)

        def process_event(self, domain_event: DomainEventProtocol[Any], tracking: Tracking) -> None:
            self.view.incr(domain_event.provider, tracking)  # type: ignore[attr-defined]

    parts = urlsplit(url)
    query = parse_qs(parts.query)
    env = {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": parts.path.lstrip("/"),
        "POSTGRES_HOST": query.get("host", [parts.hostname or "127.0.0.1"])[0],
        "POSTGRES_PORT": str(parts.port or int(query.get("port", ["5432"])[0])),
        "POSTGRES_USER": parts.username or "postgres",
        "POSTGRES_PASSWORD": parts.password or "",
        "CREATE_TABLE": "n",  # our migrations own stored_events
        "STOCKCOUNTS_CREATE_TABLE": "y",
    }
    t0 = time.perf_counter()
    with ProjectionRunner(
        application_class=Stored, projection_class=StockCounts, view_class=CountsView, env=env
    ) as runner:
        runner.wait(head, timeout=3600)
    return time.perf_counter() - t0


# -- main -----------------------------------------------------------------------------


async def fresh_database(server: str, suffix: str) -> str:
    url = await create_database(server, f"ledger_bench_{suffix}_{uuid.uuid4().hex[:6]}")
    await prepare_database(url)
    return url


async def main(args: argparse.Namespace, server: str) -> None:
    check_fidelity(max(args.events, args.stock_events))
    print(f"generator checked against the real verifiers; {args.events:,} events")
    print("load average at start: {:.1f} {:.1f} {:.1f} (2 cores)".format(*os.getloadavg()))
    url = await fresh_database(server, "main")
    try:
        secs = await load(url, args.events)
        print(f"load: {args.events / secs:,.0f} events/s ({secs:.1f} s, COPY)")
        head = args.events
        found = {} if args.only_counts else available()
        found = {
            k: v
            for k, v in found.items()
            if (not args.only or k in args.only) and k not in (args.skip or ())
        }
        timing = await rebuild(url, ProviderCounts(), head, args.batch_size)
        print(f"rebuild {'(one-table view)':<15} {head:,} events in {timing.line(head)}")
        total = 0.0
        for name, proj in sorted(found.items()):
            timing = await rebuild(url, proj, head, args.batch_size)
            total += timing.wall
            print(f"rebuild {name:<15} {head:,} events in {timing.line(head)}")
        if found:
            print(f"all {len(found)} projections: {total:.1f} s")
    finally:
        await drop_database(server, url)

    n = args.stock_events
    url = await fresh_database(server, "stock")
    try:
        await load(url, n)
        ours = (await rebuild(url, ProviderCounts(), n, args.batch_size)).wall
        stock = await asyncio.to_thread(stock_seconds, url, n)
        conn = await asyncpg.connect(url)
        try:
            ours_counts = await conn.fetch(
                "SELECT provider, n FROM p_bench_counts_g2.counts ORDER BY provider"
            )
            stock_counts = await conn.fetch(
                "SELECT provider, n FROM stock_counts ORDER BY provider"
            )
        finally:
            await conn.close()
        if [tuple(r) for r in ours_counts] != [tuple(r) for r in stock_counts]:
            raise SystemExit(f"views differ: {ours_counts} != {stock_counts}")
        print(f"one-table view, {n:,} events (same result in both):")
        print(f"  ledger.readmodels.runner             {ours:6.2f} s  {n / ours:9,.0f} ev/s")
        print(f"  eventsourcing stock       {stock:6.2f} s  {n / stock:9,.0f} ev/s")
        print(f"  ratio                     {stock / ours:6.1f}x")
        print("load average at the end: {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()))
    finally:
        await drop_database(server, url)


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--stock-events", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=5000)
    parser.add_argument("--only", action="append", help="rebuild only this projection")
    parser.add_argument("--skip", action="append", help="do not rebuild this projection")
    parser.add_argument("--only-counts", action="store_true", help="skip projections/")
    parser.add_argument("--database-url", help="a superuser URL (default: embedded server)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.database_url:
        asyncio.run(main(args, args.database_url))
        return
    with tempfile.TemporaryDirectory(prefix="ledger-bench-pg-") as tmp:
        asyncio.run(main(args, start_embedded(Path(tmp) / "pgdata", cleanup="delete")))


if __name__ == "__main__":
    cli()
