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

import email.utils
import ssl
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Literal
from urllib.parse import unquote, urlsplit

import aiohttp
import aiosmtplib
import msgspec

from ledger.errors import LedgerError
from ledger.ingest.providers.base import hmac_sha256_hex

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


class HttpError(LedgerError):
    """No usable answer: connection refused or reset, TLS refused, malformed or cut answer."""


class HttpClient:
    """Outbox POSTs over aiohttp's ``ClientSession``: its C (llhttp) parser and its pool of
    keep-alive connections per origin (ADR 0013; it replaced a hand-written HTTP/1.1 client).

    Why aiohttp, not httpx/httpcore (used elsewhere): with hundreds of requests in flight
    httpcore's pool costs milliseconds of CPU per request; aiohttp's costs about 0.3 ms and
    holds the >= 1,000 deliveries/s of ADR 0007 on the 2-core target. Configured as the
    outbox needs it: TLS verified against the system trust store (or ``ssl_context``), no
    redirects (a 3xx is an answer like any other), no proxies from the environment, no
    cookies, no content decoding, one total timeout per attempt, and only the first
    ``MAX_BODY`` bytes of an answer read (a connection left with unread bytes is closed,
    never reused). The session is made on first use, inside the running event loop.
    """

    MAX_BODY = 64 * 1024  # what we read of an answer; only an excerpt is kept anyway

    def __init__(
        self,
        timeout: float,
        *,
        connections: int = 512,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.timeout = timeout
        self.connections = connections
        self._ssl = ssl_context
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.connections, ssl=self._ssl),
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,
                skip_auto_headers=("Accept-Encoding",),
                headers={"user-agent": "ledger-outbox"},
            )
        return self._session

    async def post(
        self, url: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, dict[str, str], bytes]:
        """Status, headers (lower-case names) and body; raises TimeoutError or HttpError."""
        try:
            async with self._open().post(
                url, data=body, headers=headers, allow_redirects=False
            ) as r:
                answer = b""
                while len(answer) < self.MAX_BODY:
                    chunk = await r.content.read(self.MAX_BODY - len(answer))
                    if not chunk:
                        break
                    answer += chunk
                return r.status, {k.lower(): v for k, v in r.headers.items()}, answer
        except TimeoutError:  # an OSError too: keep it apart, it is told apart in the excerpt
            raise
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            raise HttpError(type(exc).__name__) from exc

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


class HttpSender:
    """POSTs stored bytes as they are; signs them when a secret is given (partner sync)."""

    def __init__(self, client: HttpClient, *, secret: str | None = None) -> None:
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
