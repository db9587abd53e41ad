"""Operator routes for the outbox (scope ``ops:admin``): list messages, retry one.

A retry needs a reason (``X-Ledger-Reason``); it is recorded in the log as an operator
action in the same transaction that makes the message due again.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

import asyncpg
import msgspec
from litestar import Request
from litestar.di import NamedDependency
from litestar.params import QueryParameter

from ledger.api.auth import KeyedController, current_key, keyed_get, keyed_post, reason_missing
from ledger.api.params import ACQUIRE_TIMEOUT, IdPath, Limit
from ledger.api.problems import problem
from ledger.audit.trail import ReasonRequired
from ledger.outbox.dispatcher import (
    Dispatcher,
    NotRetryable,
    get_message,
    list_messages,
    retry_message,
)

State = Literal["pending", "dead", "delivered"]


class Attempt(msgspec.Struct, kw_only=True):
    attempt: int
    started_at: datetime
    latency_ms: int
    status: int | None
    outcome: str
    excerpt: str | None


class Message(msgspec.Struct, kw_only=True):
    id: uuid.UUID
    kind: str
    target: str
    state: str
    attempts: int
    due_at: datetime
    created_at: datetime
    delivered_at: datetime | None
    dead_at: datetime | None
    last_error: str | None
    order_ref: str | None
    customer: str | None
    source_position: int
    attempt_log: list[Attempt] | None = None


class MessagePage(msgspec.Struct, kw_only=True):
    items: list[Message]


class Retried(msgspec.Struct, kw_only=True):
    id: uuid.UUID
    state: str
    action_position: int


def _id(message_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(message_id)
    except ValueError:
        raise problem(
            400, "invalid-message-id", "Invalid message id", f"{message_id!r} is not a UUID"
        ) from None


class OutboxController(KeyedController):
    path = "/v1/outbox"
    tags = ["outbox"]
    opt = {"scopes": ("ops:admin",)}

    @keyed_get("/", "Outbox messages, newest first")
    async def list_outbox(
        self,
        pool: NamedDependency[asyncpg.Pool],
        message_state: Annotated[
            State | None, QueryParameter(name="state", description="pending, dead, delivered")
        ] = None,
        q: Annotated[
            str | None, QueryParameter(max_length=200, description="order id or customer")
        ] = None,
        limit: Limit = 100,
    ) -> MessagePage:
        async with pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
            rows = await list_messages(conn, message_state, q, limit)
        return MessagePage(items=[msgspec.convert(r, Message) for r in rows])

    @keyed_get("/{message_id:str}", "One message with every attempt", 404)
    async def get_outbox(self, pool: NamedDependency[asyncpg.Pool], message_id: IdPath) -> Message:
        mid = _id(message_id)
        async with pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
            row = await get_message(conn, mid)
        if row is None:
            raise problem(404, "message-not-found", "No such message", f"no message {mid}")
        return msgspec.convert(row, Message)

    @keyed_post(
        "/{message_id:str}/retry", "Deliver a message again now", 404, 409, 413, status_code=202
    )
    async def retry(
        self,
        request: Request[Any, Any, Any],
        pool: NamedDependency[asyncpg.Pool],
        dispatcher: NamedDependency[Dispatcher | None],
        message_id: IdPath,
    ) -> Retried:
        mid = _id(message_id)
        reason = request.headers.get("x-ledger-reason", "")
        key = current_key(request)
        try:
            async with pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
                position = await retry_message(
                    conn, mid, key_id=key.key_id, scope="ops:admin", reason=reason
                )
        except ReasonRequired as exc:
            raise reason_missing(exc) from None
        except LookupError:
            raise problem(
                404, "message-not-found", "No such message", f"no message {mid}"
            ) from None
        except NotRetryable as exc:
            raise problem(409, "not-retryable", "The message cannot be retried", str(exc)) from None
        if dispatcher is not None:
            dispatcher.wake()
        return Retried(id=mid, state="pending", action_position=position)
