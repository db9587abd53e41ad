"""One check of one order: ask the provider, read the answer, record it in the log.

Every answer becomes a ``Reconciliation.Checked`` event (ADR 0017), applicable or not: a
401, an unknown order and an answer whose signature does not verify are facts an auditor
wants to see. The orders projection folds only verified statuses.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from ledger.config import Settings
from ledger.domain.events import (
    CHECKED_TOPIC,
    RECONCILIATION_TOPIC,
    CheckedState,
    check_event_id,
    encode_checked,
)
from ledger.ingest.providers.base import secret_list
from ledger.reconcile.answers import Reading, read_answer
from ledger.reconcile.clients import Answer, StatusClient
from ledger.store.eventstore import Appended, NewEvent


class Appender(Protocol):
    """Anything that appends one event and answers where it landed (group commit, store)."""

    async def append(self, event: NewEvent) -> Appended: ...


@dataclass(frozen=True, slots=True)
class Checked:
    answer: Answer
    reading: Reading
    position: int


def checked_event(answer: Answer, reading: Reading, check_id: str) -> NewEvent:
    state = CheckedState(
        originator_topic=RECONCILIATION_TOPIC,
        timestamp=datetime.now(UTC),
        provider=answer.provider,
        order_id=answer.order_id,
        check_id=check_id,
        http_status=answer.http_status,
        body_sha256=hashlib.sha256(answer.body).hexdigest(),
        body_b64=base64.b64encode(answer.body).decode(),
        reading=reading.reading,
        provider_status=reading.provider_status,
    )
    event_id = check_event_id(check_id, answer.provider, answer.order_id)
    return NewEvent(event_id, CHECKED_TOPIC, encode_checked(state))


async def check_order(
    client: StatusClient,
    appender: Appender,
    settings: Settings,
    provider: str,
    order_id: str,
    check_id: str,
) -> Checked:
    """Ask, read and record; raises ``ProviderUnavailable`` (nothing recorded) when the
    provider gave no answer."""
    answer = await client.fetch(provider, order_id)
    reading = read_answer(
        provider,
        order_id,
        answer.http_status,
        answer.body,
        secret_list(settings.midtrans_server_key),
    )
    appended = await appender.append(checked_event(answer, reading, check_id))
    return Checked(answer, reading, appended.position)
