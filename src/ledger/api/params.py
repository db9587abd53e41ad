"""Bounds shared by every route's parameters, declared so they also appear in OpenAPI.

Positions are PostgreSQL ``bigint`` values: at most 2^63 - 1. Text parameters have a
length bound. ``reject_unstorable`` is an app-wide guard: NUL, other C0 control characters,
DEL and bytes that are not UTF-8 (unpaired surrogates included) in the path or the query
cannot be stored or compared, so they are refused with 400 before any handler runs.
"""

from __future__ import annotations

import re
from typing import Annotated, Any
from urllib.parse import unquote_to_bytes

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from litestar.params import PathParameter, QueryParameter
from litestar.types import ASGIApp, Receive, Scope, Send

from ledger import database
from ledger.api.problems import problem

MAX_POSITION = 2**63 - 1  # PostgreSQL bigint
MAX_TEXT = 320  # an e-mail address may be this long; identifiers are shorter
MAX_TIME = 64  # an ISO 8601 date-time with offset fits easily
ACQUIRE_TIMEOUT = database.ACQUIRE_TIMEOUT  # routes' bound on waiting for a pooled connection

Position = Annotated[
    int, QueryParameter(ge=0, le=MAX_POSITION, description="a log position (0 = the start)")
]
OptionalPosition = Annotated[
    int | None,
    QueryParameter(ge=0, le=MAX_POSITION, description="only events at or before this position"),
]
MinPosition = Annotated[
    int | None,
    QueryParameter(
        ge=0,
        le=MAX_POSITION,
        description="wait until this log position is applied (at most the log's head)",
    ),
]
Limit = Annotated[int, QueryParameter(ge=1, le=1000, description="page size")]
Time = Annotated[
    str | None,
    QueryParameter(max_length=MAX_TIME, description="ISO 8601 date or date-time (no offset: UTC)"),
]
Text = Annotated[str | None, QueryParameter(min_length=1, max_length=MAX_TEXT)]
# Path parameters: bounded too (an identifier longer than these is no identifier of ours).
CustomerPath = Annotated[
    str, PathParameter(min_length=1, max_length=400, description="a customer's e-mail address")
]
ProviderPath = Annotated[str, PathParameter(min_length=1, max_length=32)]
OrderIdPath = Annotated[str, PathParameter(min_length=1, max_length=255)]
IdPath = Annotated[str, PathParameter(min_length=1, max_length=64)]

_UNSTORABLE = re.compile(r"[\x00-\x1f\x7f]")


def _bad(where: str) -> Exception:
    return problem(
        400,
        "unstorable-characters",
        "The request holds characters that cannot be stored",
        f"the {where} holds NUL, a control character or bytes that are not UTF-8; "
        "remove them (percent-encoded or not)",
        parameter=where,
    )


def _clean(raw: bytes, *, plus_is_space: bool) -> bool:
    if plus_is_space:
        raw = raw.replace(b"+", b" ")
    try:
        text = unquote_to_bytes(raw).decode("utf-8")  # strict: surrogates are not UTF-8
    except UnicodeDecodeError:
        return False
    return _UNSTORABLE.search(text) is None


async def reject_unstorable(
    connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
) -> None:
    """400 when the path or the query string holds an unstorable character."""
    del handler
    check_storable(connection.scope)


class RejectUnstorable:
    """``reject_unstorable`` as ASGI middleware, on every route. Not a guard: litestar
    copies the route handler for each guard call, ~10 us on every request (issue 11)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        check_storable(scope)  # (litestar hands middleware HTTP and WebSocket scopes only)
        await self.app(scope, receive, send)


def check_storable(scope: Scope) -> None:
    """Raise the 400 problem when the path or the query string of ``scope`` holds an
    unstorable character."""
    raw_path = scope.get("raw_path") or scope["path"].encode("utf-8", "surrogatepass")
    if not _clean(raw_path, plus_is_space=False):
        raise _bad("path")
    if not _clean(scope.get("query_string", b""), plus_is_space=True):
        raise _bad("query")
