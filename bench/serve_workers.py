"""Ingest through ``ledger serve --workers N`` for N = 1 and 2, alternated, in one run.

Same load as ``bench/ingest.py`` (wrk, 64 connections, distinct pre-signed Midtrans
settlements, 2 s warm-up then 10 s), but the server is the real command in its own
process group, background components off. Prints requests/s and p50/p99 per run and the
2-worker/1-worker ratio. Stops by itself; only 127.0.0.1.

    python bench/serve_workers.py
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import signal
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
# Load bench/ingest.py by path (bench/ must not shadow the ``projections`` package).
_spec = importlib.util.spec_from_file_location("bench_ingest", HERE / "ingest.py")
assert _spec is not None
assert _spec.loader is not None
bi: Any = importlib.util.module_from_spec(_spec)
sys.modules["bench_ingest"] = bi
_spec.loader.exec_module(bi)


def one_run(server: str, tmp: Path, workers: int) -> dict[str, Any]:
    from ledger.database import with_database

    name = f"workers_{workers}_{uuid.uuid4().hex[:6]}"
    asyncio.run(bi.create_databases(server, [name]))
    port = bi.free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")} | bi.SECRETS
    env |= {
        "LEDGER_DATABASE_URL": with_database(server, name),
        "LEDGER_HOME": str(tmp / "home"),
        "LEDGER_RUN_PROJECTIONS": "false",
        "LEDGER_RUN_OUTBOX": "false",
    }
    cmd = [sys.executable, "-m", "ledger", "serve", "--port", str(port), "--workers", str(workers)]
    log = tmp / f"server-{workers}-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        bi.wait_ready(proc, f"http://127.0.0.1:{port}", log)
        bodies = tmp / f"bodies-{workers}-{port}.txt"
        bi.make_bodies(bodies, 40_000)
        url = f"http://127.0.0.1:{port}/webhooks/midtrans"
        bi.run_load(url, bodies, 2, 64, tmp)
        result: dict[str, Any] = bi.run_load(url, bodies, 10, 64, tmp)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    result["rps"] = result["requests"] / result["duration_s"]
    return result


def main() -> None:
    from ledger.database import start_embedded

    tmp = Path(tempfile.mkdtemp(prefix="ledger-bench-workers-"))
    server = os.environ.get("LEDGER_DATABASE_URL") or start_embedded(tmp / "pg", cleanup="delete")
    rates: dict[int, list[float]] = {1: [], 2: []}
    for workers in (1, 2, 1, 2):
        r = one_run(server, tmp, workers)
        rates[workers].append(r["rps"])
        print(
            f"ledger serve --workers {workers}: {r['rps']:7.0f} req/s  p50 {r['p50_ms']:.1f} ms"
            f"  p99 {r['p99_ms']:.1f} ms  non-2xx {r['non2xx']}  errors {r['errors']}",
            flush=True,
        )
    one, two = sum(rates[1]) / 2, sum(rates[2]) / 2
    print(f"mean: 1 worker {one:.0f} req/s, 2 workers {two:.0f} req/s, ratio {two / one:.2f}x")


if __name__ == "__main__":
    main()
