"""API-key guard: ``Authorization: Bearer <key>``; the route's ``opt["scopes"]`` says which
scopes may call it (any one suffices)."""

from __future__ import annotations

from typing import Any

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from ledger.api.problems import problem
from ledger.audit.keys import ApiKey, KeyRing


async def require_key(
    connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
) -> None:
    wanted: tuple[str, ...] = tuple(handler.opt.get("scopes", ()))
    header = connection.headers.get("authorization")
    if not header or not header.lower().startswith("bearer "):
        raise problem(
            401,
            "api-key-required",
            "An API key is required",
            "send the key as 'Authorization: Bearer <key>'",
            headers={"WWW-Authenticate": 'Bearer realm="ledger"'},
        )
    keyring: KeyRing = connection.app.state.services.keyring
    key = await keyring.lookup(header[7:].strip())
    if key is None:
        raise problem(
            401,
            "api-key-invalid",
            "The API key is not valid",
            "the key is unknown or revoked",
            headers={"WWW-Authenticate": 'Bearer realm="ledger", error="invalid_token"'},
        )
    if wanted and not set(wanted) & set(key.scopes):
        raise problem(
            403,
            "scope-missing",
            "The API key lacks the required scope",
            f"this route needs one of the scopes {list(wanted)}; the key has {list(key.scopes)}",
        )
    connection.scope["state"]["api_key"] = key


def current_key(connection: ASGIConnection[Any, Any, Any, Any]) -> ApiKey:
    key: ApiKey = connection.scope["state"]["api_key"]
    return key
