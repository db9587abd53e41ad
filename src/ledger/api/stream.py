"""``GET /v1/stream``: server-sent events of payments and status changes, live.

Each SSE message's ``id`` is the event's log position. A client that reconnects with
``Last-Event-ID`` (browsers' EventSource do it by themselves) first receives everything it
missed from the log, then live events: no gaps, no duplicates. Without it the stream starts
at the head, or ``backlog`` deliveries back, or after the position ``after``.

Auth: scope ``audit:read`` or ``ops:admin``. EventSource cannot set headers, so this route
alone also accepts the key as ``?access_token=``; prefer the header everywhere else (a key
in a URL can end up in proxy logs).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Annotated, Any

import asyncpg
import msgspec
from litestar import Request, get
from litestar.connection import ASGIConnection
from litestar.di import NamedDependency
from litestar.handlers.base import BaseRouteHandler
from litestar.params import QueryParameter
from litestar.response import ServerSentEvent, ServerSentEventMessage, Stream

from ledger.api.auth import require_key
from ledger.api.docs import BEARER
from ledger.api.params import ACQUIRE_TIMEOUT, MAX_POSITION
from ledger.api.problems import KEYED, problem, responses
from ledger.api.reads import ON_REPLICA
from ledger.audit.keys import KeyRing
from ledger.domain.events import DELIVERY_TOPICS
from ledger.live.hub import StreamHub
from ledger.payments.facts import PaymentFact
from ledger.readmodels.access import ReadModels
from ledger.store.eventstore import SQL as STORE_SQL
from ledger.store.eventstore import EventStore

SCOPES = ("audit:read", "ops:admin")
# A stream ends after this long; EventSource reconnects (``retry: 1000``) with Last-Event-ID
# and misses nothing. Bounds how long a server shutdown waits for open streams.
MAX_STREAM_SECONDS = 300.0
HEAD = STORE_SQL["head"]
NTH_LATEST = """
SELECT notification_id FROM stored_events
WHERE topic = ANY($1::text[])
ORDER BY notification_id DESC
OFFSET $2 LIMIT 1
"""
_encoder = msgspec.json.Encoder()


async def stream_guard(
    connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
) -> None:
    """``require_key``, or the same checks on ``?access_token=`` when no header is sent."""
    token = connection.query_params.get("access_token")
    if connection.headers.get("authorization") or not token:
        await require_key(connection, handler)
        return
    keyring: KeyRing = connection.app.state.services.keyring  # guards take no dependencies
    key = await keyring.lookup(token)
    if key is None:
        raise problem(
            401, "api-key-invalid", "The API key is not valid", "access_token is unknown or revoked"
        )
    if not set(SCOPES) & set(key.scopes):
        raise problem(
            403,
            "scope-missing",
            "The API key lacks the required scope",
            f"this route needs one of the scopes {list(SCOPES)}; the key has {list(key.scopes)}",
        )
    connection.scope["state"]["api_key"] = key


async def start_position(
    request: Request[Any, Any, Any], pool: asyncpg.Pool, after: int | None, backlog: int
) -> int:
    last_id = request.headers.get("last-event-id")
    if last_id is not None:
        try:
            value = int(last_id)
        except ValueError:
            raise problem(
                400,
                "invalid-last-event-id",
                "Invalid Last-Event-ID",
                f"Last-Event-ID {last_id[:40]!r} is not a log position (an integer)",
            ) from None
        if not 0 <= value <= MAX_POSITION:
            raise problem(
                400,
                "invalid-last-event-id",
                "Invalid Last-Event-ID",
                f"Last-Event-ID must be a position from 0 to {MAX_POSITION}",
            )
        return value
    if after is not None:
        return after
    async with pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
        if backlog > 0:
            pos = await conn.fetchval(NTH_LATEST, list(DELIVERY_TOPICS), backlog)
            return int(pos) if pos is not None else 0
        return int(await conn.fetchval(HEAD))


@get(
    "/v1/stream",
    guards=[stream_guard],
    opt={"scopes": SCOPES},
    tags=["live"],
    summary="Live payments and status changes (server-sent events, resumable)",
    security=BEARER,
    responses=responses(*KEYED),
    dependencies=ON_REPLICA,
)
async def stream(
    request: Request[Any, Any, Any],
    pool: NamedDependency[asyncpg.Pool],
    hub: NamedDependency[StreamHub],
    read_models: NamedDependency[ReadModels],
    after: Annotated[
        int | None,
        QueryParameter(ge=0, le=MAX_POSITION, description="start after this position"),
    ] = None,
    backlog: Annotated[
        int, QueryParameter(ge=0, le=500, description="start this many deliveries back")
    ] = 0,
    access_token: Annotated[
        str | None,
        QueryParameter(max_length=200, description="API key, for EventSource (no headers)"),
    ] = None,
) -> ServerSentEvent:
    del access_token  # checked by the guard
    start = await start_position(request, pool, after, backlog)
    # The backlog from the read replica when one is configured (ADR 0019), the tail live.
    replica = EventStore(read_models.pool) if read_models.on_replica else None

    async def events() -> AsyncIterator[bytes]:
        yield ServerSentEventMessage(
            data=None, comment=f"from position {start}", retry=1000
        ).encode()
        feed = hub.follow_batches(start, max_seconds=MAX_STREAM_SECONDS, backlog=replica)
        async with contextlib.aclosing(feed) as batches:
            async for facts in batches:
                if facts is None:
                    yield KEEPALIVE
                    continue
                yield b"".join([_rendered(hub, fact) for fact in facts])

    return _Framed(events(), headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


KEEPALIVE = ServerSentEventMessage(data=None, comment="keepalive").encode()
RENDERED_MAX = 10_000


def _rendered(hub: StreamHub, fact: PaymentFact) -> bytes:
    """The fact's SSE message (what ``ServerSentEventMessage(id=, event=, data=)`` encodes),
    made once per process and shared by every client (ADR 0020)."""
    cache = hub.rendered
    data = cache.get(fact.position)
    if data is None:
        event = b"payment" if fact.status == "paid" else b"status"
        data = b"id: %d\r\nevent: %s\r\ndata: %s\r\n\r\n" % (
            fact.position,
            event,
            _encoder.encode(fact),
        )
        if len(cache) >= RENDERED_MAX:
            del cache[next(iter(cache))]
        cache[fact.position] = data
    return data


class _Framed(ServerSentEvent):
    """A ``ServerSentEvent`` whose content is already SSE bytes, several messages per
    chunk: one send per batch instead of one per message and client (ADR 0020)."""

    def __init__(self, content: AsyncIterator[bytes], *, headers: dict[str, str]) -> None:
        Stream.__init__(self, content=content, media_type="text/event-stream", headers=headers)
        self.headers.setdefault("Cache-Control", "no-cache")
        self.headers["Connection"] = "keep-alive"
        self.headers["X-Accel-Buffering"] = "no"
