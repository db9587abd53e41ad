"""API-key guard: ``Authorization: Bearer <key>``; the route's ``opt["scopes"]`` says which
scopes may call it (any one suffices). ``current_key`` and ``reason_header``: who acts, and why.

Guards cannot declare litestar dependencies, so the guard takes the keyring from the running
services in ``app.state`` (set by the composition root); handlers get components injected."""

from __future__ import annotations

from typing import Any

from litestar import Controller, get, post
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from litestar.handlers.http_handlers import HTTPRouteHandler
from litestar.plugins.problem_details import ProblemDetailsException

from ledger.api.docs import BEARER
from ledger.api.problems import KEYED, problem, responses
from ledger.audit.keys import ApiKey, KeyRing
from ledger.audit.trail import ReasonRequired, check_reason

REASON_HEADER = "x-ledger-reason"


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


class KeyedController(Controller):
    """A controller whose every route needs an API key holding one of ``opt["scopes"]``
    (set by the subclass); the OpenAPI document marks its routes as bearer-secured."""

    guards = [require_key]
    security = BEARER


def keyed_get(path: str, summary: str, *answers: int, **options: Any) -> HTTPRouteHandler:
    """A GET route of a ``KeyedController``: its OpenAPI entry lists the problems every keyed
    route may answer (``KEYED``) and the route's own ``answers`` (status codes)."""
    return get(path, summary=summary, responses=responses(*KEYED, *answers), **options)


def keyed_post(path: str, summary: str, *answers: int, **options: Any) -> HTTPRouteHandler:
    """A POST route of a ``KeyedController`` (``keyed_get``'s problems likewise)."""
    return post(path, summary=summary, responses=responses(*KEYED, *answers), **options)


def current_key(connection: ASGIConnection[Any, Any, Any, Any]) -> ApiKey:
    key: ApiKey = connection.scope["state"]["api_key"]
    return key


def reason_header(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    """The operator's reason (``X-Ledger-Reason``), or a 400 problem naming the header."""
    try:
        return check_reason(connection.headers.get(REASON_HEADER))
    except ReasonRequired as exc:
        raise problem(
            400,
            "reason-required",
            "A reason is required",
            f"send why in the X-Ledger-Reason header ({exc})",
        ) from None


def reason_missing(exc: ReasonRequired) -> ProblemDetailsException:
    """The 400 for an operator action (outbox retry, projection rebuild or poison retry)
    whose ``X-Ledger-Reason`` is empty or too long."""
    return problem(
        400,
        "reason-required",
        "A reason is required",
        f"send the reason in the X-Ledger-Reason header: {exc}",
    )
