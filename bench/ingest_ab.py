"""Ingest alone (and the in-app no-op), two code trees A/B, alternated.

    python bench/ingest_ab.py --a /tmp/before/src:/tmp/before --b src:. [--rounds 3]
                              [--duration 8] [--noop] [--profile DIR]

Each run starts ``bench/serve_all.py``'s ``app`` server (ledger's app, logging and protocol
as ``ledger serve``, background components off) with ``PYTHONPATH`` on tree A or B and a
fresh database of one embedded PostgreSQL, then measures as ``serve_all.py`` does: with
``--noop`` first ``POST /noop``, then ``POST /webhooks/midtrans`` (distinct signed
settlements), ``wrk -t1 -cN`` after a warm-up. A tree may carry environment variables for
its server: ``--b 'src:.@NAME=value@NAME2=value'``. Medians per tree.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import math
import os
import shutil
import statistics
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
    spec: str, label: str, server_url: str, tmp: Path, args: argparse.Namespace, n: int
) -> dict[str, Any]:
    tree, *assignments = spec.split("@")
    db = f"bench_iab_{uuid.uuid4().hex[:8]}"
    asyncio.run(bi.create_databases(server_url, [db]))
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")} | bi.SECRETS
    env |= {
        "LEDGER_HOME": str(tmp / f"home-{label}{n}"),
        "LEDGER_RUN_PROJECTIONS": "false",
        "LEDGER_RUN_OUTBOX": "false",
        "PYTHONPATH": ":".join(str(Path(p).resolve()) for p in tree.split(":")),
    }
    env |= dict(a.split("=", 1) for a in assignments)
    port = bi.free_port()
    cmd = [sys.executable, str(HERE / "serve_all.py"), "app", str(port), bi.with_db(server_url, db)]
    out: dict[str, Any] = {"tree": label}
    try:
        with sa.Server(f"{label}{n}", cmd, env, tmp) as s:
            if args.noop:
                out["noop"] = sa.measure(s, "/noop", tmp / "noop.txt", args, f"{label}#{n} no-op")
            bodies = tmp / f"ingest{label}{n}.txt"
            bi.make_bodies(bodies.with_suffix(".warm"), math.ceil(args.rate * args.warmup) + 500)
            bi.make_bodies(bodies, math.ceil(args.rate * args.duration) + 500)
            out["ingest"] = sa.measure(s, "/webhooks/midtrans", bodies, args, f"{label}#{n} ingest")
    finally:
        asyncio.run(bi.drop_databases(server_url, [db]))
    return out


def main(args: argparse.Namespace) -> None:
    from ledger.database import start_embedded

    tmp = Path(tempfile.mkdtemp(prefix="ledger-bench-ingest-ab-"))
    server_url = os.environ.get("LEDGER_DATABASE_URL") or start_embedded(
        tmp / "pg", cleanup="delete"
    )
    pg = asyncio.run(bi.create_databases(server_url, []))
    sa.PG_DATA.append(pg["data_directory"])
    bi.make_bodies(tmp / "noop.txt", 20_000)
    shutil.copy(tmp / "noop.txt", tmp / "noop.warm")
    print(f"ingest_ab {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} A={args.a} B={args.b}"
          f" wrk -c{args.connections} -d{args.duration:g}s load {sa.loadavg()}", flush=True)  # fmt: skip
    runs: list[dict[str, Any]] = []
    for n in range(args.rounds):
        order = [("A", args.a), ("B", args.b)] if n % 2 == 0 else [("B", args.b), ("A", args.a)]
        for label, spec in order:
            runs.append(one_run(spec, label, server_url, tmp, args, n))
    for label in ("A", "B"):
        mine = [r for r in runs if r["tree"] == label]

        def med(key: str, what: str = "ingest", mine: list[dict[str, Any]] = mine) -> float:
            return statistics.median(r[what][key] for r in mine)

        line = (f"median {label}: ingest {med('rps'):.0f} req/s,"
                f" {med('server_cpu_us_per_request'):.0f} us/req, p50 {med('p50_ms'):.2f}"
                f" p99 {med('p99_ms'):.2f} ms")  # fmt: skip
        if args.noop:
            ratio = statistics.median(r["ingest"]["rps"] / r["noop"]["rps"] for r in mine)
            line += (f"; no-op {med('rps', 'noop'):.0f} req/s,"
                     f" {med('server_cpu_us_per_request', 'noop'):.0f} us/req,"
                     f" p99 {med('p99_ms', 'noop'):.2f} ms; ingest/no-op {ratio:.2f}x")  # fmt: skip
        print(line, flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--a", required=True, help="tree A: PYTHONPATH[@NAME=value...]")
    parser.add_argument("--b", required=True, help="tree B: PYTHONPATH[@NAME=value...]")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--rate", type=float, default=8000, help="bodies per second to make")
    parser.add_argument("--noop", action="store_true", help="measure the in-app no-op first")
    parser.add_argument("--profile", type=Path, help="py-spy raw profiles into this folder")
    main(parser.parse_args())
