"""Outbound adapters for outbox messages: partner sync (HMAC), cache revalidation, email.

Each ``send`` makes exactly one attempt and classifies it as a ``Result``:

- ``delivered``: 2xx (HTTP) or the SMTP server accepted the message;
- ``retry``: 5xx, 408, 425, 429, timeouts, connection errors, SMTP 4xx; ``retry_after``
  carries the receiver's ``Retry-After`` when it gave one;
- ``dead``: any other answer (400, 401, 403, 404, 409, 422, 3xx, SMTP 5xx): retrying
  blindly cannot help, an operator must look.

Every attempt carries the message id as its idempotency id (``Idempotency-Key`` and
``X-Ledger-Message-Id`` headers; the email's ``Message-ID``), the same on every attempt, so
receivers can drop repeats of an at-least-once delivery. Excerpts are short and never
include what we sent (so never a signature or a secret).
"""

from __future__ import annotations

import asyncio
import email.utils
import ssl
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Literal
from urllib.parse import unquote, urlsplit

import aiosmtplib
import msgspec

from ledger.providers.base import hmac_sha256_hex

Outcome = Literal["delivered", "retry", "dead"]
RETRYABLE_STATUS = frozenset({408, 425, 429})
EXCERPT = 200


@dataclass(frozen=True, slots=True)
class Result:
    outcome: Outcome
    status: int | None
    latency_ms: int
    excerpt: str
    retry_after: float | None = None


class EmailPayload(msgspec.Struct, frozen=True):
    to: str
    subject: str
    text: str
    html: str
    sender: str = msgspec.field(name="from", default="ledger@localhost")


_email_decoder = msgspec.json.Decoder(EmailPayload)


def retry_after_seconds(value: str | None, *, cap: float = 86_400.0) -> float | None:
    """``Retry-After`` as seconds (delta-seconds or an HTTP date), capped; None if absent."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), cap)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, min((when - datetime.now(UTC)).total_seconds(), cap))


def _excerpt(text: str) -> str:
    flat = " ".join(text.split())
    return flat[:EXCERPT]


def classify_http(status: int, text: str, retry_after: str | None, ms: int) -> Result:
    if 200 <= status < 300:
        return Result("delivered", status, ms, _excerpt(text))
    if status >= 500 or status in RETRYABLE_STATUS:
        return Result("retry", status, ms, _excerpt(text), retry_after_seconds(retry_after))
    return Result("dead", status, ms, f"HTTP {status}: {_excerpt(text)}"[:EXCERPT])


class HttpError(Exception):
    """No usable answer: connection refused or reset, malformed response, or EOF."""


Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class HttpPool:
    """A small HTTP/1.1 client for outbox POSTs, with keep-alive connections per origin.

    Why not httpx (used elsewhere): under hundreds of concurrent requests its pool costs
    several CPU milliseconds per request, an order of magnitude more than the exchange
    itself; the dispatcher needs >= 1,000 deliveries/s on a small machine (ADR 0007). Scope:
    ``http``/``https`` (system trust store), fixed-length and chunked responses, no
    redirects (a 3xx is an answer like any other), no proxies.
    """

    MAX_BODY = 64 * 1024  # what we read of an answer; only an excerpt is kept anyway

    def __init__(
        self, timeout: float, *, max_idle: int = 512, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self.timeout = timeout
        self.max_idle = max_idle
        self._idle: dict[tuple[str, str, int], list[Conn]] = {}
        self._ssl = ssl_context  # None: the system trust store, verification on

    async def post(
        self, url: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, dict[str, str], bytes]:
        """Status, headers (lower-case names) and body; raises TimeoutError or HttpError."""
        u = urlsplit(url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise HttpError(f"unsupported URL scheme {u.scheme!r}")
        port = u.port or (443 if u.scheme == "https" else 80)
        origin = (u.scheme, u.hostname, port)
        path = (u.path or "/") + (f"?{u.query}" if u.query else "")
        head = [f"POST {path} HTTP/1.1", f"host: {u.netloc.rpartition('@')[2]}"]
        head += [f"{k}: {v}" for k, v in headers.items()]
        head += [f"content-length: {len(body)}", "user-agent: ledger-outbox", "", ""]
        request = "\r\n".join(head).encode("latin-1") + body
        conn: Conn | None = None
        try:
            async with asyncio.timeout(self.timeout):
                conn = self._take(origin) or await self._open(origin)
                conn[1].write(request)
                await conn[1].drain()
                status, rheaders, rbody, keep = await self._response(conn[0])
        except TimeoutError:  # an OSError too: keep it apart, it is told apart in the excerpt
            if conn:
                conn[1].close()
            raise
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
            if conn:
                conn[1].close()
            raise HttpError(type(exc).__name__) from exc
        except BaseException:
            if conn:
                conn[1].close()
            raise
        if keep and len(self._idle.get(origin, ())) < self.max_idle:
            self._idle.setdefault(origin, []).append(conn)
        else:
            conn[1].close()
        return status, rheaders, rbody

    def _take(self, origin: tuple[str, str, int]) -> Conn | None:
        idle = self._idle.get(origin)
        while idle:
            reader, writer = idle.pop()
            if not reader.at_eof() and not writer.is_closing():
                return reader, writer
            writer.close()  # the server closed it while idle
        return None

    async def _open(self, origin: tuple[str, str, int]) -> Conn:
        scheme, host, port = origin
        if scheme == "https" and self._ssl is None:
            self._ssl = ssl.create_default_context()
        tls = self._ssl if scheme == "https" else None
        return await asyncio.open_connection(host, port, ssl=tls, limit=256 * 1024)

    async def _response(
        self, reader: asyncio.StreamReader
    ) -> tuple[int, dict[str, str], bytes, bool]:
        line = await reader.readline()
        if not line:
            raise HttpError("connection closed before an answer")
        version, status_text = line.decode("latin-1").split(" ", 2)[:2]
        status = int(status_text)
        headers: dict[str, str] = {}
        for _ in range(200):
            raw = await reader.readline()
            if raw in (b"\r\n", b"\n", b""):
                break
            name, _, value = raw.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        keep = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
        if status in (204, 304) or 100 <= status < 200:
            return status, headers, b"", keep
        if "chunked" in headers.get("transfer-encoding", "").lower():
            parts: list[bytes] = []
            size = 0
            while True:
                n = int((await reader.readline()).split(b";")[0].strip(), 16)
                if n == 0:
                    while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    break
                chunk = await reader.readexactly(n + 2)
                size += n
                if size <= self.MAX_BODY:
                    parts.append(chunk[:-2])
            return status, headers, b"".join(parts), keep
        if "content-length" in headers:
            n = int(headers["content-length"])
            if n > self.MAX_BODY:
                return status, headers, await reader.readexactly(self.MAX_BODY), False
            return status, headers, await reader.readexactly(n), keep
        return status, headers, await reader.read(self.MAX_BODY), False  # until close

    async def aclose(self) -> None:
        for conns in self._idle.values():
            for _, writer in conns:
                writer.close()
        self._idle.clear()


class HttpSender:
    """POSTs stored bytes as they are; signs them when a secret is given (partner sync)."""

    def __init__(self, client: HttpPool, *, secret: str | None = None) -> None:
        self.client = client
        self._secret = secret

    def headers(self, message_id: uuid.UUID, body: bytes, attempt: int) -> dict[str, str]:
        h = {
            "content-type": "application/json",
            "idempotency-key": str(message_id),
            "x-ledger-message-id": str(message_id),
            "x-ledger-attempt": str(attempt),
        }
        if self._secret:
            h["x-pwa-signature"] = hmac_sha256_hex(self._secret, body)
        return h

    async def send(self, message_id: uuid.UUID, target: str, body: bytes, attempt: int) -> Result:
        started = time.perf_counter()
        try:
            status, headers, answer = await self.client.post(
                target, body, self.headers(message_id, body, attempt)
            )
        except TimeoutError:
            return Result("retry", None, _ms(started), "timeout: no answer in time")
        except HttpError as exc:
            return Result("retry", None, _ms(started), f"connection: {exc}")
        text = answer.decode("utf-8", "replace")
        return classify_http(status, text, headers.get("retry-after"), _ms(started))


def _ms(started: float) -> int:
    return int((time.perf_counter() - started) * 1000)


@dataclass(frozen=True)
class SmtpTarget:
    """``smtp://[user:pass@]host[:port]`` (plain or STARTTLS when offered) or ``smtps://``."""

    host: str
    port: int
    username: str | None
    password: str | None
    use_tls: bool

    @classmethod
    def parse(cls, url: str) -> SmtpTarget:
        u = urlsplit(url)
        if u.scheme not in ("smtp", "smtps") or not u.hostname:
            raise ValueError("LEDGER_SMTP_URL must look like smtp://host:port or smtps://...")
        tls = u.scheme == "smtps"
        return cls(
            host=u.hostname,
            port=u.port or (465 if tls else 25),
            username=unquote(u.username) if u.username else None,
            password=unquote(u.password) if u.password else None,
            use_tls=tls,
        )


def build_email(message_id: uuid.UUID, payload: bytes) -> EmailMessage:
    p = _email_decoder.decode(payload)
    msg = EmailMessage()
    msg["From"] = p.sender
    msg["To"] = p.to
    msg["Subject"] = p.subject
    msg["Message-ID"] = f"<{message_id}@ledger>"  # stable: receivers can drop repeats
    msg["Date"] = email.utils.formatdate(usegmt=True)
    msg.set_content(p.text)
    msg.add_alternative(p.html, subtype="html")
    return msg


class EmailSender:
    def __init__(self, smtp_url: str, *, timeout: float = 10.0) -> None:
        self.target = SmtpTarget.parse(smtp_url)
        self.timeout = timeout

    async def send(self, message_id: uuid.UUID, target: str, body: bytes, attempt: int) -> Result:
        del attempt
        started = time.perf_counter()
        msg = build_email(message_id, body)
        t = self.target
        try:
            _, reply = await aiosmtplib.send(
                msg,
                recipients=[target],
                hostname=t.host,
                port=t.port,
                username=t.username,
                password=t.password,
                use_tls=t.use_tls,
                start_tls=None if not t.use_tls else False,
                timeout=self.timeout,
            )
        except aiosmtplib.SMTPResponseException as exc:
            outcome: Outcome = "retry" if 400 <= exc.code < 500 else "dead"
            return Result(outcome, exc.code, _ms(started), _excerpt(f"SMTP {exc.code}"))
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [e.code for e in exc.recipients]
            temporary = all(400 <= c < 500 for c in codes)
            code = codes[0] if codes else None
            return Result(
                "retry" if temporary else "dead", code, _ms(started), f"recipient refused {codes}"
            )
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            return Result("retry", None, _ms(started), f"connection: {type(exc).__name__}")
        return Result("delivered", 250, _ms(started), _excerpt(reply))
