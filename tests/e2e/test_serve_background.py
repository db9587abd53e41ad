"""``ledger serve`` with its background components in their own process (ADR 0030), through
the real command.

- A webhook acknowledged by the HTTP process is folded by the background process (the
  projections' advisory locks are held by its sessions, not by serve's).
- SIGKILL of the background process: serve starts it again and projections continue; a
  rebuild through the API is taken up by it.
- SIGTERM: serve stops it, then the embedded PostgreSQL; nothing is left running.
- ``--workers 2``: one background process in total; SIGKILL of serve's whole group leaves
  no orphan (the background process sees its pipe close and stops).

Every wait is on a condition (an answer, a log line, a process gone), never on time.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.support import SECRETS, bearer, serving, signed, until
from tests.support.db import fetch, make_key
from tests.support.servers import free_port
from tests.support.serving import serve_env

STARTED = re.compile(rb"background process (\d+) started")


@dataclass
class Serve(serving.Serve):
    """``python -m ledger serve --background process`` (tests.support.serving)."""

    def __post_init__(self) -> None:
        self.args = ("--background", "process", *self.args)

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def background_pids(self) -> list[int]:
        """Every background process serve logged as started, in order."""
        try:
            return [int(m) for m in STARTED.findall(self.log.read_bytes())]
        except OSError:
            return []

    def close(self) -> None:
        super().close()
        for pid in self.background_pids():  # after a failure: never leave one behind
            if running(pid):
                os.kill(pid, signal.SIGKILL)


def running(pid: int) -> bool:
    """Alive and not a zombie (a background process is serve's child, not ours)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def postmaster_pid(pgdata: Path) -> int:
    return int((pgdata / "postmaster.pid").read_text().split()[0])


@pytest.fixture
def home() -> Iterator[Path]:
    """A LEDGER_HOME outside pytest's tmp_path (see test_lifecycle's ``home``)."""
    with tempfile.TemporaryDirectory(prefix="ledger-bg-", ignore_cleanup_errors=True) as d:
        yield Path(d) / "home"


def cli(home: Path, *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "ledger", *args],
        env=serve_env(home),
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr.decode(errors="replace")
    return out.stdout.decode().strip()


async def paid_and_folded(http: httpx.AsyncClient, key: str, order_id: str) -> None:
    """A settlement for ``order_id`` is acknowledged, then the orders projection shows it."""
    d = signed("midtrans", "settlement", order_id=order_id)
    r = await http.post(d.path, content=d.body, headers=d.headers)
    assert r.status_code == 200, r.text
    position = r.json()["position"]

    async def folded() -> bool:
        got = await http.get(
            f"/v1/orders/midtrans/{order_id}?min_position={position}", headers=bearer(key)
        )
        return got.status_code == 200 and got.json()["status"] == "paid"

    await until(folded, timeout=120, what=f"order {order_id} folded")


async def lock_holders(url: str) -> set[str]:
    """The application names of the sessions holding advisory locks (projection lanes)."""
    rows = await fetch(
        url,
        "SELECT DISTINCT a.application_name FROM pg_locks l "
        "JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory'",
    )
    return {r["application_name"] for r in rows}


@pytest.mark.slow
async def test_background_process_folds_restarts_rebuilds_and_stops_with_serve(
    home: Path,
) -> None:
    pgdata = home / "pgdata"
    server = Serve(home)
    try:
        await server.start()
        assert server.proc is not None
        assert "background components: in their own process (--background process)" in (
            server.log_text()
        )
        [first] = await until(server.background_pids, what="the background process")
        admin = cli(home, "keys", "create", "--name", "ops", "--scope", "ops:admin",
                    "--scope", "audit:read", "--reason", "background test")  # fmt: skip
        async with httpx.AsyncClient(base_url=server.url, timeout=30.0) as http:
            await paid_and_folded(http, admin, "INV-BG-1")

            # SIGKILL: serve logs it, starts another, and the projections continue.
            os.kill(first, signal.SIGKILL)
            pids = await until(
                lambda: (p := server.background_pids()) and len(p) == 2 and p,
                what="a second background process",
            )
            assert "was killed by signal 9" in server.log_text()
            assert server.proc.poll() is None
            await paid_and_folded(http, admin, "INV-BG-2")

            # A rebuild through the API: the HTTP process runs no runner; the background
            # process takes the new generation up (NOTIFY) and switches it live.
            r = await http.post(
                "/v1/projections/orders/rebuild",
                headers={**bearer(admin), "x-ledger-reason": "background test"},
            )
            assert r.status_code == 202, r.text
            generation = r.json()["generation"]

            async def switched() -> bool:
                got = (await http.get("/v1/projections/orders", headers=bearer(admin))).json()
                return bool(
                    got["live_generation"] == generation and got["building_generation"] is None
                )

            await until(switched, timeout=120, what="the rebuilt generation live")
            await paid_and_folded(http, admin, "INV-BG-3")

        pg_pid = postmaster_pid(pgdata)
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=120) == 0, server.log_text()[-4000:]
        assert not running(pids[-1]), "the background process outlived serve"
        assert not running(pg_pid), "the embedded PostgreSQL still runs"
        log = server.log_text()
        # The background process stopped before serve let the embedded server go.
        assert f"background process {pids[-1]} stopped" in log, log[-4000:]
    finally:
        server.close()
        try:
            pid = postmaster_pid(pgdata)
        except (OSError, ValueError, IndexError):
            pass
        else:
            if running(pid):
                os.kill(pid, signal.SIGINT)


@pytest.mark.slow
async def test_workers_share_one_background_process_and_a_killed_serve_leaves_no_orphan(
    database_url: str, tmp_path: Path
) -> None:
    # Partner sync to a closed loopback port: a paid Xendit order makes a delivery attempt
    # (failing), counted by the dispatcher in the background process.
    env = {
        "LEDGER_DATABASE_URL": database_url,
        "LEDGER_LOG_FORMAT": "json",
        "LEDGER_PARTNER_SYNC_URL": f"http://127.0.0.1:{free_port()}/sync",
    }
    server = Serve(tmp_path / "home", env=env, args=("--workers", "2"))
    try:
        await server.start()
        assert server.proc is not None
        [background] = await until(server.background_pids, what="the background process")
        key = await make_key(database_url, "audit:read", "ops:admin")
        async with httpx.AsyncClient(base_url=server.url, timeout=30.0) as http:
            for i in range(4):  # over both HTTP processes
                await paid_and_folded(http, key, f"INV-W-{i}")
            d = signed("xendit", "PAID")
            assert (await http.post(d.path, content=d.body, headers=d.headers)).status_code == 200

            # GET /metrics (either HTTP process) shows the background process's counters,
            # once: the HTTP processes' own idle copies are not there beside them.
            async def attempts_counted() -> str:
                r = await http.get("/metrics", headers=bearer(key))
                assert r.status_code == 200, r.text
                return r.text if 'ledger_outbox_attempts_total{kind="partner"' in r.text else ""

            text = await until(attempts_counted, timeout=120, what="outbox attempts in /metrics")
            assert text.count("# TYPE ledger_outbox_attempts_total counter") == 1, text
            assert text.count("# TYPE ledger_reconcile_passes_total counter") == 1, text
        # The lanes hold their generations' locks in the background process's sessions; an
        # HTTP process running a runner would hold some as "ledger-runner".
        holders = await lock_holders(database_url)
        assert f"ledger-background-{background}" in holders, holders
        assert "ledger-runner" not in holders, holders
        assert server.background_pids() == [background]  # one in total, never restarted
        argv = Path(f"/proc/{background}/cmdline").read_bytes()
        assert database_url.encode() not in argv, argv

        server.close()  # SIGKILL to serve's group: the background process is in its own
        await until(lambda: not running(background), timeout=120, what="no orphan")
    finally:
        server.close()
    # Every line, the background process's too, is JSON, with no secret: the database's
    # password never (serve's banner shows the URL with it masked; a password-less URL, as
    # against a local external server, is shown as it is).
    password = urlsplit(database_url).password
    loggers = set()
    for line in server.log_text().splitlines():
        loggers.add(json.loads(line).get("logger", ""))
        assert not password or password not in line, line
        assert not any(v in line for v in SECRETS.values()), line
    assert "ledger.serve.background" in loggers, loggers
