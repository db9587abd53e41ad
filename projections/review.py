"""The review queue: deliveries that need a person.

- ``quarantined``: authenticated but unusable (unparseable, unknown event...), with the fault;
- ``dedup-conflict``: a dedup key reused with a different body (never applied);
- ``unknown-package`` / ``amount-mismatch`` / ``unknown-customer``: a paid Mayar delivery
  that credited no tokens, and why (same rule and catalogue as ``token_balances``);
- ``unknown-customer`` / ``invalid-expiry``: a subscription event that could not be folded.

Each row links to the raw event (``/v1/events/{event_id}``). The catalogue is read from the
environment like ``token_balances`` (keep both on the same configuration).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from pathlib import Path

from ledger.database import Conn
from ledger.domain.events import (
    CONFLICTED_TOPIC,
    QUARANTINED_TOPIC,
    RECEIVED_TOPIC,
)
from ledger.ingest.providers import mayar
from ledger.payments.rules import (
    Catalogue,
    DeliveryHead,
    Flag,
    classify_payment,
    columns,
    delivery_head,
    is_subscription_event,
    pg_text,
    raw_body,
    subscription_fact,
    table_digest,
)
from ledger.sql import load
from ledger.store.eventstore import StoredRecord

SQL = load(Path(__file__).with_suffix(".sql"))

Item = tuple[uuid.UUID, str, str, str, str, str, int]


def flags_for(rec: StoredRecord, state: DeliveryHead, catalogue: Catalogue) -> list[Flag]:
    """Why a delivery needs a person (empty: it does not)."""
    if rec.topic == QUARANTINED_TOPIC:
        return [Flag("quarantined", state.fault or "unusable delivery")]
    if rec.topic == CONFLICTED_TOPIC:
        first = state.original_event_id or "unknown"
        return [
            Flag(
                "dedup-conflict",
                f"dedup key {state.dedup_key} was first recorded by event {first} "
                "with a different body; this one is not applied",
            )
        ]
    if state.provider != "mayar":
        return []
    if state.kind in mayar.PAID_EVENTS:
        data = mayar.DECODER.decode(raw_body(state)).data
        return list(classify_payment(data, catalogue, str(rec.id)).flags)
    if is_subscription_event(state.kind):
        hook = mayar.DECODER.decode(raw_body(state))
        return list(subscription_fact(hook.event, hook.data).flags)
    return []


class Review:
    name = "review"
    version = 2  # 2: customers normalised by ledger.payments.customers (ADR 0009 addendum)
    topics: tuple[str, ...] = (RECEIVED_TOPIC, QUARANTINED_TOPIC, CONFLICTED_TOPIC)
    schema_sql = SQL["schema"]
    queries = SQL

    def __init__(self, catalogue: Catalogue | None = None) -> None:
        self.catalogue = catalogue or Catalogue()

    async def apply(self, conn: Conn, records: Sequence[StoredRecord]) -> None:
        items: dict[tuple[uuid.UUID, str], Item] = {}
        for rec in records:
            state = delivery_head(rec.state)
            for f in flags_for(rec, state, self.catalogue):
                items.setdefault(
                    (rec.id, f.reason),
                    (
                        rec.id,
                        f.reason,
                        state.provider,
                        pg_text(state.kind),
                        pg_text(state.dedup_key),
                        pg_text(f.detail),
                        rec.position,
                    ),
                )
        if items:
            rows = list(items.values())
            await conn.execute(SQL["insert"], *columns(rows))

    async def digest(self, conn: Conn) -> str:
        return await table_digest(conn, [SQL["digest"]])


PROJECTION = Review(Catalogue.from_env())
