"""Subscriptions: per customer and license code, the facts Mayar's ``subscription.*`` and
``membership.*`` events state, folded order-independently (rule: ``ledger.payments.rules``).

Only maxima are stored (latest grant expiry, latest cancelled-through, latest
expired-through), so any arrival order or repetition of the same events gives the same
rows; ``ledger.payments.rules.subscription_status`` turns a row into active / cancelled / expired
at query time, so a subscription whose expiry passed reads expired with no event at all.
Events without a customer or with an unreadable expiry are listed by the ``review``
projection.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ledger.database import Conn
from ledger.domain.events import RECEIVED_TOPIC
from ledger.ingest.providers import mayar
from ledger.payments.rules import (
    SubscriptionRow,
    delivery_head,
    is_subscription_event,
    raw_body,
    subscription_fact,
    table_digest,
)
from ledger.sql import load
from ledger.store.eventstore import StoredRecord

SQL = load(Path(__file__).with_suffix(".sql"))


class Subscriptions:
    name = "subscriptions"
    version = 2  # 2: customers normalised by ledger.payments.customers (ADR 0009 addendum)
    topics: tuple[str, ...] = (RECEIVED_TOPIC,)
    schema_sql = SQL["schema"]
    queries = SQL

    async def apply(self, conn: Conn, records: Sequence[StoredRecord]) -> None:
        rows: dict[tuple[str, str], SubscriptionRow] = {}
        for rec in records:
            state = delivery_head(rec.state)
            if state.provider != "mayar" or not is_subscription_event(state.kind):
                continue
            hook = mayar.DECODER.decode(raw_body(state))
            fact = subscription_fact(hook.event, hook.data)
            if fact.kind is None or fact.customer is None:
                continue
            rows.setdefault((fact.customer, fact.license_code), SubscriptionRow()).add(
                fact, rec.position
            )
        if not rows:
            return
        keys = sorted(rows)
        await conn.execute(
            SQL["upsert"],
            [k[0] for k in keys],
            [k[1] for k in keys],
            [rows[k].expiry for k in keys],
            [rows[k].cancelled for k in keys],
            [rows[k].expired for k in keys],
            [rows[k].position for k in keys],
        )

    async def digest(self, conn: Conn) -> str:
        return await table_digest(conn, [SQL["digest"]])


PROJECTION = Subscriptions()
