"""API keys: ``lk_<key id>_<secret>``, stored only as SHA-256, checked with a short cache."""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

import asyncpg

SCOPES = frozenset({"audit:read", "tokens:write", "ops:admin"})
CACHE_SECONDS = 5.0


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
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT key_id, name, scopes FROM api_keys "
                "WHERE key_hash = $1 AND revoked_at IS NULL",
                digest,
            )
        found = ApiKey(row["key_id"], row["name"], tuple(row["scopes"])) if row else None
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[digest] = (now + CACHE_SECONDS, found)
        return found
