"""API keys: ``lk_<key id>_<secret>``, stored only as SHA-256, checked with a short cache.

Every change to ``api_keys`` (whoever makes it: the HTTP route, the CLI, plain SQL) NOTIFYs
``ledger_keys`` (migration 0010); each process's ``KeyRing`` listens and forgets its cached
answers at once, so a revocation reaches every process within a second. The cache's expiry
(``LEDGER_KEY_CACHE_SECONDS``) is only the fallback for a notification lost while the
listening connection was down.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from ledger.database import APP_ROLE, Conn
from ledger.errors import LedgerError
from ledger.sql import package_sql
from ledger.store.eventstore import UNAVAILABLE_ERRORS, StoreUnavailable

log = logging.getLogger("ledger.audit.keys")
SQL = package_sql("keys")
SCOPES = frozenset({"audit:read", "tokens:write", "orders:write", "ops:admin"})
CACHE_SECONDS = 5.0
CHANNEL = "ledger_keys"
HEALTH_CHECK_SECONDS = 30.0  # how often an idle listening connection is checked
LISTEN_ERRORS: tuple[type[BaseException], ...] = (
    *UNAVAILABLE_ERRORS,
    asyncpg.PostgresError,
    asyncpg.InternalClientError,  # e.g. a session killed mid-query
)


class InvalidScope(LedgerError, ValueError):
    """An API key was asked for with a scope this service does not know."""


@dataclass(frozen=True, slots=True)
class ApiKey:
    key_id: str
    name: str
    scopes: tuple[str, ...]


def hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


async def create_key(conn: asyncpg.Connection, name: str, scopes: list[str]) -> tuple[ApiKey, str]:
    bad = [s for s in scopes if s not in SCOPES]
    if bad or not scopes:
        raise InvalidScope(f"unknown scope(s) {bad}; choose from {sorted(SCOPES)}")
    key_id = secrets.token_hex(6)
    key = f"lk_{key_id}_{secrets.token_urlsafe(32)}"
    await conn.execute(
        SQL["create"],
        key_id,
        name,
        scopes,
        hash_key(key),
    )
    return ApiKey(key_id, name, tuple(scopes)), key


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """What may be shown about a key: never its secret or hash."""

    key_id: str
    name: str
    scopes: tuple[str, ...]
    created_at: datetime
    revoked_at: datetime | None


async def list_keys(conn: Conn) -> list[KeyInfo]:
    rows = await conn.fetch(SQL["list"])
    return [
        KeyInfo(r["key_id"], r["name"], tuple(r["scopes"]), r["created_at"], r["revoked_at"])
        for r in rows
    ]


async def revoke_key(conn: Conn, key_id: str) -> tuple[KeyInfo | None, bool]:
    """Revoke ``key_id``: (the key, whether this call revoked it). Idempotent: a revoked key
    keeps its first revocation time; an unknown id gives (None, False)."""
    r = await conn.fetchrow(
        SQL["revoke"],
        key_id,
    )
    now_revoked = r is not None
    if r is None:
        r = await conn.fetchrow(
            SQL["get"],
            key_id,
        )
    if r is None:
        return None, False
    info = KeyInfo(r["key_id"], r["name"], tuple(r["scopes"]), r["created_at"], r["revoked_at"])
    return info, now_revoked


class KeyRing:
    """Looks keys up by hash; remembers answers (hits and misses) until a key changes.

    A ``Component`` (``start``/``stop``) when given ``listen_url``: it then keeps a LISTEN
    connection on ``ledger_keys`` and clears the cache on every notification, and after
    every reconnect (notifications sent while it was away are lost). Cached answers expire
    after ``ttl`` seconds anyway.
    """

    def __init__(
        self, pool: asyncpg.Pool, *, listen_url: str | None = None, ttl: float = CACHE_SECONDS
    ) -> None:
        self.pool = pool
        self.listen_url = listen_url
        self.ttl = ttl
        self._cache: dict[bytes, tuple[float, ApiKey | None]] = {}
        # Bumped by every clear: a lookup whose query began before a clear does not cache
        # its (possibly stale) answer.
        self._generation = 0
        self._task: asyncio.Task[None] | None = None
        self.listening = asyncio.Event()

    async def start(self) -> None:
        if self.listen_url and self._task is None:
            self._task = asyncio.create_task(self._listen(self.listen_url), name="keyring")
            # Wait for the first LISTEN (briefly: the fallback expiry covers a slow start).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.listening.wait(), 5)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def clear(self, *_: Any) -> None:
        """Forget every cached answer (a key changed somewhere)."""
        self._generation += 1
        self._cache.clear()

    async def _listen(self, url: str) -> None:
        delay = 0.2
        while True:
            try:
                conn: asyncpg.Connection = await asyncpg.connect(
                    url, server_settings={"application_name": "ledger-keys", "role": APP_ROLE}
                )
            except LISTEN_ERRORS as exc:
                log.warning("keys: cannot listen (%s); retrying", type(exc).__name__)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            delay = 0.2
            try:
                await self._hold(conn)
            except LISTEN_ERRORS as exc:
                log.warning("keys: listening connection lost (%s)", type(exc).__name__)
            finally:
                self.listening.clear()
                with contextlib.suppress(*UNAVAILABLE_ERRORS):
                    await conn.close(timeout=2)

    async def _hold(self, conn: asyncpg.Connection) -> None:
        """LISTEN on ``conn`` until it is lost (closed, or failing a health check)."""
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _c: lost.set())
        await conn.add_listener(CHANNEL, self.clear)
        self.clear()  # a key may have changed while nobody listened
        self.listening.set()
        while not lost.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(lost.wait(), HEALTH_CHECK_SECONDS)
            if not lost.is_set():
                await conn.fetchval(SQL["ping"], timeout=10)

    async def lookup(self, key: str) -> ApiKey | None:
        digest = hash_key(key)
        now = time.monotonic()
        hit = self._cache.get(digest)
        if hit and hit[0] > now:
            return hit[1]
        generation = self._generation
        try:
            async with self.pool.acquire(timeout=5) as conn:
                row = await conn.fetchrow(SQL["lookup"], digest)
        except UNAVAILABLE_ERRORS as exc:
            # Not "invalid key": the database is away. The edge answers 503, not 401/500.
            raise StoreUnavailable(type(exc).__name__) from exc
        found = ApiKey(row["key_id"], row["name"], tuple(row["scopes"])) if row else None
        if generation != self._generation:
            return found  # a key changed while we asked: answer, but do not remember
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[digest] = (now + self.ttl, found)
        return found

    def invalidate(self, key_id: str) -> None:
        """Forget cached answers for ``key_id`` (this process, at once; the others when
        the NOTIFY of the change reaches them)."""
        for digest, (_, key) in list(self._cache.items()):
            if key is not None and key.key_id == key_id:
                del self._cache[digest]
