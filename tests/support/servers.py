"""Live servers for the tests: the app behind uvicorn on loopback, ``ledger serve`` as a
subprocess, loopback HTTP sinks (a partner that misbehaves on purpose)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from ledger.app import create_app
from tests.support.db import SECRETS, test_settings

LEDGER = str(Path(sys.executable).with_name("ledger"))  # the installed console script


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


# -- the app in this process, behind uvicorn -------------------------------------------------


@contextlib.asynccontextmanager
async def serve(
    database_url: str, *, graceful_shutdown: float | None = 2, **env: str
) -> AsyncIterator[str]:
    """The real app behind uvicorn on loopback; its base URL. Requests really run
    concurrently (litestar's in-process test client handles one request at a time)."""
    app = create_app(test_settings(**env), database_url=database_url)
    async with serve_app(app, graceful_shutdown=graceful_shutdown) as base:
        yield base


@contextlib.asynccontextmanager
async def serve_app(app: Any, *, graceful_shutdown: float | None = 2) -> AsyncIterator[str]:
    """``app`` (built by the caller, who may reach its ``state`` once started) behind
    uvicorn on loopback; its base URL."""
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",
        timeout_graceful_shutdown=graceful_shutdown,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        assert not task.done(), "the server did not start"
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@contextlib.asynccontextmanager
async def live_server(database_url: str, **overrides: str) -> AsyncIterator[httpx.AsyncClient]:
    """``serve`` with a client on its base URL."""
    async with serve(database_url, graceful_shutdown=None, **overrides) as base:
        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as http:
            yield http


# -- ``ledger serve`` as a subprocess ----------------------------------------------------------


def ledger_env(database_url: str, home: Path, **extra: str) -> dict[str, str]:
    """A clean environment for a ``ledger`` subprocess: the test database, known secrets."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
    env |= SECRETS
    env |= {
        "LEDGER_DATABASE_URL": database_url,
        "LEDGER_HOME": str(home),
        # Only ingest is under test: keep background workers from competing for 2 cores.
        "LEDGER_RUN_PROJECTIONS": "false",
        "LEDGER_RUN_OUTBOX": "false",
    }
    return env | extra


async def wait_ready(
    proc: subprocess.Popen[bytes],
    url: str,
    log_tail: Callable[[], str],
    *,
    timeout: float,
    who: str = "server",
    probe_timeout: float = 1.0,
) -> None:
    """Wait until ``url``/ready answers 200; fail with the log if ``proc`` exits first."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=probe_timeout) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"{who} exited early:\n{log_tail()}")
            try:
                if (await client.get(f"{url}/ready")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError(f"{who} not ready after {timeout}s:\n{log_tail()}")


@dataclass
class ServerProcess:
    """``ledger serve`` as a subprocess in its own process group; always killed by ``stop``."""

    database_url: str
    home: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    extra_args: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.home / "server.log"

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    async def start(self, timeout: float = 60.0) -> None:
        assert self.proc is None or self.proc.poll() is not None
        self.home.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    LEDGER,
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    *self.extra_args,
                ],
                env=ledger_env(self.database_url, self.home),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.starts += 1
        await wait_ready(self.proc, self.url, self.log_tail, timeout=timeout)

    def kill(self) -> None:
        """SIGKILL the whole process group: no shutdown code runs."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        self.kill()
        self.proc = None


# -- loopback HTTP sinks -------------------------------------------------------------------------


async def read_request(reader: asyncio.StreamReader) -> tuple[str, dict[str, str], bytes]:
    """One HTTP/1.1 request (a content-length body): its request line, headers (lower-case
    names) and body. Raises ``IncompleteReadError`` when the client goes away."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {
        k.strip().lower(): v.strip()
        for k, _, v in (line.partition(":") for line in lines[1:] if line)
    }
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return lines[0], headers, body


# -- a loopback partner for the outbox ---------------------------------------------------------

PARTNER_SYNC_SECRET = SECRETS["LEDGER_PARTNER_SYNC_SECRET"]


@dataclass
class Seen:
    """What the partner saw for one idempotency id."""

    bodies: list[bytes] = field(default_factory=list)
    times: list[float] = field(default_factory=list)  # monotonic, for gaps
    stamps: list[datetime] = field(default_factory=list)  # wall clock, to compare with leases
    applied: int = 0
    in_flight: int = 0
    max_in_flight: int = 0


class Partner:
    """A loopback partner: verifies x-pwa-signature like the openssl recipe, applies each
    idempotency id once, and follows a script of misbehaviours per booking id."""

    def __init__(self) -> None:
        self.scripts: dict[str, list[str]] = {}
        self.seen: dict[str, Seen] = defaultdict(Seen)
        self.bad_signatures = 0
        self.server: asyncio.Server | None = None
        self.url = ""

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/api/webhooks/pwa-sync"

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in list(self._writers):
            w.close()
        await self.server.wait_closed()

    _writers: set[asyncio.StreamWriter] = set()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                _, headers, body = await read_request(reader)
                if not await self._respond(headers, body, reader, writer):
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _respond(
        self,
        headers: dict[str, str],
        body: bytes,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bool:
        expected = hmac.new(PARTNER_SYNC_SECRET.encode(), body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(headers.get("x-pwa-signature", ""), expected):
            self.bad_signatures += 1
            await _send(writer, 401, {"error": "Invalid webhook signature"})
            return True
        idem = headers["idempotency-key"]
        seen = self.seen[idem]
        seen.bodies.append(body)
        seen.times.append(time.monotonic())
        seen.stamps.append(datetime.now(UTC))
        seen.in_flight += 1
        seen.max_in_flight = max(seen.max_in_flight, seen.in_flight)
        try:
            booking = json.loads(body)["booking_id"]
            script = self.scripts.get(booking, [])
            step = script[len(seen.bodies) - 1] if len(seen.bodies) <= len(script) else "ok"
            if step == "hang":  # until the client gives up and closes (or 3 s)
                with contextlib.suppress(TimeoutError, ConnectionError):
                    await asyncio.wait_for(reader.read(1), 3)
                return False
            if step == "reset":
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
                return False
            if step == "chunked":  # a chunked 200, then the connection is reused
                seen.applied += 1
                writer.write(
                    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                    b'7\r\n{"succe\r\n9\r\nss": true\r\n1\r\n}\r\n0\r\n\r\n'
                )
                await writer.drain()
                return True
            if step in ("ok", "lost"):
                if seen.applied == 0:
                    seen.applied = 1  # a repeat of an applied id is acknowledged, not re-applied
                if step == "lost":
                    writer.transport.abort()
                    return False
                await _send(writer, 200, {"success": True, "booking_id": booking})
                return True
            if step == "503":
                await _send(writer, 503, {"error": "busy"}, {"retry-after": "1"})
                return True
            await _send(writer, int(step), {"error": f"scripted {step}"})
            return True
        finally:
            seen.in_flight -= 1


async def _send(
    writer: asyncio.StreamWriter, status: int, obj: object, extra: dict[str, str] | None = None
) -> None:
    data = json.dumps(obj).encode()
    head = (
        f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {len(data)}\r\n"
    )
    for k, v in (extra or {}).items():
        head += f"{k}: {v}\r\n"
    writer.write(head.encode() + b"\r\n" + data)
    await writer.drain()
