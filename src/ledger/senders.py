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
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Literal
from urllib.parse import unquote, urlsplit

import aiosmtplib
import httpx
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


class HttpSender:
    """POSTs stored bytes as they are; signs them when a secret is given (partner sync)."""

    def __init__(self, client: httpx.AsyncClient, *, secret: str | None = None) -> None:
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
            r = await self.client.post(
                target, content=body, headers=self.headers(message_id, body, attempt)
            )
        except httpx.TimeoutException as exc:
            return Result("retry", None, _ms(started), f"timeout: {type(exc).__name__}")
        except httpx.TransportError as exc:
            return Result("retry", None, _ms(started), f"connection: {type(exc).__name__}")
        return classify_http(r.status_code, r.text, r.headers.get("retry-after"), _ms(started))


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
