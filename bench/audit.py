"""Audit benchmark: hash-chain ingest cost, ``ledger verify`` rate, audit indexing, search
latency and export throughput over a large log.

    python bench/audit.py [--events 1000000] [--ingest-events 20000]

PostgreSQL: ``LEDGER_DATABASE_URL`` (a superuser URL) when set, else a fresh embedded server
in a temporary directory; each run uses its own databases and drops them.

1. Ingest cost of the chain trigger: ``EventStore.append_many`` in batches of 100 (one
   writer, then 4 concurrent writers) into a fresh log with the ``stored_events_chain``
   trigger disabled, then enabled.
2. ``--events`` deliveries, 90% Midtrans notifications and 10% Mayar silver payments for 5,000
   customers (real notification bodies, base64 in the stored state like the app writes) generated server-side straight into ``stored_events`` in batches of
   50k rows per statement; the chain trigger runs on every row.
3. ``ledger verify`` as an operator runs it (subprocess), and ``chain.verify`` in-process.
4. Audit-index catch-up (interpreting every delivery with the provider decoders).
5. ``ledger serve`` (projections and outbox off) on 127.0.0.1, then over HTTP, one request
   at a time: p50/p99 of a customer search, a customer timeline (~200 events each), an order
   timeline, an order as of a past instant and a token balance as of a past instant (folding
   ~10 Mayar credits); then ``/v1/audit/export`` CSV and JSONL
   throughput (rows/s) over the whole range, streamed with httpx.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
import httpx
import psutil

# Running ``python bench/audit.py`` puts bench/ first on sys.path, where bench/projections.py
# would shadow the ``projections`` package the app imports.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support

from ledger.app import prepare_database  # noqa: E402
from ledger.audit import chain  # noqa: E402
from ledger.audit import index as audit  # noqa: E402
from ledger.audit.keys import create_key  # noqa: E402
from ledger.database import (  # noqa: E402
    create_database,
    create_pool,
    drop_database,
    start_embedded,
)
from ledger.store.eventstore import EventStore, NewEvent  # noqa: E402
from tests.support import SECRETS  # noqa: E402

LEDGER = str(Path(sys.executable).parent / "ledger")

# Stores the rows of the FROM clause that follows (i, ts, provider, dedup_key, kind,
# scheme, body) as the app stores a delivery: DeliveryState JSON with the raw body
# base64-encoded.
_STORE_DELIVERIES = r"""
INSERT INTO stored_events (originator_id, originator_version, topic, state)
SELECT md5('bench' || i)::uuid, 1, 'ledger.domain:Delivery.Received',
       convert_to(json_build_object(
           'originator_topic', 'ledger.domain:Delivery',
           'timestamp', to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"'),
           'provider', provider,
           'dedup_key', dedup_key,
           'kind', kind,
           'source', '127.0.0.1',
           'scheme', scheme,
           'headers', json_build_object('content-type', 'application/json'),
           'body_sha256', encode(sha256(body), 'hex'),
           'body_b64', translate(encode(body, 'base64'), E'\n', ''),
           'fault', NULL,
           'original_event_id', NULL)::text, 'UTF8')
FROM
"""
# Rows i in [$1, $2): a Midtrans notification. Statuses: 70% settlement, 20% pending,
# 5% expire, 5% refund.
GENERATE = (
    _STORE_DELIVERIES
    + r"""(
    SELECT i, ts, text 'midtrans' AS provider,
           'midtrans:INV-' || (i / 2) || ':' || md5('t' || i) || ':' || st AS dedup_key,
           st AS kind, text 'sha512-signature_key' AS scheme,
           convert_to(json_build_object(
        'transaction_time', to_char(ts, 'YYYY-MM-DD HH24:MI:SS'),
        'transaction_status', st,
        'transaction_id', md5('t' || i)::uuid,
        'status_message', 'midtrans payment notification',
        'status_code', CASE st WHEN 'settlement' THEN '200' WHEN 'pending' THEN '201'
                               WHEN 'refund' THEN '200' ELSE '407' END,
        'signature_key', encode(sha512(convert_to('x' || i, 'UTF8')), 'hex'),
        'payment_type', 'bank_transfer',
        'order_id', 'INV-' || (i / 2),
        'merchant_id', 'G000000000',
        'gross_amount', ((i % 97) * 1000 + 50000) || '.00',
        'currency', 'IDR',
        'customer_email', 'c' || (i % 5000) || '@example.com',
        'va_numbers', json_build_array(json_build_object('va_number', '8578000000111',
                                                         'bank', 'bca')))::text, 'UTF8') AS body
    FROM (
        SELECT i,
               timestamptz '2026-03-01 00:00:00+00' + i * interval '2.5 seconds' AS ts,
               CASE WHEN i % 20 = 7 THEN 'expire' WHEN i % 20 = 11 THEN 'refund'
                    WHEN i % 5 = 3 THEN 'pending' ELSE 'settlement' END AS st
        FROM generate_series($1::bigint, $2::bigint - 1) AS i
        WHERE i % 10 <> 9
    ) g
) b
"""
)
# Rows i % 10 = 9: a Mayar payment.success (silver) for customer c(i/10 % 5000), so every
# customer has ~20 credits to fold.
GENERATE_MAYAR = (
    _STORE_DELIVERIES
    + r"""(
    SELECT i, ts, text 'mayar' AS provider, 'mayar:PAY-' || i || ':payment.success' AS dedup_key,
           text 'payment.success' AS kind, text 'static-token:x-callback-token' AS scheme,
           convert_to(json_build_object(
        'event', 'payment.success',
        'data', json_build_object(
            'id', 'PAY-' || i, 'status', 'SUCCESS', 'customerName', 'Budi',
            'customerEmail', 'c' || (i / 10 % 5000) || '@example.com', 'package', 'silver',
            'amount', 50000, 'productName', 'Token pack'))::text, 'UTF8') AS body
    FROM (
        SELECT i, timestamptz '2026-03-01 00:00:00+00' + i * interval '2.5 seconds' AS ts
        FROM generate_series($1::bigint, $2::bigint - 1) AS i
        WHERE i % 10 = 9
    ) g
) b
"""
)


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


async def fresh_db(server: str, prefix: str) -> str:
    url = await create_database(server, f"{prefix}_{uuid.uuid4().hex[:8]}")
    await prepare_database(url)
    return url


def small_event(i: int) -> NewEvent:
    state = b'{"timestamp":"2026-03-01T00:00:00+00:00","n":%d,"pad":"%s"}' % (i, b"x" * 900)
    return NewEvent(uuid.uuid4(), "bench:Thing.Happened", state)


async def ingest_cost(server: str, n: int) -> dict[str, float]:
    """events/s of append_many (batches of 100) without and with the chain trigger."""
    out: dict[str, float] = {}
    for chained in (False, True):
        url = await fresh_db(server, "bench_ingest")
        try:
            if not chained:
                conn = await asyncpg.connect(url)
                await conn.execute("ALTER TABLE stored_events DISABLE TRIGGER stored_events_chain")
                await conn.close()
            pool = await create_pool(url, max_size=8)
            store = EventStore(pool)
            await store.append_many([small_event(-1)])  # warm up
            for writers in (1, 4):
                per = n // writers

                async def writer(k: int, per: int = per, store: EventStore = store) -> None:
                    for b in range(0, per, 100):
                        await store.append_many([small_event(k * per + b + j) for j in range(100)])

                t0 = time.perf_counter()
                await asyncio.gather(*(writer(k) for k in range(writers)))
                out[f"{'chain' if chained else 'plain'}_{writers}w"] = (
                    per * writers / (time.perf_counter() - t0)
                )
            await pool.close()
        finally:
            await drop_database(server, url)
    return out


async def generate(url: str, n: int, batch: int = 50_000) -> float:
    conn = await asyncpg.connect(url)
    try:
        t0 = time.perf_counter()
        for lo in range(0, n, batch):
            await conn.execute(GENERATE, lo, min(n, lo + batch))
            await conn.execute(GENERATE_MAYAR, lo, min(n, lo + batch))
            print(f"  generated {min(n, lo + batch):,}", end="\r", file=sys.stderr)
        took = time.perf_counter() - t0
        await conn.execute("VACUUM ANALYZE stored_events")
    finally:
        await conn.close()
    print(file=sys.stderr)
    return took


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def http_part(url: str, home: Path) -> dict[str, float]:
    conn = await asyncpg.connect(url)
    try:
        _, key = await create_key(conn, "bench", ["audit:read"])
    finally:
        await conn.close()
    port = free_port()
    env = {
        **os.environ,
        **SECRETS,
        "LEDGER_DATABASE_URL": url,
        "LEDGER_HOME": str(home),
        "LEDGER_RUN_PROJECTIONS": "false",
        "LEDGER_RUN_OUTBOX": "false",
    }
    log_path = home / "serve.log"
    server = subprocess.Popen(
        [LEDGER, "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log_path.open("wb"),
    )
    base = f"http://127.0.0.1:{port}"
    headers = {"authorization": f"Bearer {key}"}
    out: dict[str, float] = {}
    try:
        async with httpx.AsyncClient(base_url=base, headers=headers, timeout=600) as client:
            deadline = time.monotonic() + 180
            while True:
                try:
                    if (await client.get("/health")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"ledger serve did not start: {log_path.read_text()[-2000:]}"
                    )
                await asyncio.sleep(0.5)
            lat = []
            for i in range(300):
                t0 = time.perf_counter()
                r = await client.get(
                    "/v1/audit/events", params={"customer": f"c{i * 7 % 5000}@example.com"}
                )
                lat.append((time.perf_counter() - t0) * 1000)
                assert r.status_code == 200, r.text
            out["search_p50_ms"], out["search_p99_ms"] = pct(lat, 50), pct(lat, 99)
            routes = {
                "customer_timeline": lambda i: (
                    f"/v1/audit/customers/c{i * 13 % 5000}@example.com",
                    {},
                ),
                "order_timeline": lambda i: (
                    f"/v1/audit/orders/midtrans/INV-{i * 1601 % 400000}",
                    {},
                ),
                "balance_as_of": lambda i: (
                    f"/v1/audit/customers/c{i * 13 % 5000}@example.com/balance",
                    {"as_of": "2026-03-15T23:59:59"},
                ),
                "order_as_of": lambda i: (
                    f"/v1/audit/orders/midtrans/INV-{i * 1601 % 400000}",
                    {"as_of": "2026-03-15T23:59:59"},
                ),
            }
            for name, route in routes.items():
                lat = []
                for i in range(300):
                    path, params = route(i)
                    t0 = time.perf_counter()
                    r = await client.get(path, params=params)
                    lat.append((time.perf_counter() - t0) * 1000)
                    assert r.status_code == 200, r.text
                out[f"{name}_p50_ms"], out[f"{name}_p99_ms"] = pct(lat, 50), pct(lat, 99)
            for fmt in ("csv", "jsonl"):
                rows = 0
                t0 = time.perf_counter()
                params = {"from": "2026-03-01", "to": "2026-05-01", "format": fmt}
                async with client.stream("GET", "/v1/audit/export", params=params) as r:
                    assert r.status_code == 200
                    async for chunk in r.aiter_bytes():
                        rows += chunk.count(b"\n")
                took = time.perf_counter() - t0
                rows -= 1 if fmt == "csv" else 0
                out[f"export_{fmt}_rows"] = rows
                out[f"export_{fmt}_rows_per_s"] = rows / took
    finally:
        server.terminate()
        server.wait(timeout=30)
    return out


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--ingest-events", type=int, default=20_000)
    ap.add_argument("--keep", action="store_true", help="keep the server and database; print URL")
    ap.add_argument("--reuse", metavar="URL", help="only the HTTP part, on a kept database")
    ap.add_argument(
        "--index-only",
        action="store_true",
        help="only generate the log and time the audit index catch-up (no ingest cost, verify "
        "or HTTP part)",
    )
    ap.add_argument(
        "--index-rounds",
        type=int,
        default=1,
        metavar="N",
        help="catch the index up N times over the same log (emptied in between)",
    )
    args = ap.parse_args()
    if args.reuse:
        with tempfile.TemporaryDirectory(prefix="ledger-bench-audit-") as tmp:
            report_http(await http_part(args.reuse, Path(tmp)))
        return
    with tempfile.TemporaryDirectory(prefix="ledger-bench-audit-") as tmp:
        server = os.environ.get("LEDGER_DATABASE_URL") or start_embedded(
            Path(tmp) / "pgdata", cleanup="delete"
        )
        cost = {} if args.index_only else await ingest_cost(server, args.ingest_events)
        if cost:
            print("ingest cost of the chain trigger (append_many, batches of 100):")
        for writers in (1, 4) if cost else ():
            plain, chained = cost[f"plain_{writers}w"], cost[f"chain_{writers}w"]
            print(
                f"  {writers} writer(s): without {plain:,.0f} ev/s, with {chained:,.0f} ev/s "
                f"({(1 / chained - 1 / plain) * 1e6:+.1f} us/event, {chained / plain - 1:+.0%})"
            )
        url = await fresh_db(server, "bench_audit")
        try:
            took = await generate(url, args.events)
            print(
                f"generated {args.events:,} events with the chain trigger in {took:.1f} s "
                f"({args.events / took:,.0f} ev/s)"
            )

            if args.index_only:
                pg = None if os.environ.get("LEDGER_DATABASE_URL") else Path(tmp) / "pgdata"
                for _ in range(args.index_rounds):
                    await index_catch_up(url, args.events, pg)
                return
            env = {**os.environ, **SECRETS, "LEDGER_DATABASE_URL": url, "LEDGER_HOME": tmp}
            t0 = time.perf_counter()
            proc = subprocess.run(
                [LEDGER, "verify"], env=env, capture_output=True, text=True, check=False
            )
            cli_took = time.perf_counter() - t0
            print(f"ledger verify (exit {proc.returncode}, {cli_took:.1f} s wall incl. start-up):")
            print("  " + proc.stdout.strip())

            conn = await asyncpg.connect(url)
            try:
                t0, c0 = time.perf_counter(), time.process_time()
                report = await chain.verify(conn)
                vt, vc = time.perf_counter() - t0, time.process_time() - c0
            finally:
                await conn.close()
            assert report.ok
            assert report.checked == args.events
            print(
                f"chain.verify in-process: {report.checked / vt:,.0f} events/s wall ({vt:.1f} s), "
                f"{report.checked / vc:,.0f} events per client CPU-second"
            )

            pg = None if os.environ.get("LEDGER_DATABASE_URL") else Path(tmp) / "pgdata"
            for _ in range(args.index_rounds):
                await index_catch_up(url, args.events, pg)

            report_http(await http_part(url, Path(tmp)))
        finally:
            if args.keep:
                print(f"kept: {url}")
            else:
                await drop_database(server, url)


def server_cpu(pgdata: Path | None) -> float:
    """CPU seconds used so far by the embedded server (postmaster, its live and reaped
    children); 0 for a server we did not start."""
    if pgdata is None:
        return 0.0
    postmaster = psutil.Process(int((pgdata / "postmaster.pid").read_text().split()[0]))
    t = postmaster.cpu_times()
    total = t.user + t.system + t.children_user + t.children_system
    for child in postmaster.children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            c = child.cpu_times()
            total += c.user + c.system
    return float(total)


async def index_catch_up(url: str, events: int, pgdata: Path | None) -> None:
    """Time one audit index catch-up from empty: events/s, and CPU seconds per 100k
    events of this process and of the embedded server, with the load average."""
    conn = await asyncpg.connect(url)
    try:  # bench-only, as the owner: an empty index (a rebuild, migration 0008)
        await conn.execute("TRUNCATE audit_index; UPDATE audit_index_tracking SET position = 0")
    finally:
        await conn.close()
    pool = await create_pool(url, max_size=4)
    try:
        t0, c0, p0 = time.perf_counter(), time.process_time(), server_cpu(pgdata)
        await audit.catch_up(pool)
        it, py, pg = (
            time.perf_counter() - t0,
            time.process_time() - c0,
            server_cpu(pgdata) - p0,
        )
    finally:
        await pool.close()
    per = 100_000 / events
    pg_text = f", PostgreSQL {pg * per:.2f}" if pgdata is not None else ""
    print(
        f"audit index catch-up: {events / it:,.0f} events/s ({it:.1f} s); CPU s per 100k "
        f"events: Python {py * per:.2f}{pg_text}; load average {os.getloadavg()[0]:.2f}"
    )


def report_http(res: dict[str, float]) -> None:
    names = (
        "search",
        "customer_timeline",
        "order_timeline",
        "order_as_of",
        "balance_as_of",
    )
    for name in names:
        print(
            f"{name} over HTTP: p50 {res[f'{name}_p50_ms']:.1f} ms, "
            f"p99 {res[f'{name}_p99_ms']:.1f} ms"
        )
    for fmt in ("csv", "jsonl"):
        print(
            f"export {fmt}: {res[f'export_{fmt}_rows']:,.0f} rows at "
            f"{res[f'export_{fmt}_rows_per_s']:,.0f} rows/s"
        )


if __name__ == "__main__":
    asyncio.run(main())
