"""Ingest benchmark: signed Midtrans deliveries into the store vs a no-op route, and vs stock
eventsourcing ``Application.save``, all in one run on the same PostgreSQL.

    python bench/ingest.py [--duration 10] [--warmup 3] [--connections 64]

One uvicorn process serves ledger's own app (``create_app``, as ``ledger serve`` runs it)
plus two bench-only routes added here, never in the product: ``POST /noop`` (reads the
body, answers a small JSON like the real ack) and ``GET /bench/stats`` (group-commit
counters). Load comes from a second process on 127.0.0.1: ``wrk`` with a Lua script cycling
through a file of pre-signed, distinct bodies, or the asyncio load generator below when wrk
is missing. PostgreSQL: ``LEDGER_DATABASE_URL`` (a superuser URL) when set, else a fresh
embedded server in a temporary directory. Everything stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import base64
import contextlib
import hashlib
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

# Run as ``python bench/ingest.py``, this directory is sys.path[0], where a sibling script
# (bench/projections.py) would shadow the real ``projections`` package: drop it.
if Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    del sys.path[0]

import asyncpg
import httpx
import psutil
from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event
from litestar import Request, get, post

from ledger.api.webhooks import Ack

SECRETS = {
    "LEDGER_MAYAR_TOKEN": "bench-mayar",
    "LEDGER_MIDTRANS_SERVER_KEY": "SB-Mid-server-bench",
    "LEDGER_XENDIT_TOKEN": "bench-xendit",
    "LEDGER_PARTNER_SECRET": "bench-partner",
}
WRK_LUA = r"""
local bodies, i = {}, 0
function init(args)
  for line in io.lines(args[1]) do bodies[#bodies + 1] = line end
end
function request()
  i = i + 1
  if i > #bodies then i = 1 end
  return wrk.format("POST", nil, {["Content-Type"] = "application/json"}, bodies[i])
end
function done(s, lat, req)
  io.write(string.format(
    'RESULT {"requests":%d,"duration_s":%f,"non2xx":%d,"errors":%d,' ..
    '"p50_ms":%f,"p90_ms":%f,"p99_ms":%f,"max_ms":%f}\n',
    s.requests, s.duration / 1e6, s.errors.status,
    s.errors.connect + s.errors.read + s.errors.write + s.errors.timeout,
    lat:percentile(50) / 1e3, lat:percentile(90) / 1e3, lat:percentile(99) / 1e3,
    lat.max / 1e3))
end
"""


# -- the server process (bench-only routes around the product app) ------------------------


def serve(port: int, database_url: str) -> None:
    import logging

    import uvicorn

    from ledger.app import create_app
    from ledger.config import load_settings

    # The logging ``ledger serve`` sets up (ledger.cli.main): one INFO line per webhook.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if os.environ.get("BENCH_NO_INGEST_LOG"):  # diagnosis only: what the log line costs
        logging.getLogger("ledger.ingest.service").setLevel(logging.WARNING)

    @post("/noop", status_code=200, include_in_schema=False)
    async def noop(request: Request[Any, Any, Any]) -> Ack:
        await request.body()
        return Ack(status="accepted", event_id=str(uuid.UUID(int=0)), position=0)

    @get("/bench/stats", include_in_schema=False)
    async def stats(request: Request[Any, Any, Any]) -> dict[str, int]:
        committer = request.app.state.services.committer
        return {"batches": committer.batches, "appended": committer.appended}

    app = create_app(load_settings(), database_url=database_url)
    app.register(noop)
    app.register(stats)
    # The same uvicorn configuration as ``ledger serve``.
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


# -- load generators (a second process) ----------------------------------------------------


def wrk_load(
    url: str, bodies: Path, duration: float, connections: int, tmp: Path
) -> dict[str, Any]:
    script = tmp / "bodies.lua"
    script.write_text(WRK_LUA)
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--timeout", "10s"]
    out = subprocess.run(
        [*cmd, "-s", str(script), url, "--", str(bodies)],
        capture_output=True,
        text=True,
        timeout=duration + 60,
        check=True,
    ).stdout
    line = next(x for x in out.splitlines() if x.startswith("RESULT "))
    return dict(json.loads(line[len("RESULT ") :]))


async def _py_load(
    url: str, bodies: list[bytes], duration: float, connections: int
) -> dict[str, Any]:
    """A minimal HTTP/1.1 keep-alive client: one coroutine per connection, no parsing beyond
    the status line and Content-Length, so it costs far less CPU than an HTTP library."""
    u = urllib.parse.urlsplit(url)
    head = f"POST {u.path} HTTP/1.1\r\nHost: {u.netloc}\r\nContent-Type: application/json\r\n"
    latencies: list[float] = []
    counts = {"non2xx": 0, "errors": 0, "next": 0}
    deadline = time.perf_counter() + duration

    async def conn() -> None:
        reader, writer = await asyncio.open_connection(u.hostname, u.port)
        try:
            while time.perf_counter() < deadline:
                body = bodies[counts["next"] % len(bodies)]
                counts["next"] += 1
                t0 = time.perf_counter()
                writer.write(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
                status_line = await reader.readline()
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
                latencies.append(time.perf_counter() - t0)
                if not status_line.split(b" ", 2)[1].startswith(b"2"):
                    counts["non2xx"] += 1
        except (OSError, asyncio.IncompleteReadError):
            counts["errors"] += 1
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(conn() for _ in range(connections)))
    elapsed = time.perf_counter() - start
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] * 1e3

    return {
        "requests": len(latencies),
        "duration_s": elapsed,
        "non2xx": counts["non2xx"],
        "errors": counts["errors"],
        "p50_ms": pct(50),
        "p90_ms": pct(90),
        "p99_ms": pct(99),
        "max_ms": latencies[-1] * 1e3,
    }


def py_load_main(url: str, bodies: Path, duration: float, connections: int) -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    data = bodies.read_bytes().splitlines()
    print("RESULT " + json.dumps(asyncio.run(_py_load(url, data, duration, connections))))


def run_load(
    url: str, bodies: Path, duration: float, connections: int, tmp: Path
) -> dict[str, Any]:
    if shutil.which("wrk"):
        return wrk_load(url, bodies, duration, connections, tmp)
    cmd = [sys.executable, __file__, "load", url, str(bodies), str(duration), str(connections)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60, check=True)
    line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))
    return dict(json.loads(line[len("RESULT ") :]))


# -- stock eventsourcing ---------------------------------------------------------------------


class Receipt(Aggregate):
    """What a delivery holds, as a stock eventsourcing aggregate (one event per save)."""

    @event("Received")
    def __init__(self, provider: str, dedup_key: str, kind: str, headers: dict[str, str],
                 body_sha256: str, body_b64: str) -> None:  # fmt: skip
        self.dedup_key = dedup_key


def eventsourcing_rate(
    url: str, port: int, bodies: list[bytes], duration: float, threads: int
) -> float:
    """``Application.save`` of a new aggregate per call, holding what a delivery holds."""
    u = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qs(u.query)
    env = {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": u.path.lstrip("/"),
        "POSTGRES_HOST": query.get("host", [u.hostname or "127.0.0.1"])[0],
        "POSTGRES_PORT": str(u.port or port),
        "POSTGRES_USER": urllib.parse.unquote(u.username or "postgres"),
        "POSTGRES_PASSWORD": urllib.parse.unquote(u.password or ""),
        "POSTGRES_POOL_SIZE": str(threads),
        "POSTGRES_MAX_OVERFLOW": "0",
        "CREATE_TABLE": "y",  # its own bench database, not ours
    }
    app = Application(env=env)
    counter = iter(range(10**9))
    lock = threading.Lock()
    done = [0]
    deadline = time.perf_counter() + duration

    def worker() -> None:
        n = 0
        while time.perf_counter() < deadline:
            with lock:
                i = next(counter)
            body = bodies[i % len(bodies)]
            app.save(
                Receipt(
                    "midtrans",
                    f"bench:{i}",
                    "settlement",
                    {"content-type": "application/json"},
                    hashlib.sha256(body).hexdigest(),
                    base64.b64encode(body).decode(),
                )
            )
            n += 1
        with lock:
            done[0] += n

    start = time.perf_counter()
    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    rate = done[0] / (time.perf_counter() - start)
    app.close()
    return rate


# -- the run -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def make_bodies(path: Path, n: int) -> list[bytes]:
    """``n`` distinct, correctly signed Midtrans settlements, one compact JSON per line."""
    from ledger.config import load_settings
    from ledger.ingest.samples import build

    settings = load_settings(SECRETS)
    bodies = [build(settings, "midtrans", "settlement").body for _ in range(n)]
    path.write_bytes(b"\n".join(bodies) + b"\n")
    return bodies


def with_db(url: str, name: str) -> str:
    from ledger.database import with_database

    return with_database(url, name)


async def create_databases(server_url: str, names: list[str]) -> dict[str, str]:
    conn = await asyncpg.connect(server_url)
    try:
        info = {
            "version": await conn.fetchval("SHOW server_version"),
            "port": await conn.fetchval("SHOW port"),
            "synchronous_commit": await conn.fetchval("SHOW synchronous_commit"),
            "fsync": await conn.fetchval("SHOW fsync"),
            "data_directory": await conn.fetchval("SHOW data_directory"),
        }
        for name in names:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return info


async def drop_databases(server_url: str, names: list[str]) -> None:
    conn = await asyncpg.connect(server_url)
    try:
        for name in names:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def log_counts(url: str) -> tuple[int, int, int]:
    """Events, distinct dedup keys, and distinct writing transactions (= commits)."""
    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow(
            "SELECT count(*), count(DISTINCT convert_from(state, 'UTF8')::jsonb->>'dedup_key'),"
            " count(DISTINCT xmin::text) FROM stored_events"
        )
    finally:
        await conn.close()
    return int(row[0]), int(row[1]), int(row[2])


def postgres_pids(data_directory: str) -> list[int]:
    try:
        master = int(Path(data_directory, "postmaster.pid").read_text().split()[0])
        return [master, *(c.pid for c in psutil.Process(master).children())]
    except (OSError, ValueError, psutil.Error):
        return []


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def stop(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def wait_ready(proc: subprocess.Popen[bytes], base: str, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:]
            raise SystemExit(f"bench server exited with {proc.returncode}:\n{tail}")
        try:
            if httpx.get(f"{base}/ready", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise SystemExit("bench server not ready")


def main(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="ledger-bench-ingest-"))
    # Registered before the embedded server's own exit hook, so it runs after that one.
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    external = os.environ.get("LEDGER_DATABASE_URL")
    if external:
        server_url = external
    else:
        from ledger.database import start_embedded

        server_url = start_embedded(tmp / "pgdata", cleanup="delete")
    suffix = uuid.uuid4().hex[:6]
    ledger_db, es_db = f"bench_ledger_{suffix}", f"bench_es_{suffix}"
    pg = asyncio.run(create_databases(server_url, [ledger_db, es_db]))
    ledger_url, es_url = with_db(server_url, ledger_db), with_db(server_url, es_db)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")} | SECRETS
    env |= {"LEDGER_HOME": str(tmp / "home")}
    if not args.with_workers:  # measure ingest alone; projections/outbox would share the CPUs
        env |= {"LEDGER_RUN_PROJECTIONS": "false", "LEDGER_RUN_OUTBOX": "false"}
    log = (tmp / "server.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, __file__, "serve", str(port), ledger_url],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    out: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpus": os.cpu_count(),
        "load_generator": "wrk -t1"
        if shutil.which("wrk")
        else "python asyncio (bench/ingest.py load)",
        "connections": args.connections,
        "duration_s": args.duration,
        "postgres": {k: v for k, v in pg.items() if k != "data_directory"},
        "database": "LEDGER_DATABASE_URL" if external else "embedded (fresh temp dir)",
        "background_workers": bool(args.with_workers),
    }
    try:
        wait_ready(proc, base, tmp / "server.log")

        def load(
            path: str, file: Path, secs: float, conns: int = args.connections
        ) -> dict[str, Any]:
            return run_load(base + path, file, secs, conns, tmp)

        noop_file = tmp / "noop.txt"
        make_bodies(noop_file, 20_000)
        load("/noop", noop_file, args.warmup)
        srv0 = cpu_seconds([proc.pid])
        out["noop"] = noop = load("/noop", noop_file, args.duration)
        noop["server_cpu_us_per_request"] = round(
            1e6 * (cpu_seconds([proc.pid]) - srv0) / max(1, noop["requests"])
        )
        noop_rps = noop["requests"] / noop["duration_s"]
        # Enough distinct bodies that ingest never wraps around (it cannot beat the no-op).
        warm_file, ingest_file = tmp / "warm.txt", tmp / "ingest.txt"
        make_bodies(warm_file, math.ceil(noop_rps * args.warmup * 1.3) + 1000)
        n_bodies = len(make_bodies(ingest_file, math.ceil(noop_rps * args.duration * 1.3) + 1000))
        load("/webhooks/midtrans", warm_file, args.warmup)
        before = httpx.get(f"{base}/bench/stats").json()
        pids = [proc.pid, *postgres_pids(pg["data_directory"])]
        cpu0, srv0, t0 = cpu_seconds(pids), cpu_seconds([proc.pid]), time.perf_counter()
        out["ingest"] = ingest = load("/webhooks/midtrans", ingest_file, args.duration)
        wall = time.perf_counter() - t0
        server_cpu = cpu_seconds([proc.pid]) - srv0
        ingest["server_cpu_us_per_request"] = round(1e6 * server_cpu / max(1, ingest["requests"]))
        out["cpu_during_ingest"] = {
            "server_process_pct": round(100 * server_cpu / wall, 1),
            "postgres_pct": round(100 * (cpu_seconds(pids) - cpu0 - server_cpu) / wall, 1),
        }
        after = httpx.get(f"{base}/bench/stats").json()
        batches, appended = (
            after["batches"] - before["batches"],
            after["appended"] - before["appended"],
        )
        out["group_commit"] = {
            "commits": batches,
            "events": appended,
            "mean_batch": round(appended / batches, 1) if batches else None,
        }
        # Latency without queueing behind 63 others: a few connections, distinct bodies.
        low_file = tmp / "low.txt"
        make_bodies(low_file, math.ceil(noop_rps * args.duration / 2) + 1000)
        out["ingest_low_concurrency"] = load("/webhooks/midtrans", low_file, args.duration / 2, 4)
        if ingest["requests"] > n_bodies:
            out["warning"] = "ingest wrapped around its bodies: some requests were duplicates"
        events, keys, txns = asyncio.run(log_counts(ledger_url))
        out["log"] = {"events": events, "distinct_dedup_keys": keys, "commits": txns}
    finally:
        stop(proc)
        log.close()
    es_bodies = ingest_file.read_bytes().splitlines()[:20_000]
    out["eventsourcing"] = {
        f"{args.connections}_threads": eventsourcing_rate(
            es_url, int(pg["port"]), es_bodies, args.duration, args.connections
        ),
        "sequential": eventsourcing_rate(es_url, int(pg["port"]), es_bodies, args.duration / 2, 1),
    }
    asyncio.run(drop_databases(server_url, [ledger_db, es_db]))
    return out


def report(r: dict[str, Any]) -> None:
    noop, ing = r["noop"], r["ingest"]
    noop_rps = noop["requests"] / noop["duration_s"]
    ing_rps = ing["requests"] / ing["duration_s"]
    es_best = max(r["eventsourcing"].values())
    pg = r["postgres"]
    print(f"ingest benchmark {r['when']}  cpus={r['cpus']}  load={r['load_generator']}"
          f" c={r['connections']} d={r['duration_s']:g}s")  # fmt: skip
    print(f"postgres {pg['version']} ({r['database']}), synchronous_commit={pg['synchronous_commit']}"
          f" fsync={pg['fsync']}; background workers {'on' if r['background_workers'] else 'off'}")  # fmt: skip
    for name, x, rps in (("no-op POST", noop, noop_rps), ("ingest (midtrans)", ing, ing_rps)):
        print(f"  {name:18} {rps:8.0f} req/s  p50 {x['p50_ms']:6.2f} ms  p99 {x['p99_ms']:6.2f} ms"
              f"  max {x['max_ms']:7.2f} ms  non-2xx {x['non2xx']}  errors {x['errors']}")  # fmt: skip
    print(f"  ingest / no-op      {ing_rps / noop_rps:6.2f}x  (target >= 0.6x)")
    n_cpu, i_cpu = noop["server_cpu_us_per_request"], ing["server_cpu_us_per_request"]
    print(f"  server CPU/request  no-op {n_cpu} us, ingest {i_cpu} us:"
          f" CPU-bound ratio {n_cpu / max(1, i_cpu):.2f}x")  # fmt: skip
    print(f"  ingest p99          {ing['p99_ms']:6.2f} ms (target <= 25 ms)")
    gc = r["group_commit"]
    print(f"  group commit        {gc['events']} events in {gc['commits']} commits,"
          f" mean batch {gc['mean_batch']}")  # fmt: skip
    for name, rate in r["eventsourcing"].items():
        print(f"  eventsourcing Application.save ({name.replace('_', ' ')}): {rate:8.0f} saves/s")
    print(f"  ingest / stock eventsourcing (best) {ing_rps / es_best:6.2f}x  (target >= 3x)")
    low = r["ingest_low_concurrency"]
    print(f"  ingest, 4 connections: {low['requests'] / low['duration_s']:.0f} req/s"
          f"  p50 {low['p50_ms']:.2f} ms  p99 {low['p99_ms']:.2f} ms")  # fmt: skip
    cpu = r["cpu_during_ingest"]
    print(f"  cpu during ingest   server {cpu['server_process_pct']}%  postgres {cpu['postgres_pct']}%"
          " (of one core; 100% = one core busy)")  # fmt: skip
    print(f"  log                 {r['log']}")
    if "warning" in r:
        print(f"  WARNING: {r['warning']}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        serve(int(sys.argv[2]), sys.argv[3])
    elif len(sys.argv) > 1 and sys.argv[1] == "load":
        py_load_main(sys.argv[2], Path(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]))
    else:
        parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
        parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
        parser.add_argument("--warmup", type=float, default=3.0, help="seconds before each")
        parser.add_argument("--connections", type=int, default=64)
        parser.add_argument("--with-workers", action="store_true",
                            help="keep the projection runner and outbox running in the server")  # fmt: skip
        parser.add_argument("--json", type=Path, help="append the raw result as one JSON line")
        ns = parser.parse_args()
        result = main(ns)
        report(result)
        if ns.json:
            with ns.json.open("a") as fh:
                fh.write(json.dumps(result) + "\n")
