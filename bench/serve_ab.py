"""CPU per acknowledged webhook of ``ledger serve`` (everything on), two code trees A/B.

    python bench/serve_ab.py --a /tmp/before/src --b src [--rounds 3] [--duration 10]
                             [--profile DIR]   # py-spy record of each B run (speedscope)

Alternates A and B (``A B A B ...``): each run starts ``python -m ledger serve`` with
``PYTHONPATH`` set to that tree on a fresh database of one embedded PostgreSQL, warms up,
waits until the projections and the audit index are at the head, then loads it with
``wrk -t1 -cN`` (distinct signed Midtrans settlements, as ``bench/serve_all.py``) and waits
for the head again. CPU = the server's process tree + every PostgreSQL process, from the
start of the load to the drain, divided by the webhooks acknowledged: background lanes'
work for those webhooks is counted even when it ran after the load. Medians per tree.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if Path(sys.path[0] or ".").resolve() == HERE:
    del sys.path[0]
_spec = importlib.util.spec_from_file_location("bench_serve_all", HERE / "serve_all.py")
assert _spec is not None
assert _spec.loader is not None
sa: Any = importlib.util.module_from_spec(_spec)
sys.modules["bench_serve_all"] = sa
_spec.loader.exec_module(sa)
bi = sa.bi


def one_run(
    tree: str, label: str, server_url: str, tmp: Path, args: argparse.Namespace, n: int
) -> dict[str, Any]:
    db = f"bench_ab_{uuid.uuid4().hex[:8]}"
    asyncio.run(bi.create_databases(server_url, [db]))
    url = bi.with_db(server_url, db)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")} | bi.SECRETS
    env |= {
        "LEDGER_HOME": str(tmp / f"home-{label}-{n}"),
        "LEDGER_DATABASE_URL": url,
        "PYTHONPATH": str(Path(tree).resolve()),
    }
    port = bi.free_port()
    cmd = [sys.executable, "-m", "ledger", "serve", "--port", str(port)]
    bodies = tmp / f"{label}{n}.txt"
    bi.make_bodies(bodies.with_suffix(".warm"), 4000)
    bi.make_bodies(bodies, int(args.rate * args.duration) + 500)
    try:
        with sa.Server(f"{label}{n}", cmd, env, tmp) as s:
            target = s.base + "/webhooks/midtrans"
            bi.run_load(target, bodies.with_suffix(".warm"), args.warmup, args.connections, tmp)
            asyncio.run(sa.drained(url, 120))
            spy = None
            if args.profile and label == "B":
                args.profile.mkdir(parents=True, exist_ok=True)
                spy_cmd = ["py-spy", "record", "--pid", str(s.proc.pid), "--rate", "250",
                           "--duration", str(round(args.duration)), "--format", "speedscope",
                           "-o", str(args.profile / f"B{n}.json"), "--nonblocking"]  # fmt: skip
                spy = subprocess.Popen(
                    spy_cmd,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            pg = bi.postgres_pids(sa.PG_DATA[0])
            srv0, pg0 = bi.cpu_seconds(s.pids()), bi.cpu_seconds(pg)
            t0 = time.perf_counter()
            r: dict[str, Any] = bi.run_load(target, bodies, args.duration, args.connections, tmp)
            wall = time.perf_counter() - t0
            srv_load = bi.cpu_seconds(s.pids()) - srv0
            drain = asyncio.run(sa.drained(url, 120))
            srv = bi.cpu_seconds(s.pids()) - srv0
            pgc = bi.cpu_seconds(bi.postgres_pids(sa.PG_DATA[0])) - pg0
            if spy is not None:
                spy.wait(timeout=60)
    finally:
        asyncio.run(bi.drop_databases(server_url, [db]))
    ok = r["requests"] - r["non2xx"]
    out = {
        "tree": label,
        "rps": ok / r["duration_s"],
        "p50_ms": r["p50_ms"],
        "p99_ms": r["p99_ms"],
        "non2xx": r["non2xx"],
        "errors": r["errors"],
        "server_us": 1e6 * srv / ok,
        "server_load_us": 1e6 * srv_load / ok,
        "postgres_us": 1e6 * pgc / ok,
        "total_us": 1e6 * (srv + pgc) / ok,
        "server_pct": 100 * srv_load / wall,
        "drain_s": drain["seconds"],
        "load": sa.loadavg(),
    }
    print(
        f"{label} #{n}: {out['rps']:6.0f} req/s p50 {out['p50_ms']:6.1f} p99 {out['p99_ms']:6.1f} ms"
        f"  CPU/webhook server {out['server_us']:4.0f} us (during load {out['server_load_us']:4.0f})"
        f" + postgres {out['postgres_us']:4.0f} = {out['total_us']:4.0f} us"
        f"  server {out['server_pct']:.0f}% of a core  drain {out['drain_s']} s"
        f"  non-2xx {out['non2xx']} err {out['errors']}  load {out['load']}",
        flush=True,
    )
    return out


def main(args: argparse.Namespace) -> None:
    from ledger.database import start_embedded

    tmp = Path(tempfile.mkdtemp(prefix="ledger-bench-serve-ab-"))
    server_url = os.environ.get("LEDGER_DATABASE_URL") or start_embedded(
        tmp / "pg", cleanup="delete"
    )
    pg = asyncio.run(bi.create_databases(server_url, []))
    sa.PG_DATA.append(pg["data_directory"])
    print(f"serve_ab {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} A={args.a} B={args.b}"
          f" wrk -c{args.connections} -d{args.duration:g}s load {sa.loadavg()}", flush=True)  # fmt: skip
    runs: list[dict[str, Any]] = []
    for n in range(args.rounds):
        order = [("A", args.a), ("B", args.b)] if n % 2 == 0 else [("B", args.b), ("A", args.a)]
        for label, tree in order:
            runs.append(one_run(tree, label, server_url, tmp, args, n))
    for label in ("A", "B"):
        mine = [r for r in runs if r["tree"] == label]
        med = {k: statistics.median(r[k] for r in mine)
               for k in ("rps", "p99_ms", "server_us", "postgres_us", "total_us")}  # fmt: skip
        print(f"median {label}: {med['rps']:.0f} req/s, p99 {med['p99_ms']:.1f} ms, CPU per"
              f" webhook server {med['server_us']:.0f} + postgres {med['postgres_us']:.0f}"
              f" = {med['total_us']:.0f} us", flush=True)  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--a", required=True, help="src tree A (PYTHONPATH)")
    parser.add_argument("--b", required=True, help="src tree B (PYTHONPATH)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--rate", type=float, default=4000, help="bodies per second to make")
    parser.add_argument("--profile", type=Path, help="py-spy speedscope profiles of B runs")
    main(parser.parse_args())
