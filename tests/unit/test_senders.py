"""The outbound HTTP client behind partner sync and revalidation (ADR 0013), through
``HttpSender`` against real loopback servers: fixed-length, chunked, close-delimited,
truncated and oversized answers, TLS verification, timeouts, ``Retry-After``, idempotency
headers and connection reuse.

The loopback server writes its answers byte by byte on purpose: only a raw socket can send
a truncated or oddly framed answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ssl
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ledger.outbox.senders import EXCERPT, HttpClient, HttpSender, Result
from tests.support.servers import read_request

SECRET = "partner-sync-secret-for-tests"
BODY = b'{"event":"booking.paid","booking_id":"B-1","status":"LUNAS","paid_amount":32000}'


@dataclass
class Seen:
    head: str
    headers: dict[str, str]
    body: bytes


Answer = Callable[[Seen], Awaitable[bytes | None]]


@dataclass
class Loopback:
    """An HTTP/1.1 server on 127.0.0.1: reads each request (content-length bodies), records
    it, and writes what ``answer`` returns (None: say nothing and keep the connection)."""

    answer: Answer
    requests: list[Seen] = field(default_factory=list)
    connections: int = 0
    port: int = 0
    close_after_answer: bool = False

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                seen = Seen(*await read_request(reader))
                self.requests.append(seen)
                reply = await self.answer(seen)
                if reply is None:
                    await reader.read()  # hold the connection until the client gives up
                    return
                writer.write(reply)
                await writer.drain()
                if self.close_after_answer:
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def loopback(
    answer: Answer, *, tls: ssl.SSLContext | None = None, close_after_answer: bool = False
) -> AsyncIterator[Loopback]:
    srv = Loopback(answer, close_after_answer=close_after_answer)
    server = await asyncio.start_server(srv.handle, "127.0.0.1", 0, ssl=tls)
    srv.port = server.sockets[0].getsockname()[1]
    async with server:
        yield srv
        server.close()


def fixed(status: str, body: bytes, *extra: str) -> Answer:
    async def answer(_: Seen) -> bytes:
        head = [f"HTTP/1.1 {status}", f"content-length: {len(body)}", *extra]
        return ("\r\n".join(head) + "\r\n\r\n").encode() + body

    return answer


async def send(
    url: str,
    *,
    timeout: float = 30.0,
    secret: str | None = SECRET,
    message_id: uuid.UUID | None = None,
    attempt: int = 1,
    client: HttpClient | None = None,
    tls: ssl.SSLContext | None = None,
) -> Result:
    own = client is None
    http = client or HttpClient(timeout, ssl_context=tls)
    try:
        sender = HttpSender(http, secret=secret)
        return await sender.send(message_id or uuid.uuid4(), url, BODY, attempt)
    finally:
        if own:
            await http.aclose()


# -- framing ---------------------------------------------------------------------------------


async def test_fixed_length_answer_is_delivered_with_its_excerpt() -> None:
    async with loopback(fixed("200 OK", b'{"success": true,\n  "applied": 1}')) as srv:
        r = await send(f"http://127.0.0.1:{srv.port}/sync")
    assert (r.outcome, r.status) == ("delivered", 200)
    assert r.excerpt == '{"success": true, "applied": 1}'  # whitespace flattened
    assert srv.requests[0].head == "POST /sync HTTP/1.1"
    assert srv.requests[0].body == BODY


async def test_chunked_answer_is_reassembled() -> None:
    async def chunked(_: Seen) -> bytes:
        return (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
            b'7\r\n{"ok": \r\n'
            b"5;ext=1\r\ntrue}\r\n"
            b"0\r\nx-trailer: yes\r\n\r\n"
        )

    async with loopback(chunked) as srv:
        http = HttpClient(30.0)
        try:
            first = await send(f"http://127.0.0.1:{srv.port}/", client=http)
            second = await send(f"http://127.0.0.1:{srv.port}/", client=http)
        finally:
            await http.aclose()
    assert (first.outcome, first.excerpt) == ("delivered", '{"ok": true}')
    assert (second.outcome, second.excerpt) == ("delivered", '{"ok": true}')
    assert srv.connections == 1  # the chunked answer was read to its end: the connection is reused


async def test_close_delimited_answer_is_read_until_the_server_closes() -> None:
    async def until_close(_: Seen) -> bytes:
        return b"HTTP/1.1 202 Accepted\r\nconnection: close\r\n\r\nqueued for later"

    async with loopback(until_close, close_after_answer=True) as srv:
        r = await send(f"http://127.0.0.1:{srv.port}/")
    assert (r.outcome, r.status, r.excerpt) == ("delivered", 202, "queued for later")


async def test_interim_100_continue_is_skipped_for_the_final_answer() -> None:
    # Some servers and proxies send an unsolicited 100 Continue before the real answer.
    async def interim(_: Seen) -> bytes:
        return b"HTTP/1.1 100 Continue\r\n\r\n" + await fixed("200 OK", b"{}")(_)

    async with loopback(interim) as srv:
        r = await send(f"http://127.0.0.1:{srv.port}/")
    assert (r.outcome, r.status, r.excerpt) == ("delivered", 200, "{}")


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(
            b'HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{"success": tr', id="truncated"
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n40\r\nonly part",
            id="truncated-chunked",
        ),
        pytest.param(b"", id="nothing"),
    ],
)
async def test_an_answer_cut_off_by_the_close_is_retried_not_delivered(answer: bytes) -> None:
    async def cut_off(_: Seen) -> bytes:
        return answer

    async with loopback(cut_off, close_after_answer=True) as srv:
        r = await send(f"http://127.0.0.1:{srv.port}/")
    assert (r.outcome, r.status) == ("retry", None)
    assert r.excerpt.startswith("connection: ")


async def test_oversized_answer_is_capped_and_the_next_send_is_not_confused() -> None:
    big = b"A" * 300 + b"B" * (4 * 1024 * 1024)  # far beyond what the client reads

    async def answer(seen: Seen) -> bytes:
        if seen.headers["x-ledger-attempt"] == "1":
            return await fixed("200 OK", big)(seen)
        return await fixed("200 OK", b"small")(seen)

    async with loopback(answer) as srv:
        http = HttpClient(30.0)
        try:
            first = await send(f"http://127.0.0.1:{srv.port}/", client=http)
            second = await send(f"http://127.0.0.1:{srv.port}/", client=http, attempt=2)
        finally:
            await http.aclose()
    assert (first.outcome, first.excerpt) == ("delivered", "A" * EXCERPT)
    # The unread rest of the big answer must not be taken for the next answer.
    assert (second.outcome, second.excerpt) == ("delivered", "small")
    assert srv.connections == 2  # the connection with unread bytes was closed, not reused


# -- classification, headers, reuse ---------------------------------------------------------


async def test_signed_headers_carry_the_idempotency_key_on_every_attempt() -> None:
    mid = uuid.uuid4()
    async with loopback(fixed("200 OK", b"{}")) as srv:
        await send(f"http://127.0.0.1:{srv.port}/", message_id=mid, attempt=1)
        await send(f"http://127.0.0.1:{srv.port}/", message_id=mid, attempt=2)
    expected = hmac.new(SECRET.encode(), BODY, hashlib.sha256).hexdigest()
    for n, seen in enumerate(srv.requests, start=1):
        h = seen.headers
        assert h["idempotency-key"] == h["x-ledger-message-id"] == str(mid)
        assert h["x-ledger-attempt"] == str(n)
        assert h["x-pwa-signature"] == expected
        assert h["content-type"] == "application/json"
        assert h["host"] == f"127.0.0.1:{srv.port}"
        assert seen.body == BODY


async def test_unsigned_sender_sends_no_signature() -> None:
    async with loopback(fixed("204 No Content", b"")) as srv:
        r = await send(f"http://127.0.0.1:{srv.port}/", secret=None)
    assert (r.outcome, r.status) == ("delivered", 204)
    assert "x-pwa-signature" not in srv.requests[0].headers


async def test_keep_alive_connections_are_reused() -> None:
    async with loopback(fixed("200 OK", b"{}")) as srv:
        http = HttpClient(30.0)
        try:
            for _ in range(5):
                assert (await send(f"http://127.0.0.1:{srv.port}/", client=http)).outcome == (
                    "delivered"
                )
        finally:
            await http.aclose()
    assert len(srv.requests) == 5
    assert srv.connections == 1


@pytest.mark.parametrize(
    ("status", "extra", "retry_after"),
    [
        ("503 Service Unavailable", "retry-after: 7", 7.0),
        ("429 Too Many", "Retry-After: 120", 120.0),
    ],
)
async def test_retryable_answers_carry_retry_after(
    status: str, extra: str, retry_after: float
) -> None:
    async with loopback(fixed(status, b'{"error": "busy"}', extra)) as srv:
        r = await send(f"http://127.0.0.1:{srv.port}/")
    assert (r.outcome, r.status, r.retry_after) == ("retry", int(status[:3]), retry_after)
    assert r.excerpt == '{"error": "busy"}'


async def test_permanent_answer_is_dead_with_status_and_excerpt() -> None:
    async with loopback(fixed("401 Unauthorized", b'{"error":"Invalid webhook signature"}')) as srv:
        r = await send(f"http://127.0.0.1:{srv.port}/")
    assert (r.outcome, r.status) == ("dead", 401)
    assert r.excerpt == 'HTTP 401: {"error":"Invalid webhook signature"}'


async def test_redirects_are_answers_not_followed() -> None:
    async with loopback(fixed("301 Moved", b"", "location: /elsewhere")) as srv:
        r = await send(f"http://127.0.0.1:{srv.port}/")
    assert (r.outcome, r.status) == ("dead", 301)
    assert len(srv.requests) == 1


async def test_no_answer_in_time_is_a_retry() -> None:
    async def never(_: Seen) -> None:
        return None

    async with loopback(never) as srv:
        r = await send(f"http://127.0.0.1:{srv.port}/", timeout=0.5)
    assert (r.outcome, r.status, r.excerpt) == ("retry", None, "timeout: no answer in time")


async def test_refused_connection_is_a_retry() -> None:
    async with loopback(fixed("200 OK", b"")) as srv:
        port = srv.port
    r = await send(f"http://127.0.0.1:{port}/")  # nobody listens there any more
    assert (r.outcome, r.status) == ("retry", None)
    assert r.excerpt.startswith("connection: ")


async def test_unsupported_scheme_is_a_retry_naming_it() -> None:
    r = await send("ftp://127.0.0.1/sync")
    assert (r.outcome, r.status) == ("retry", None)
    assert r.excerpt.startswith("connection: ")


# -- TLS -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca: Path
    for_ip: ssl.SSLContext  # a server certificate for 127.0.0.1
    for_other_name: ssl.SSLContext  # one for partner.example only


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A private CA and server certificates it signed (openssl, as the e2e tests use)."""
    d = tmp_path_factory.mktemp("pki")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test CA",
        "-keyout", "ca.key", "-out", "ca.pem",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")  # fmt: skip

    def leaf(name: str, san: str) -> ssl.SSLContext:
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
            "-keyout", f"{name}.key", "-out", f"{name}.csr")  # fmt: skip
        (d / f"{name}.ext").write_text(
            f"subjectAltName={san}\nbasicConstraints=CA:FALSE\n"
            "keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
        )
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext",
            "-out", f"{name}.pem")  # fmt: skip
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(d / f"{name}.pem", d / f"{name}.key")
        return ctx

    return Pki(d / "ca.pem", leaf("ip", "IP:127.0.0.1"), leaf("other", "DNS:partner.example"))


async def test_tls_with_a_trusted_certificate_is_delivered(pki: Pki) -> None:
    trusted = ssl.create_default_context(cafile=str(pki.ca))
    async with loopback(fixed("200 OK", b'{"success":true}'), tls=pki.for_ip) as srv:
        r = await send(f"https://127.0.0.1:{srv.port}/", tls=trusted)
    assert (r.outcome, r.status, r.excerpt) == ("delivered", 200, '{"success":true}')
    assert srv.requests[0].headers["x-pwa-signature"]


async def test_tls_verification_is_on_by_default(pki: Pki) -> None:
    # The client's own context (the system trust store) does not know the private CA, so
    # the server is not trusted and nothing is sent: a retry, never a delivery.
    async with loopback(fixed("200 OK", b"{}"), tls=pki.for_ip) as srv:
        r = await send(f"https://127.0.0.1:{srv.port}/")
    assert (r.outcome, r.status) == ("retry", None)
    assert "cert" in r.excerpt.lower()
    assert srv.requests == []


async def test_tls_checks_the_host_name(pki: Pki) -> None:
    # A CA we trust, but a certificate for another name than the one we dial.
    trusted = ssl.create_default_context(cafile=str(pki.ca))
    async with loopback(fixed("200 OK", b"{}"), tls=pki.for_other_name) as srv:
        r = await send(f"https://127.0.0.1:{srv.port}/", tls=trusted)
    assert (r.outcome, r.status) == ("retry", None)
    assert "cert" in r.excerpt.lower()
    assert srv.requests == []
