"""HTTP clients of the providers' status APIs (aiohttp, like ``ledger.outbox.senders``).

Each ``fetch`` returns the provider's answer as raw bytes with its HTTP status, whatever it
says (401, a Midtrans body "404"): the caller records every answer. What is no answer (a
timeout, a refused connection, 429 or 5xx) is retried with exponential backoff, waiting
``Retry-After`` when the provider gives one; when every attempt failed, ``ProviderUnavailable``
says "try later". One ``RateLimit`` per provider spaces the requests of this process.
Credentials go in the ``Authorization`` header only, never in a message or a log line.
"""

from __future__ import annotations

import asyncio
import base64
import re
import time
from dataclasses import dataclass
from urllib.parse import quote

import aiohttp

from ledger.config import Settings
from ledger.errors import LedgerError
from ledger.ingest.providers.base import secret_list
from ledger.ingest.providers.midtrans import ORDER_ID_PATTERN
from ledger.outbox.senders import retry_after_seconds

PROVIDERS = ("midtrans", "xendit")
BACKOFF = 0.5  # seconds before the second attempt; doubles after each
MAX_WAIT = 60.0  # the longest Retry-After we honour before giving up for now
_XENDIT_ID = re.compile(r"^[\x21-\x7e]{1,255}\Z")  # printable ASCII, as Identifier bounds it


class ReconcileError(LedgerError):
    """Reconciliation with a provider failed."""


class ProviderUnavailable(ReconcileError):
    """The provider's status API gave no answer now (timeout, connection, 429/5xx after
    every retry); nothing was decided: try later."""


class NotConfigured(ReconcileError):
    """The provider's status API has no credentials in this configuration."""


class InvalidOrderId(ReconcileError, ValueError):
    """The order id cannot be one of this provider's orders."""


@dataclass(frozen=True, slots=True)
class Answer:
    provider: str
    order_id: str
    http_status: int
    body: bytes


class RateLimit:
    """At most ``rate`` requests per second: each waits for its slot (a process-local
    spacing; the providers' own limits are per account, 429 covers the rest)."""

    def __init__(self, rate: float) -> None:
        self._interval = 1.0 / rate
        self._next = 0.0
        self._lock = asyncio.Lock()

    async def wait(self) -> None:
        async with self._lock:
            now = time.monotonic()
            delay = self._next - now
            self._next = max(now, self._next) + self._interval
        if delay > 0:
            await asyncio.sleep(delay)


def basic_auth(user: str) -> dict[str, str]:
    """HTTP Basic with the API key as user and an empty password (both providers)."""
    token = base64.b64encode(f"{user}:".encode()).decode()
    return {"Authorization": f"Basic {token}", "Accept": "application/json"}


class StatusClient:
    """Asks Midtrans and Xendit about one order at a time; ``async with`` owns the session."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._limits = {p: RateLimit(settings.reconcile_rate) for p in PROVIDERS}
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> StatusClient:
        timeout = aiohttp.ClientTimeout(total=self._settings.reconcile_timeout)
        self._session = aiohttp.ClientSession(timeout=timeout)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    def request_for(self, provider: str, order_id: str) -> tuple[str, dict[str, str]]:
        """The URL and headers of the request about ``order_id``; raises ``NotConfigured``
        or ``InvalidOrderId`` before anything is sent."""
        s = self._settings
        if provider == "midtrans":
            if not re.match(ORDER_ID_PATTERN, order_id):
                raise InvalidOrderId("a Midtrans order id is 1-50 letters, digits, -, _, ~ or .")
            keys = secret_list(s.midtrans_server_key)
            if not keys:
                raise NotConfigured("LEDGER_MIDTRANS_SERVER_KEY is not set")
            base = s.midtrans_api_base.rstrip("/")
            return f"{base}/v2/{quote(order_id, safe='')}/status", basic_auth(keys[0])
        if provider == "xendit":
            if not _XENDIT_ID.match(order_id):
                raise InvalidOrderId("a Xendit external_id is 1-255 printable ASCII characters")
            if not s.xendit_secret_key:
                raise NotConfigured("LEDGER_XENDIT_SECRET_KEY is not set")
            url = f"{s.xendit_api_url.rstrip('/')}/v2/invoices?external_id={quote(order_id)}"
            return url, basic_auth(s.xendit_secret_key)
        raise ValueError(f"no status API for provider {provider!r}")

    async def fetch(self, provider: str, order_id: str) -> Answer:
        """The provider's answer about ``order_id``; ``ProviderUnavailable`` when none came."""
        url, headers = self.request_for(provider, order_id)
        assert self._session is not None, "use StatusClient in `async with`"
        attempts = self._settings.reconcile_attempts
        why = ""
        for attempt in range(attempts):
            await self._limits[provider].wait()
            wait = BACKOFF * 2**attempt
            try:
                async with self._session.get(url, headers=headers) as r:
                    body = await r.read()
                    if r.status != 429 and r.status < 500:
                        return Answer(provider, order_id, r.status, body)
                    why = f"HTTP {r.status}"
                    given = retry_after_seconds(r.headers.get("Retry-After"), cap=3600.0)
                    if given is not None:
                        wait = given
            except TimeoutError:
                why = f"no answer within {self._settings.reconcile_timeout:g} s"
            except aiohttp.ClientError as exc:
                why = type(exc).__name__
            if attempt + 1 < attempts:
                if wait > MAX_WAIT:
                    why += f" (Retry-After {wait:.0f} s)"
                    break
                await asyncio.sleep(wait)
        raise ProviderUnavailable(
            f"{provider} status API: {why} after {attempts} attempt(s); try later"
        )
