"""API keys: ``lk_<key id>_<secret>``, stored only as SHA-256, checked with a short cache."""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from datetime import datetime

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from ledger.store import UNAVAILABLE_ERRORS, StoreUnavailable

SCOPES = frozenset({"audit:read", "tokens:write", "ops:admin"})
CACHE_SECONDS = 5.0
Conn = asyncpg.Connection | PoolConnectionProxy


class InvalidScope(ValueError):
    pass


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
        "INSERT INTO api_keys (key_id, name, scopes, key_hash) VALUES ($1, $2, $3, $4)",
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
    rows = await conn.fetch(
        "SELECT key_id, name, scopes, created_at, revoked_at FROM api_keys ORDER BY created_at"
    )
    return [
        KeyInfo(r["key_id"], r["name"], tuple(r["scopes"]), r["created_at"], r["revoked_at"])
        for r in rows
    ]


async def revoke_key(conn: Conn, key_id: str) -> tuple[KeyInfo | None, bool]:
    """Revoke ``key_id``: (the key, whether this call revoked it). Idempotent: a revoked key
    keeps its first revocation time; an unknown id gives (None, False)."""
    r = await conn.fetchrow(
        "UPDATE api_keys SET revoked_at = now() WHERE key_id = $1 AND revoked_at IS NULL "
        "RETURNING key_id, name, scopes, created_at, revoked_at",
        key_id,
    )
    now_revoked = r is not None
    if r is None:
        r = await conn.fetchrow(
            "SELECT key_id, name, scopes, created_at, revoked_at FROM api_keys WHERE key_id = $1",
            key_id,
        )
    if r is None:
        return None, False
    info = KeyInfo(r["key_id"], r["name"], tuple(r["scopes"]), r["created_at"], r["revoked_at"])
    return info, now_revoked


class KeyRing:
    """Looks keys up by hash; remembers answers (hits and misses) for a few seconds."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self._cache: dict[bytes, tuple[float, ApiKey | None]] = {}

    async def lookup(self, key: str) -> ApiKey | None:
        digest = hash_key(key)
        now = time.monotonic()
        hit = self._cache.get(digest)
        if hit and hit[0] > now:
            return hit[1]
        try:
            async with self.pool.acquire(timeout=5) as conn:
                row = await conn.fetchrow(
                    "SELECT key_id, name, scopes FROM api_keys "
                    "WHERE key_hash = $1 AND revoked_at IS NULL",
                    digest,
                )
        except UNAVAILABLE_ERRORS as exc:
            # Not "invalid key": the database is away. The edge answers 503, not 401/500.
            raise StoreUnavailable(type(exc).__name__) from exc
        found = ApiKey(row["key_id"], row["name"], tuple(row["scopes"])) if row else None
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[digest] = (now + CACHE_SECONDS, found)
        return found

    def invalidate(self, key_id: str) -> None:
        """Forget cached answers for ``key_id`` (this process sees a revocation at once;
        others within ``CACHE_SECONDS``)."""
        for digest, (_, key) in list(self._cache.items()):
            if key is not None and key.key_id == key_id:
                del self._cache[digest]
