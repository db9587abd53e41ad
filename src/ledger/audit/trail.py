"""The operator trail: every operator action is an event in the log, with a reason.

Callers (key management, projection rebuilds, outbox retries) build the event with
``operator_event`` and append it with whatever appends events (the service's
``GroupCommitter`` or an ``EventStore``). When the action itself is a database write that
must not happen without its trail entry (or the reverse), they append it with ``append_in``
on the same connection, inside the action's transaction.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from ledger.domain.events import (
    OPERATOR_ACTION_TOPIC,
    OPERATOR_TOPIC,
    OperatorActionState,
    encode_operator_action,
)
from ledger.errors import LedgerError
from ledger.readmodels.contract import Conn
from ledger.store.eventstore import SQL as STORE_SQL
from ledger.store.eventstore import NewEvent

MAX_REASON = 1000


class ReasonRequired(LedgerError, ValueError):
    """An operator action was attempted without a usable reason."""


def check_reason(reason: str | None) -> str:
    """The reason, trimmed; raises ``ReasonRequired`` when empty or too long."""
    text = (reason or "").strip()
    if not text:
        raise ReasonRequired("a reason is required for operator actions")
    if len(text) > MAX_REASON:
        raise ReasonRequired(f"the reason is longer than {MAX_REASON} characters")
    return text


def operator_event(
    key_id: str,
    scope: str,
    action: str,
    target: str,
    reason: str,
    *,
    action_id: uuid.UUID | None = None,
) -> NewEvent:
    """The ``OperatorAction.Recorded`` event; pass ``action_id`` to make a retry idempotent."""
    state = OperatorActionState(
        originator_topic=OPERATOR_TOPIC,
        timestamp=datetime.now(UTC),
        key_id=key_id,
        scope=scope,
        action=action,
        target=target,
        reason=check_reason(reason),
    )
    return NewEvent(action_id or uuid.uuid4(), OPERATOR_ACTION_TOPIC, encode_operator_action(state))


async def append_in(conn: Conn, event: NewEvent) -> int | None:
    """Append ``event`` on ``conn`` (inside the caller's transaction); its position, or None
    if an event with that id was there already."""
    rows = await conn.fetch(
        STORE_SQL["append"], [event.id], [event.version], [event.topic], [event.state]
    )
    return int(rows[0]["notification_id"]) if rows else None
