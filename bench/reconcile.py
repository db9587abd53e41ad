"""Reconciliation benchmark (issue 10): 10,000 pending registered orders checked against a
loopback stand-in of Midtrans' status API, and ingest alone vs during a reconcile pass.

    python bench/reconcile.py [--orders 10000] [--duration 8] [--connections 32]

Three processes on 127.0.0.1, all started and stopped here: ledger's own app under uvicorn
(``create_app``, projections on, outbox off, the background reconciler off so that passes
start when the bench says) plus two bench-only routes (``POST /bench/pass`` runs one pass
exactly as the background reconciler does: ``ledger.reconcile.passes.run_pass`` through the
service's group commit; ``GET /bench/caught_up``); a stand-in status API (aiohttp; every
tenth order settled, the rest pending, signed like Midtrans); and the load generator (raw
HTTP/1.1 keep-alive, distinct signed Midtrans settlements). PostgreSQL:
``LEDGER_DATABASE_URL`` (a superuser URL) when set, else an embedded server in a temporary
directory. Prints orders/s, ingest requests/s alone, during a pass at the default rate limit
(``LEDGER_RECONCILE_RATE``, the production setting) and during an unthrottled pass, the
ratios, and the load average.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

if Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    del sys.path[0]  # a sibling script (bench/projections.py) would shadow the package

import asyncpg
import httpx
import psutil

SECRETS = {
    "LEDGER_MAYAR_TOKEN": "bench-mayar",
    "LEDGER_MIDTRANS_SERVER_KEY": "SB-Mid-server-bench",
    "LEDGER_XENDIT_TOKEN": "bench-xendit",
    "LEDGER_PARTNER_SECRET": "bench-partner",
}
KEY = SECRETS["LEDGER_MIDTRANS_SERVER_KEY"]


# -- the server: ledger's app plus two bench-only routes ------------------------------------


def serve(port: int, database_url: str) -> None:
    import msgspec
    import uvicorn
    from litestar import Request, get, post

    from ledger.app import create_app
    from ledger.config import load_settings
    from ledger.reconcile.clients import StatusClient
    from ledger.reconcile.passes import run_pass

    @post("/bench/pass", status_code=200, include_in_schema=False)
    async def one_pass(request: Request[Any, Any, Any], rate: float, limit: int) -> dict[str, Any]:
        s = request.app.state.services
        settings = msgspec.structs.replace(s.settings, reconcile_rate=rate)
        t0 = time.perf_counter()
        async with StatusClient(settings) as client:
            report = await run_pass(
                s.database_url,
                s.read_models,
                client,
                s.committer,
                settings,
                str(uuid.uuid4()),
                limit=limit,
            )
        assert report is not None
        return {
            "checked": report.checked,
            "seconds": time.perf_counter() - t0,
            "unavailable": report.unavailable,
        }

    @get("/bench/caught_up", include_in_schema=False)
    async def caught_up(request: Request[Any, Any, Any]) -> bool:
        rm = request.app.state.services.read_models
        return all(p.lag_events == 0 for p in await rm.status())

    app = create_app(load_settings(), database_url=database_url)
    app.register(one_pass)
    app.register(caught_up)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


# -- the stand-in status API ---------------------------------------------------------------


def standin(port: int) -> None:
    from aiohttp import web

    from ledger.ingest.providers.midtrans import signature

    async def status(request: web.Request) -> web.Response:
        oid = request.match_info["order_id"]
        settled = int(oid.rsplit("-", 1)[1]) % 10 == 0
        body = {
            "status_code": "200",
            "status_message": "Success, transaction is found",
            "transaction_id": str(uuid.uuid5(uuid.NAMESPACE_URL, oid)),
            "order_id": oid,
            "gross_amount": "50000.00",
            "currency": "IDR",
            "payment_type": "bank_transfer",
            "transaction_time": "2026-11-27 10:00:00",
            "transaction_status": "settlement" if settled else "pending",
            "fraud_status": "accept",
            "merchant_id": "G000000000",
            "signature_key": signature(oid, "200", "50000.00", KEY),
        }
        return web.json_response(body)

    app = web.Application()
    app.router.add_get("/v2/{order_id}/status", status)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


# -- the load generator --------------------------------------------------------------------


async def _load(url: str, bodies: list[bytes], duration: float, connections: int) -> dict[str, Any]:
    u = urllib.parse.urlsplit(url)
    head = f"POST {u.path} HTTP/1.1\r\nHost: {u.netloc}\r\nContent-Type: application/json\r\n"
    done = {"ok": 0, "bad": 0, "next": 0}
    deadline = time.perf_counter() + duration

    async def conn() -> None:
        reader, writer = await asyncio.open_connection(u.hostname, u.port)
        while time.perf_counter() < deadline and done["next"] < len(bodies):
            body = bodies[done["next"]]
            done["next"] += 1
            writer.write(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
            status = await reader.readline()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
            done["ok" if status.split(b" ", 2)[1].startswith(b"2") else "bad"] += 1
        writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(conn() for _ in range(connections)))
    elapsed = time.perf_counter() - t0
    return {"requests": done["ok"], "bad": done["bad"], "rps": done["ok"] / elapsed}


def load(url: str, path: str, duration: float, connections: int) -> None:
    bodies = Path(path).read_bytes().splitlines()
    print("RESULT " + json.dumps(asyncio.run(_load(url, bodies, duration, connections))))


# -- the run -------------------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, __file__, *args], env=env)


async def wait_http(url: str) -> None:
    async with httpx.AsyncClient() as http:
        for _ in range(600):
            try:
                await http.get(url)
                return
            except httpx.TransportError:
                await asyncio.sleep(0.1)
    raise SystemExit(f"{url} did not start")


async def caught_up(base: str) -> None:
    async with httpx.AsyncClient(timeout=30) as http:
        while not (await http.get(base + "/bench/caught_up")).json():
            await asyncio.sleep(0.2)


async def register(base: str, key: str, n: int) -> float:
    """``n`` registered orders (PUT /v1/orders), 16 at a time; seconds taken."""
    body = json.dumps({"customer": "b@example.com", "amount": "50000", "currency": "IDR"})
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    t0 = time.perf_counter()
    async with httpx.AsyncClient(base_url=base, timeout=60) as http:
        queue = iter(range(n))

        async def worker() -> None:
            for i in queue:
                r = await http.put(f"/v1/orders/midtrans/BENCH-{i}", content=body, headers=headers)
                assert r.status_code == 201, r.text

        await asyncio.gather(*(worker() for _ in range(16)))
    return time.perf_counter() - t0


def ingest(base: str, bodies: Path, duration: float, connections: int) -> dict[str, Any]:
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "load",
            base + "/webhooks/midtrans",
            str(bodies),
            str(duration),
            str(connections),
        ],
        capture_output=True,
        text=True,
        timeout=duration + 120,
        check=True,
    ).stdout
    return dict(json.loads(next(x for x in out.splitlines() if x.startswith("RESULT "))[7:]))


def postgres_pids(data_directory: str) -> list[int]:
    master = int(Path(data_directory, "postmaster.pid").read_text().split()[0])
    return [master, *(c.pid for c in psutil.Process(master).children())]


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    found = {}
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            t = psutil.Process(pid).cpu_times()
            found[pid] = t.user + t.system
    return found


class Cpu:
    """CPU seconds the ledger server and PostgreSQL spent over a window (the load generator
    and the stand-in API excluded): per ingested request, a figure other processes on a
    shared machine barely move, unlike requests per second."""

    def __init__(self, server: int, data_directory: str) -> None:
        self.pids = [server, *postgres_pids(data_directory)]
        self.start = cpu_seconds(self.pids)

    def spent(self) -> float:
        end = cpu_seconds(self.pids)
        return sum(end[p] - self.start[p] for p in end if p in self.start)


def make_bodies(tmp: Path, runs: int, n: int) -> list[Path]:
    from ledger.config import load_settings
    from ledger.ingest.samples import build

    settings = load_settings(SECRETS)
    files = []
    for r in range(runs):
        path = tmp / f"bodies-{r}.txt"
        path.write_bytes(
            b"\n".join(build(settings, "midtrans", "settlement").body for _ in range(n)) + b"\n"
        )
        files.append(path)
    return files


async def bench_pass(base: str, rate: float, limit: int) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=3600) as http:
        r = await http.post(base + "/bench/pass", params={"rate": rate, "limit": limit})
        r.raise_for_status()
        return dict(r.json())


async def during(base: str, body: Path, args: argparse.Namespace, rate: float) -> tuple[Any, Any]:
    """Ingest for ``duration`` seconds while a pass runs (started just before)."""
    limit = max(1, int(rate * (args.duration + 2)))  # it lasts at least the load window
    if rate >= 1000:
        limit = args.orders  # unthrottled: every candidate (it outlasts the window)
    task = asyncio.create_task(bench_pass(base, rate, min(limit, args.orders)))
    await asyncio.sleep(0.2)
    result = await asyncio.to_thread(ingest, base, body, args.duration, args.connections)
    return result, await task


async def main(args: argparse.Namespace) -> None:
    from ledger.audit.keys import create_key
    from ledger.config import Settings
    from ledger.database import start_embedded, with_database

    tmp = Path(tempfile.mkdtemp(prefix="ledger-bench-reconcile-"))
    server_url = os.environ.get("LEDGER_DATABASE_URL") or start_embedded(tmp / "pgdata")
    name = f"bench_reconcile_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(server_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = with_database(server_url, name)
    api_port, port = free_port(), free_port()
    default_rate = Settings().reconcile_rate
    env = (
        {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
        | SECRETS
        | {
            "LEDGER_HOME": str(tmp / "home"),
            "LEDGER_RUN_OUTBOX": "false",
            "LEDGER_MIDTRANS_API_URL": f"http://127.0.0.1:{api_port}",
            "LEDGER_RECONCILE_INTERVAL": "0",
            "LEDGER_RECONCILE_AFTER": "0",
        }
    )
    procs = [spawn("standin", str(api_port)), spawn("serve", str(port), url, env=env)]
    base = f"http://127.0.0.1:{port}"
    server = procs[1].pid
    datadir = str(await admin.fetchval("SHOW data_directory"))
    try:
        await wait_http(base + "/health")
        conn = await asyncpg.connect(url)
        _, key = await create_key(conn, "bench", ["orders:write"])
        await conn.close()
        files = make_bodies(tmp, 2 * args.pairs + 1, args.bodies)
        took = await register(base, key, args.orders)
        await caught_up(base)
        print(f"registered {args.orders} orders in {took:.1f} s")
        alone_pass = await bench_pass(base, 1000.0, args.orders)
        orders_s = alone_pass["checked"] / alone_pass["seconds"]
        print(
            f"reconcile pass alone: {alone_pass['checked']} orders in "
            f"{alone_pass['seconds']:.1f} s = {orders_s:.0f} orders/s (rate limit 1000/s)"
        )
        await caught_up(base)
        # Alone and during a pass (default rate limit) alternately, so that the machine's
        # other load falls on both alike; medians of the pairs.
        pairs = []
        for i in range(args.pairs):

            async def alone_run(i: int = i) -> dict[str, Any]:
                cpu = Cpu(server, datadir)
                a = await asyncio.to_thread(
                    ingest, base, files[2 * i], args.duration, args.connections
                )
                await caught_up(base)  # the projections' share of the work is in the window
                a["cpu_ms"] = 1e3 * cpu.spent() / a["requests"]
                return a

            async def during_run(i: int = i) -> tuple[dict[str, Any], dict[str, Any]]:
                cpu = Cpu(server, datadir)
                d, p = await during(base, files[2 * i + 1], args, default_rate)
                await caught_up(base)
                d["cpu_ms"] = 1e3 * cpu.spent() / d["requests"]  # the whole pass included
                return d, p

            if i % 2 == 0:  # ABBA: neither kind always runs first
                a = await alone_run()
                d, p = await during_run()
            else:
                d, p = await during_run()
                a = await alone_run()
            pairs.append((a, d))
            print(
                f"pair {i + 1}: ingest alone {a['rps']:.0f} req/s ({a['cpu_ms']:.2f} ms CPU "
                f"each), during a pass {d['rps']:.0f} req/s ({d['cpu_ms']:.2f} ms); the pass "
                f"checked {p['checked']} orders in {p['seconds']:.1f} s at {default_rate:g}/s"
            )
        alone = statistics.median(a["rps"] for a, _ in pairs)
        with_pass = statistics.median(d["rps"] for _, d in pairs)
        cpu_alone = statistics.median(a["cpu_ms"] for a, _ in pairs)
        cpu_with = statistics.median(d["cpu_ms"] for _, d in pairs)
        ratio, capacity = with_pass / alone, cpu_alone / cpu_with
        print(
            f"ingest during a pass at the default rate limit ({default_rate:g}/s per provider)"
            f" vs alone, medians: {with_pass:.0f} / {alone:.0f} req/s = {ratio:.2f}x wall; "
            f"CPU per request (server + PostgreSQL) {cpu_with:.2f} / {cpu_alone:.2f} ms = "
            f"{capacity:.2f}x capacity: {'within' if capacity >= 0.9 else 'NOT within'} 10%"
        )
        cpu = Cpu(server, datadir)
        d, p = await during(base, files[-1], args, 1000.0)
        await caught_up(base)
        d["cpu_ms"] = 1e3 * cpu.spent() / d["requests"]
        print(
            f"for information, during an unthrottled pass: {d['rps']:.0f} req/s = "
            f"{d['rps'] / alone:.2f}x wall, {cpu_alone / d['cpu_ms']:.2f}x capacity (the pass:"
            f" {p['checked']} orders, {p['checked'] / p['seconds']:.0f} orders/s): the rate "
            "limit is what keeps ingest unaffected"
        )
        print("load average (1, 5, 15 min): " + ", ".join(f"{x:.2f}" for x in os.getloadavg()))
    finally:
        for p in procs:
            p.terminate()
            p.wait(30)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        serve(int(sys.argv[2]), sys.argv[3])
    elif len(sys.argv) > 1 and sys.argv[1] == "standin":
        standin(int(sys.argv[2]))
    elif len(sys.argv) > 1 and sys.argv[1] == "load":
        load(sys.argv[2], sys.argv[3], float(sys.argv[4]), int(sys.argv[5]))
    else:
        parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
        parser.add_argument("--orders", type=int, default=10_000)
        parser.add_argument("--duration", type=float, default=8.0)
        parser.add_argument("--connections", type=int, default=32)
        parser.add_argument("--pairs", type=int, default=4, help="alone/during pairs")
        parser.add_argument("--bodies", type=int, default=30_000, help="per ingest run")
        asyncio.run(main(parser.parse_args()))
