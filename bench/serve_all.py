"""Ingest with everything running (issue 11, goal 1): the framework's ceiling, the in-app
no-op, ingest alone and the README's ``ledger serve`` with every background component on,
in ONE run on the same machine.

    python bench/serve_all.py [--duration 10] [--warmup 3] [--connections 64]
                              [--profile DIR]   # py-spy record of each server, raw + svg

Four servers, one after the other, each in its own process group on 127.0.0.1, each loaded
by ``wrk -t1 -cN`` (or, without wrk, the asyncio client of ``bench/ingest.py``):

1. ``bare``: a Litestar app with one no-op ``POST`` handler and nothing else (no middleware,
   no plugins, no dependencies) on ``uvicorn.run`` with the options ``ledger serve`` uses:
   the framework's ceiling on this machine.
2. ``app``: ledger's own app (``create_app``, logging as ``ledger serve`` configures it)
   with the bench-only ``POST /noop`` added, background components off: first the in-app
   no-op, then ingest alone (``POST /webhooks/midtrans``).
3. ``serve``: the real command, ``python -m ledger serve`` (README defaults: projection
   runner, outbox dispatcher, audit index and reconciler on; in their own process beside
   the HTTP one on 2 CPUs or more, ADR 0030), then the same ingest load. Server CPU is
   every process under serve (HTTP and background), the background's share shown apart;
   PostgreSQL's is reported separately. After the load: how long the projections and the audit index took
   to reach the head, and the log's count of distinct dedup keys (= events: no duplicates).
4. ``bare`` again: its mean with the first is the ceiling (the machine's load drifts).

Every webhook body is a distinct, correctly signed Midtrans settlement (never a duplicate).
PostgreSQL: ``LEDGER_DATABASE_URL`` (a superuser URL) when set, else a fresh embedded server
in a temporary directory. Everything stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if Path(sys.path[0] or ".").resolve() == HERE:  # bench/ must not shadow ``projections``
    del sys.path[0]
_spec = importlib.util.spec_from_file_location("bench_ingest", HERE / "ingest.py")
assert _spec is not None
assert _spec.loader is not None
bi: Any = importlib.util.module_from_spec(_spec)
sys.modules["bench_ingest"] = bi
_spec.loader.exec_module(bi)

from litestar import Request  # noqa: E402  (module level: handlers' annotations)

from ledger.api.webhooks import Ack  # noqa: E402

# -- the servers ---------------------------------------------------------------------------


def serve_bare(port: int) -> None:
    """Litestar's ceiling: one no-op POST, no middleware, uvicorn as ``ledger serve`` runs it."""
    import uvicorn
    from litestar import Litestar, get, post

    @post("/noop", status_code=200)
    async def noop(request: Request[Any, Any, Any]) -> dict[str, Any]:
        await request.body()
        return {"status": "accepted", "event_id": str(uuid.UUID(int=0)), "position": 0}

    @get("/ready")
    async def ready() -> dict[str, str]:
        return {"status": "ready"}

    app = Litestar([noop, ready], logging_config=None)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def serve_app(port: int, database_url: str) -> None:
    """ledger's app plus the bench-only no-op, logging and protocol as ``ledger serve``."""
    import logging

    import uvicorn
    from litestar import post

    from ledger import logs
    from ledger.api.slow_clients import HeaderDeadlineProtocol
    from ledger.app import create_app
    from ledger.config import load_settings

    config = logs.configure("console", logging.INFO)

    @post("/noop", status_code=200, include_in_schema=False)
    async def noop(request: Request[Any, Any, Any]) -> Ack:
        await request.body()
        return Ack(status="accepted", event_id=str(uuid.UUID(int=0)), position=0)

    settings = load_settings()
    app = create_app(settings, database_url=database_url)
    app.register(noop)
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        log_config=config,
        http=HeaderDeadlineProtocol,
    )


# -- the run -------------------------------------------------------------------------------


PG_DATA: list[str] = []  # the PostgreSQL data directory (its processes' CPU is reported)


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


class Server:
    """One server process in its own process group; optionally profiled by py-spy."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], tmp: Path) -> None:
        self.name, self.tmp = name, tmp
        self.log_path = tmp / f"{name}.log"
        self.port = int(cmd[cmd.index("--port") + 1]) if "--port" in cmd else int(cmd[3])
        with self.log_path.open("wb") as out:
            self.proc = subprocess.Popen(
                cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.base = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Server:
        bi.wait_ready(self.proc, self.base, self.log_path, timeout=120)
        return self

    def __exit__(self, *_: object) -> None:
        bi.stop(self.proc)

    def pids(self) -> list[int]:
        """The server and every process under it (``--workers`` children and serve's
        background process, ADR 0030); the PostgreSQL processes are counted apart."""
        import psutil

        try:
            p = psutil.Process(self.proc.pid)
            return [p.pid, *(c.pid for c in p.children(recursive=True))]
        except psutil.Error:
            return [self.proc.pid]

    def background_pids(self) -> list[int]:
        """``ledger serve``'s background process (``ledger worker --parent-pipe``), if any."""
        import psutil

        found = []
        for pid in self.pids():
            with contextlib.suppress(psutil.Error):
                if "--parent-pipe" in psutil.Process(pid).cmdline():
                    found.append(pid)
        return found


def measure(
    server: Server,
    path: str,
    bodies: Path,
    args: argparse.Namespace,
    label: str,
) -> dict[str, Any]:
    """Warm-up (first lines of ``bodies``), then the measured run; server CPU per request."""
    warm, main_file = bodies.with_suffix(".warm"), bodies
    url = server.base + path
    bi.run_load(url, warm, args.warmup, args.connections, server.tmp)
    spies = []
    pg_pids = bi.postgres_pids(PG_DATA[0]) if PG_DATA else []
    pids, bg_pids = server.pids(), server.background_pids()
    if args.profile:  # the HTTP process and, apart, serve's background process
        args.profile.mkdir(parents=True, exist_ok=True)
        for pid, name in [(server.proc.pid, label), *((p, f"{label} background") for p in bg_pids)]:
            spy_cmd = ["py-spy", "record", "--pid", str(pid), "--duration",
                       str(max(1, round(args.duration))), "--rate", "200", "--format", "raw",
                       "-o", str(args.profile / f"{name}.txt"), "--nonblocking"]  # fmt: skip
            spies.append(
                subprocess.Popen(spy_cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            )
    cpu0, pg0, bg0 = bi.cpu_seconds(pids), bi.cpu_seconds(pg_pids), bi.cpu_seconds(bg_pids)
    t0 = time.perf_counter()
    r: dict[str, Any] = bi.run_load(url, main_file, args.duration, args.connections, server.tmp)
    wall = time.perf_counter() - t0
    if server.pids() != pids:  # e.g. the background process restarted: the figure is wrong
        r["pids_changed"] = True
        print(f"  warning: {label}: the server's processes changed during the run", flush=True)
    cpu = bi.cpu_seconds(pids) - cpu0  # the same processes as at the start
    bg_cpu = bi.cpu_seconds(bg_pids) - bg0
    r["postgres_cpu_pct"] = round(100 * (bi.cpu_seconds(pg_pids) - pg0) / wall, 1)
    for spy in spies:
        with contextlib.suppress(subprocess.TimeoutExpired):
            spy.wait(timeout=30)
    r["rps"] = r["requests"] / r["duration_s"]
    r["server_cpu_us_per_request"] = round(1e6 * cpu / max(1, r["requests"]))
    r["server_cpu_pct"] = round(100 * cpu / wall, 1)
    # Of which serve's background process (projections, audit index, outbox): all of a
    # request's server CPU is the total above, HTTP process(es) + background process.
    r["background_cpu_us_per_request"] = round(1e6 * bg_cpu / max(1, r["requests"]))
    r["background_cpu_pct"] = round(100 * bg_cpu / wall, 1)
    r["loadavg"] = loadavg()
    of_which = (
        f", of which background process {r['background_cpu_us_per_request']} us/req"
        f" = {r['background_cpu_pct']}%"
        if bg_pids
        else ""
    )
    print(
        f"  {label:16} {r['rps']:8.0f} req/s  p50 {r['p50_ms']:6.2f} ms  p99 {r['p99_ms']:7.2f} ms"
        f"  server CPU {r['server_cpu_us_per_request']:4d} us/req ({r['server_cpu_pct']}% of a core"
        f"{of_which}, postgres {r['postgres_cpu_pct']}%)"
        f"  non-2xx {r['non2xx']}  errors {r['errors']}  load {r['loadavg']}",
        flush=True,
    )
    return r


def bodies_for(tmp: Path, name: str, rate: float, args: argparse.Namespace) -> Path:
    """Distinct signed settlements for a warm-up and a run at up to ``rate`` req/s."""
    path = tmp / f"{name}.txt"
    bi.make_bodies(path.with_suffix(".warm"), math.ceil(rate * args.warmup * 1.3) + 500)
    bi.make_bodies(path, math.ceil(rate * args.duration * 1.3) + 500)
    return path


async def drained(url: str, timeout: float) -> dict[str, Any]:
    """Seconds until every live projection and the audit index reach the log's head."""
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        head = await conn.fetchval("SELECT coalesce(max(notification_id), 0) FROM stored_events")
        t0 = time.perf_counter()
        deadline = t0 + timeout
        while True:
            lag = await conn.fetchval(
                "SELECT coalesce(max($1 - t.position), 0) FROM projection_tracking t"
                " JOIN projections p ON p.name = t.name AND p.live_generation = t.generation",
                head,
            )
            audit = await conn.fetchval("SELECT position FROM audit_index_tracking")
            if (lag or 0) <= 0 and (audit or 0) >= head:
                return {"head": head, "seconds": round(time.perf_counter() - t0, 2)}
            if time.perf_counter() > deadline:
                return {"head": head, "seconds": None, "projection_lag": lag, "audit": audit}
            await asyncio.sleep(0.1)
    finally:
        await conn.close()


def main(args: argparse.Namespace) -> dict[str, Any]:
    from ledger.database import start_embedded, with_database

    tmp = Path(tempfile.mkdtemp(prefix="ledger-bench-serve-all-"))
    server_url = os.environ.get("LEDGER_DATABASE_URL") or start_embedded(
        tmp / "pg", cleanup="delete"
    )
    suffix = uuid.uuid4().hex[:6]
    app_db, serve_db = f"bench_app_{suffix}", f"bench_serve_{suffix}"
    pg = asyncio.run(bi.create_databases(server_url, [app_db, serve_db]))
    PG_DATA.append(pg["data_directory"])
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")} | bi.SECRETS
    py, me = sys.executable, str(Path(__file__).resolve())
    out: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpus": os.cpu_count(),
        "load_generator": "wrk -t1" if shutil.which("wrk") else "python asyncio",
        "connections": args.connections,
        "duration_s": args.duration,
        "postgres": {k: v for k, v in pg.items() if k != "data_directory"},
        "loadavg_start": loadavg(),
    }
    print(f"serve_all {out['when']}  cpus={out['cpus']}  {out['load_generator']}"
          f" -c{args.connections} -d{args.duration:g}s  postgres {pg['version']}"
          f" synchronous_commit={pg['synchronous_commit']}  load {out['loadavg_start']}",
          flush=True)  # fmt: skip
    try:
        noop_bodies = tmp / "noop.txt"
        bi.make_bodies(noop_bodies, 20_000)
        shutil.copy(noop_bodies, noop_bodies.with_suffix(".warm"))

        def bare(label: str) -> dict[str, Any]:
            port = bi.free_port()
            with Server("bare", [py, me, "bare", str(port)], base_env, tmp) as s:
                return measure(s, "/noop", noop_bodies, args, label)

        out["bare_1"] = bare("bare no-op")
        ceiling = out["bare_1"]["rps"]

        port = bi.free_port()
        app_env = base_env | {
            "LEDGER_HOME": str(tmp / "home-app"),
            "LEDGER_RUN_PROJECTIONS": "false",
            "LEDGER_RUN_OUTBOX": "false",
        }
        cmd = [py, me, "app", str(port), with_database(server_url, app_db)]
        with Server("app", cmd, app_env, tmp) as s:
            out["app_noop"] = measure(s, "/noop", noop_bodies, args, "in-app no-op")
            files = bodies_for(tmp, "ingest", out["app_noop"]["rps"], args)
            out["ingest"] = measure(s, "/webhooks/midtrans", files, args, "ingest alone")

        serve_url = with_database(server_url, serve_db)
        serve_env = base_env | {
            "LEDGER_HOME": str(tmp / "home-serve"),
            "LEDGER_DATABASE_URL": serve_url,
        }
        out["serve_runs"] = []
        for i, workers in enumerate(args.workers):
            port = bi.free_port()
            cmd = [py, "-m", "ledger", "serve", "--port", str(port)]
            label = "ledger serve"
            if workers:
                cmd += ["--workers", str(workers)]
                label += f" -w{workers}"
            if args.background:
                cmd += ["--background", args.background]
                label += f" --background {args.background}"
            files = bodies_for(tmp, f"serve{i}", out["app_noop"]["rps"] * max(1, workers), args)
            with Server(f"serve{i}", cmd, serve_env, tmp) as s:
                run = measure(s, "/webhooks/midtrans", files, args, label)
                run["label"], run["workers"] = label, workers
                run["drain"] = asyncio.run(drained(serve_url, 120))
            out["serve_runs"].append(run)
        events, keys, commits = asyncio.run(bi.log_counts(serve_url))
        out["serve_log"] = {"events": events, "distinct_dedup_keys": keys, "commits": commits}

        out["bare_2"] = bare("bare no-op again")
        ceiling = (ceiling + out["bare_2"]["rps"]) / 2
        out["ceiling_rps"] = ceiling
    finally:
        with contextlib.suppress(Exception):
            asyncio.run(bi.drop_databases(server_url, [app_db, serve_db]))
        shutil.rmtree(tmp / "home-app", ignore_errors=True)
    out["loadavg_end"] = loadavg()
    return out


def report(r: dict[str, Any]) -> None:
    ceiling, app_noop, ing = r["ceiling_rps"], r["app_noop"], r["ingest"]
    print(f"ratios (one run; load average {r['loadavg_start']} -> {r['loadavg_end']}):")
    print(f"  in-app no-op / bare no-op   {app_noop['rps'] / ceiling:5.2f}x")
    print(f"  ingest alone / in-app no-op {ing['rps'] / app_noop['rps']:5.2f}x  (target >= 0.6x)")
    for srv in r["serve_runs"]:
        name = f"{srv['label']} / bare no-op"
        print(f"  {name:27} {srv['rps'] / ceiling:5.2f}x  (target >= 0.35x),"
              f" p99 {srv['p99_ms']:.2f} ms (target <= 25 ms)")  # fmt: skip
        d = srv["drain"]
        print(f"    after the load: projections and audit index at the head ({d['head']}) in"
              f" {d['seconds']} s")  # fmt: skip
    print(f"  log of the serve runs: {r['serve_log']} (events = distinct keys: no duplicates)")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "bare":
        serve_bare(int(sys.argv[2]))
    elif len(sys.argv) > 1 and sys.argv[1] == "app":
        serve_app(int(sys.argv[2]), sys.argv[3])
    else:
        parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
        parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
        parser.add_argument("--warmup", type=float, default=3.0, help="seconds before each")
        parser.add_argument("--connections", type=int, default=64)
        parser.add_argument("--workers", type=int, nargs="+", default=[0],
                            help="one serve run per value: --workers N (0: the default)")  # fmt: skip
        parser.add_argument("--background", choices=["auto", "process", "inline"],
                            help="serve --background (default: serve's own default)")  # fmt: skip
        parser.add_argument("--profile", type=Path, help="py-spy raw profiles into this folder")
        parser.add_argument("--json", type=Path, help="append the raw result as one JSON line")
        ns = parser.parse_args()
        result = main(ns)
        report(result)
        if ns.json:
            with ns.json.open("a") as fh:
                fh.write(json.dumps(result) + "\n")
