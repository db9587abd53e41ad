"""Key administration with a reason (``/v1/keys``, scope ``ops:admin``): list keys, revoke one.

A revocation is recorded in the log as an operator action in the transaction that revokes.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import msgspec
from litestar import Request
from litestar.di import NamedDependency

from ledger.api.auth import KeyedController, current_key, keyed_get, keyed_post, reason_header
from ledger.api.params import ACQUIRE_TIMEOUT, IdPath
from ledger.api.problems import problem
from ledger.audit.keys import KeyRing, list_keys, revoke_key
from ledger.audit.trail import append_in, operator_event


class KeyView(msgspec.Struct, kw_only=True):
    key_id: str
    name: str
    scopes: list[str]
    created_at: str
    revoked_at: str | None


class Revoked(msgspec.Struct, kw_only=True):
    key: KeyView
    revoked_now: bool
    position: int | None


def _key_view(k: Any) -> KeyView:
    return KeyView(
        key_id=k.key_id,
        name=k.name,
        scopes=list(k.scopes),
        created_at=k.created_at.isoformat(),
        revoked_at=k.revoked_at.isoformat() if k.revoked_at else None,
    )


class KeysController(KeyedController):
    path = "/v1/keys"
    tags = ["operators"]
    opt = {"scopes": ("ops:admin",)}

    @keyed_get("/", "API keys: ids, names, scopes, created/revoked (never secrets)")
    async def list_keys(self, pool: NamedDependency[asyncpg.Pool]) -> list[KeyView]:
        async with pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
            return [_key_view(k) for k in await list_keys(conn)]

    @keyed_post("/{key_id:str}/revoke", "Revoke a key (X-Ledger-Reason)", 404, 413, status_code=200)
    async def revoke(
        self,
        request: Request[Any, Any, Any],
        pool: NamedDependency[asyncpg.Pool],
        keyring: NamedDependency[KeyRing],
        key_id: IdPath,
    ) -> Revoked:
        reason = reason_header(request)
        actor = current_key(request)
        async with pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn, conn.transaction():
            info, now = await revoke_key(conn, key_id)
            position = None
            if now:
                event = operator_event(
                    actor.key_id, "ops:admin", "key.revoke", f"api_key:{key_id}", reason
                )
                position = await append_in(conn, event)
        if info is None:
            raise problem(404, "key-not-found", "No such key", f"no API key {key_id!r}")
        keyring.invalidate(key_id)
        return Revoked(key=_key_view(info), revoked_now=now, position=position)
