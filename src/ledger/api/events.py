"""The ordered event feed (finance, integrations): ``/v1/events``."""

from __future__ import annotations

import base64
import binascii
import uuid
from typing import Any

import msgspec
from litestar.di import NamedDependency
from litestar.response import Response

from ledger.api.auth import KeyedController, keyed_get
from ledger.api.params import IdPath, Limit, Position
from ledger.api.problems import problem
from ledger.domain.events import MsgspecTranscoder
from ledger.store.eventstore import EventStore, StoredRecord

_transcoder = MsgspecTranscoder()
_HIDDEN = ("body_b64", "originator_topic", "timestamp")


class EventSummary(msgspec.Struct, kw_only=True):
    position: int
    event_id: str
    version: int
    type: str
    topic: str
    recorded_at: str | None
    data: dict[str, Any]


class EventPage(msgspec.Struct, kw_only=True):
    items: list[EventSummary]
    next_after: int
    has_more: bool


class EventDetail(EventSummary, kw_only=True):
    body: str | None
    body_base64: str | None


def _state(rec: StoredRecord) -> dict[str, Any]:
    state: dict[str, Any] = msgspec.json.decode(rec.state)
    return state


def summary(rec: StoredRecord) -> EventSummary:
    state = _state(rec)
    return EventSummary(
        position=rec.position,
        event_id=str(rec.id),
        version=rec.version,
        type=rec.topic.rpartition(":")[2],
        topic=rec.topic,
        recorded_at=state.get("timestamp"),
        data={k: v for k, v in state.items() if k not in _HIDDEN},
    )


def raw_body(rec: StoredRecord) -> bytes | None:
    b64 = _state(rec).get("body_b64")
    if not isinstance(b64, str):
        return None
    try:
        return base64.b64decode(b64, validate=True)
    except binascii.Error:
        return None


class EventsController(KeyedController):
    path = "/v1/events"
    tags = ["audit"]
    opt = {"scopes": ("audit:read",)}

    @keyed_get("/", "Events in log order after a position")
    async def list_events(
        self,
        store: NamedDependency[EventStore],
        after: Position = 0,
        limit: Limit = 100,
    ) -> EventPage:
        rows = await store.read_after(after, limit + 1)
        has_more = len(rows) > limit
        rows = rows[:limit]
        return EventPage(
            items=[summary(r) for r in rows],
            next_after=rows[-1].position if rows else after,
            has_more=has_more,
        )

    @keyed_get("/{event_id:str}", "One event, with the raw body as received", 404)
    async def get_event(self, store: NamedDependency[EventStore], event_id: IdPath) -> EventDetail:
        rec = await _find(store, event_id)
        body = raw_body(rec)
        text: str | None = None
        if body is not None:
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError:
                text = None
        s = summary(rec)
        return EventDetail(
            **msgspec.structs.asdict(s),
            body=text,
            body_base64=base64.b64encode(body).decode() if body is not None else None,
        )

    @keyed_get(
        "/{event_id:str}/raw",
        "The exact bytes a provider sent (with the provider's content type)",
        404,
    )
    async def get_raw(
        self, store: NamedDependency[EventStore], event_id: IdPath
    ) -> Response[bytes]:
        rec = await _find(store, event_id)
        body = raw_body(rec)
        if body is None:
            raise problem(
                404, "no-raw-body", "This event has no raw body", f"{event_id} is not a delivery"
            )
        ctype = _state(rec).get("headers", {}).get("content-type", "application/octet-stream")
        return Response(body, media_type=ctype)


async def _find(store: EventStore, event_id: str) -> StoredRecord:
    try:
        eid = uuid.UUID(event_id)
    except ValueError:
        raise problem(
            400, "invalid-event-id", "Invalid event id", f"event_id {event_id!r} is not a UUID"
        ) from None
    rec = await store.get(eid)
    if rec is None:
        raise problem(404, "event-not-found", "No such event", f"no event {event_id}")
    return rec
