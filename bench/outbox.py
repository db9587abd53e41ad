"""Outbox benchmarks (figures go to docs/benchmarks.md).

1. dispatch: signed partner deliveries per second from ``public.outbox`` to a loopback
   partner (a separate process that verifies every x-pwa-signature and answers 200), for
   each outbound HTTP client (``--client``): ``ledger`` is the service's own
   ``ledger.outbox.senders.HttpClient`` (aiohttp, configured as the outbox needs it), ``aiohttp``
   a ``ClientSession`` with the library's defaults, ``httpcore`` httpcore's connection
   pool. Rounds interleave the clients so a machine busy with other work weighs on each
   alike; every line carries the load average and the ratio to ``ledger`` in the same
   round. A client-only pass (no database) adds CPU milliseconds per request. (ADR 0013's
   comparison with the hand-written client it replaced ran this at commit 71eecac, where
   ``ledger`` was that client.)
2. stream: webhook 2xx -> SSE receipt latency (p50/p99) at a paced 500 webhooks/s, with the
   ledger served by uvicorn in its own process and the SSE client in this one.

    python bench/outbox.py                       # both, defaults
    python bench/outbox.py --messages 20000 --seconds 10
    python bench/outbox.py --only dispatch --client all --rounds 3   # ADR 0013

Uses ``LEDGER_TEST_DATABASE_URL`` (a superuser URL) when set, else a private embedded
PostgreSQL in a temporary directory. Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import json
import multiprocessing
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import httpcore
import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ledger.app import prepare_database  # noqa: E402
from ledger.config import load_settings  # noqa: E402
from ledger.database import create_pool, start_embedded, with_database  # noqa: E402
from ledger.outbox.dispatcher import Dispatcher  # noqa: E402
from ledger.outbox.senders import HttpClient, HttpSender  # noqa: E402
from tests.support import SECRETS, signed  # noqa: E402

SECRET = SECRETS["LEDGER_PARTNER_SYNC_SECRET"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the loopback partner (own process) ------------------------------------------------------


class PartnerProtocol(asyncio.Protocol):
    """Keep-alive HTTP/1.1, just enough for POSTs with content-length; verifies the HMAC."""

    applied: set[str] = set()
    bad = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].decode("latin-1").lower()
            headers = {
                k.strip(): v.strip()
                for k, _, v in (line.partition(":") for line in head.split("\r\n")[1:])
            }
            n = int(headers.get("content-length", "0"))
            if len(self.buf) < end + 4 + n:
                return
            body = self.buf[end + 4 : end + 4 + n]
            self.buf = self.buf[end + 4 + n :]
            expected = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
            if hmac.compare_digest(headers.get("x-pwa-signature", ""), expected):
                PartnerProtocol.applied.add(headers.get("idempotency-key", ""))
                status, reply = b"200 OK", b'{"success":true}'
            else:
                PartnerProtocol.bad += 1
                status, reply = b"401 Unauthorized", b'{"error":"Invalid webhook signature"}'
            self.transport.write(  # type: ignore[attr-defined]
                b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\n"
                b"content-length: " + str(len(reply)).encode() + b"\r\n\r\n" + reply
            )


def run_partner(port: int) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(PartnerProtocol, "127.0.0.1", port, backlog=1024)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


# -- the clients compared (ADR 0013) ----------------------------------------------------------

MAX_BODY = 64 * 1024
CLIENTS = ("ledger", "aiohttp", "httpcore")


class AiohttpClient:
    """A ClientSession with aiohttp's defaults (its connector's limit of 100 connections)."""

    def __init__(self, timeout: float, connections: int) -> None:
        del connections
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout))

    async def post(
        self, url: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, dict[str, str], bytes]:
        async with self.session.post(url, data=body, headers=headers, allow_redirects=False) as r:
            data = b""
            while len(data) < MAX_BODY and (chunk := await r.content.read(MAX_BODY - len(data))):
                data += chunk
            return r.status, {k.lower(): v for k, v in r.headers.items()}, data

    async def aclose(self) -> None:
        await self.session.close()


class HttpcoreClient:
    """httpcore's AsyncConnectionPool (h11, HTTP/1.1 only) behind ``post``."""

    def __init__(self, timeout: float, connections: int) -> None:
        self.timeout = {"connect": timeout, "read": timeout, "write": timeout, "pool": timeout}
        self.pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl.create_default_context(),
            max_connections=connections,
            max_keepalive_connections=connections,
        )

    async def post(
        self, url: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, dict[str, str], bytes]:
        r = await self.pool.request(
            "POST",
            url,
            headers=list(headers.items()),
            content=body,
            extensions={"timeout": self.timeout},
        )
        h = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in r.headers}
        return r.status, h, r.content[:MAX_BODY]

    async def aclose(self) -> None:
        await self.pool.aclose()


def make_client(name: str, timeout: float, connections: int) -> Any:
    if name == "aiohttp":
        return AiohttpClient(timeout, connections)
    if name == "httpcore":
        return HttpcoreClient(timeout, connections)
    return HttpClient(timeout, connections=connections)


def load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


# -- databases -------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def database() -> AsyncIterator[str]:
    external = os.environ.get("LEDGER_TEST_DATABASE_URL")
    with tempfile.TemporaryDirectory(prefix="ledger-bench-") as tmp:
        server = external or start_embedded(Path(tmp) / "pgdata", cleanup="delete")
        name = f"ledger_bench_{uuid.uuid4().hex[:8]}"
        admin = await asyncpg.connect(server)
        await admin.execute(f'CREATE DATABASE "{name}"')
        await admin.close()
        url = with_database(server, name)
        await prepare_database(url)
        try:
            yield url
        finally:
            admin = await asyncpg.connect(server)
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await admin.close()


# -- 1. dispatch throughput ------------------------------------------------------------------


@contextlib.contextmanager
def partner_process() -> Any:
    """The loopback partner in its own process; yields its target URL once it listens."""
    port = free_port()
    partner = multiprocessing.Process(target=run_partner, args=(port,), daemon=True)
    partner.start()
    try:
        deadline = time.monotonic() + 30
        while True:  # listening (a refused first attempt would retry and skew the figure)
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("the loopback partner did not start") from None
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/api/webhooks/pwa-sync"
    finally:
        partner.terminate()
        partner.join()


def booking(i: uuid.UUID) -> bytes:
    return json.dumps(
        {
            "event": "booking.paid",
            "booking_id": str(i),
            "status": "LUNAS",
            "paid_amount": 32000,
            "payment_method": "QRIS",
            "timestamp": "2026-02-04T23:00:00.000Z",
        },
        separators=(",", ":"),
    ).encode()


async def bench_dispatch(
    url: str,
    target: str,
    messages: int,
    workers: int,
    batch: int,
    client: str,
    max_seconds: float,
) -> dict[str, Any]:
    conn = await asyncpg.connect(url)
    ids = [uuid.uuid4() for _ in range(messages)]
    # Insert with the service's trigger quiet: the run starts when the workers start.
    await conn.execute(
        "INSERT INTO outbox (id, kind, target, source_event_id, source_position, payload, due_at)"
        " SELECT id, 'partner', $2, id, 0, payload, now() + interval '1 hour'"
        " FROM unnest($1::uuid[], $3::bytea[]) AS t(id, payload)",
        ids,
        target,
        [booking(i) for i in ids],
    )
    await conn.execute("UPDATE outbox SET due_at = now() WHERE id = ANY($1)", ids)
    settings = load_settings(
        {
            **SECRETS,
            "LEDGER_HOME": "/tmp/ledger-bench",
            "LEDGER_OUTBOX_WORKERS": str(workers),
            "LEDGER_OUTBOX_BATCH": str(batch),
        }
    )
    http = make_client(client, settings.outbox_timeout, workers * batch)
    pool = await create_pool(url, min_size=workers, max_size=workers + 2)
    dispatcher = Dispatcher(
        pool, settings, database_url=url, senders={"partner": HttpSender(http, secret=SECRET)}
    )
    load_before = load()
    cpu = time.process_time()
    started = time.perf_counter()
    await dispatcher.start()
    while True:
        left = await conn.fetchval(
            "SELECT count(*) FROM outbox WHERE state = 'pending' AND id = ANY($1)", ids
        )
        if not left:
            break
        if time.perf_counter() - started > max_seconds:
            break  # a slow client: its rate over the bound is the figure
        await asyncio.sleep(0.05)
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu
    await dispatcher.stop()
    await http.aclose()
    delivered = await conn.fetchval(
        "SELECT count(*) FROM outbox WHERE state = 'delivered' AND id = ANY($1)", ids
    )
    attempts = await conn.fetchval(
        "SELECT count(*) FROM outbox_attempts WHERE message_id = ANY($1)", ids
    )
    # Whatever a stopped run left pending must not be claimed by the next client's run.
    await conn.execute("DELETE FROM outbox_attempts WHERE message_id = ANY($1)", ids)
    await conn.execute("DELETE FROM outbox WHERE id = ANY($1)", ids)
    await conn.close()
    await pool.close()
    return {
        "client": client,
        "messages": messages,
        "delivered": delivered,
        "complete": delivered == messages,
        "attempts": attempts,
        "seconds": round(elapsed, 2),
        "per_second": round(delivered / elapsed, 1),
        "process_cpu_ms_per_delivery": round(cpu * 1000 / max(1, delivered), 3),
        "load": f"{load_before} -> {load()}",
    }


async def bench_client(
    target: str, requests: int, concurrency: int, client: str, max_seconds: float
) -> dict[str, Any]:
    """Signed POSTs straight from ``HttpSender.send`` (no database): the client's own cost."""
    http = make_client(client, 10.0, concurrency)
    sender = HttpSender(http, secret=SECRET)
    ids = [uuid.uuid4() for _ in range(requests)]
    bodies = [booking(i) for i in ids]
    queue = iter(range(requests))
    outcomes: dict[str, int] = {}

    async def lane() -> None:
        for i in queue:
            r = await sender.send(ids[i], target, bodies[i], 1)
            outcomes[r.outcome] = outcomes.get(r.outcome, 0) + 1

    load_before = load()
    cpu = time.process_time()
    started = time.perf_counter()
    with contextlib.suppress(TimeoutError):  # a slow client: its rate over the bound counts
        async with asyncio.timeout(max_seconds):
            await asyncio.gather(*(lane() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu
    await http.aclose()
    sent = sum(outcomes.values())
    return {
        "client": client,
        "requests": sent,
        "outcomes": outcomes,
        "per_second": round(outcomes.get("delivered", 0) / elapsed, 1),
        "cpu_ms_per_request": round(cpu * 1000 / max(1, sent), 3),
        "load": f"{load_before} -> {load()}",
    }


def with_ratios(rows: list[dict[str, Any]], key: str) -> None:
    base = next((r[key] for r in rows if r["client"] == "ledger"), None)
    for r in rows:
        if base:
            r["x_ledger"] = round(r[key] / base, 2)
        print(" ", r, flush=True)


async def compare(url: str | None, args: argparse.Namespace) -> None:
    """Each round runs every chosen client once, the order rotated round by round."""
    names = list(CLIENTS) if args.client == "all" else [args.client]
    print(f"cores={os.cpu_count()} load={load()} clients={names} rounds={args.rounds}")
    with partner_process() as target:
        for n in range(args.rounds):
            order = names[n % len(names) :] + names[: n % len(names)]
            print(
                f"round {n + 1}: client-only, {args.requests} signed POSTs, {args.concurrency} in flight"
            )
            rows = [
                await bench_client(target, args.requests, args.concurrency, c, args.max_seconds)
                for c in order
            ]
            with_ratios(rows, "per_second")
            if url is None:
                continue
            print(f"round {n + 1}: dispatch, {args.messages} messages from the outbox")
            rows = [
                await bench_dispatch(
                    url, target, args.messages, args.workers, args.batch, c, args.max_seconds
                )
                for c in order
            ]
            with_ratios(rows, "per_second")
    print(f"load at the end={load()}")


# -- 2. webhook -> SSE latency ---------------------------------------------------------------


async def sse_ids(port: int, key: str, ready: asyncio.Event) -> AsyncIterator[int]:
    """The ``id:`` of each SSE message, read on a raw socket (no client library overhead)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
    writer.write(
        f"GET /v1/stream HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {key}\r\n"
        "accept: text/event-stream\r\n\r\n".encode()
    )
    await writer.drain()
    try:
        while (await reader.readline()) not in (b"\r\n", b""):
            pass
        ready.set()
        while line := await reader.readline():
            # chunked framing: size lines and payload lines interleave; ids are easy to spot
            if line.startswith(b"id: "):
                yield int(line[4:].strip())
    finally:
        writer.close()


async def bench_stream(url: str, rate: int, seconds: float) -> dict[str, float]:
    port = free_port()
    env = {
        **os.environ,
        **SECRETS,
        "LEDGER_DATABASE_URL": url,
        "LEDGER_HOME": tempfile.mkdtemp(prefix="ledger-bench-home-"),
    }
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "ledger.app:app_from_env",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        env=env,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    pool = HttpClient(10.0, connections=256)
    acked: dict[int, float] = {}
    received: dict[int, float] = {}
    total = int(rate * seconds)
    failed: list[BaseException] = []
    try:
        async with httpx.AsyncClient(timeout=2) as http:
            for _ in range(300):
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get(base + "/health")).status_code == 200:
                        break
                await asyncio.sleep(0.1)
        from tests.support import make_key

        key = await make_key(url, "audit:read")
        done = asyncio.Event()
        ready = asyncio.Event()

        async def listen() -> None:
            async for pos in sse_ids(port, key, ready):
                received[pos] = time.perf_counter()
                if len(received) >= total:
                    done.set()
                    return

        deliveries = [signed("midtrans", "settlement", order_id=f"BENCH-{i}") for i in range(total)]

        async def send(i: int) -> None:
            d = deliveries[i]
            status, _, body = await pool.post(base + d.path, d.body, d.headers)
            if status == 200:
                acked[json.loads(body)["position"]] = time.perf_counter()

        listener = asyncio.create_task(listen())
        await asyncio.wait_for(ready.wait(), 10)
        await asyncio.sleep(0.3)
        started = time.perf_counter()
        tasks = []
        for i in range(total):
            delay = started + i / rate - time.perf_counter()  # paced: i leaves at i / rate
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(send(i)))
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        failed = [o for o in outcomes if isinstance(o, BaseException)]
        sent_for = time.perf_counter() - started
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), 10)
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener
    finally:
        await pool.aclose()
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    if failed:
        print(f"{len(failed)} webhooks failed, e.g. {failed[0]!r}", file=sys.stderr)
    lat = sorted(max(0.0, received[p] - t) * 1000 for p, t in acked.items() if p in received)
    q = statistics.quantiles(lat, n=100) if len(lat) >= 2 else [0.0] * 99
    return {
        "webhooks": total,
        "acked": len(acked),
        "not_acked": total - len(acked),
        "received": len(lat),
        "achieved_rate": round(len(acked) / sent_for, 1),
        "p50_ms": round(statistics.median(lat), 1) if lat else -1,
        "p99_ms": round(q[98], 1),
        "max_ms": round(lat[-1], 1) if lat else -1,
    }


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=10_000)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--rate", type=int, default=500)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--only", choices=("dispatch", "client", "stream"))
    ap.add_argument("--client", choices=(*CLIENTS, "all"), default="ledger")
    ap.add_argument("--max-seconds", type=float, default=60.0, help="bound per client pass")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--requests", type=int, default=5_000, help="client-only pass")
    ap.add_argument("--concurrency", type=int, default=256, help="client-only pass")
    args = ap.parse_args()
    if args.only == "client":
        await compare(None, args)
        return
    async with database() as url:
        if args.only in (None, "dispatch"):
            await compare(url, args)
        if args.only in (None, "stream"):
            print("stream", await bench_stream(url, args.rate, args.seconds))


if __name__ == "__main__":
    asyncio.run(main())
