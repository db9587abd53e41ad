"""Token balances: credits from paid Mayar deliveries, debits from spends.

Credits come from Mayar ``payment.success`` / ``payment.received`` through the package
catalogue (``ledger.payments.rules.classify_payment``): one credit per Mayar payment id, so a
payment announced by both events is credited once. Flagged deliveries (unknown package or
customer, amount mismatch) credit nothing; the ``review`` projection lists them.

Debits are ``TokenSpend.Spent`` events appended by ``ledger.accounts.spend`` under the customer's
lock; their ``balance_after`` is stored as recorded, so a repeated request can be answered
from the log. The projection itself never refuses a spend (the log is the truth).

Configuration: the catalogue is read from the environment when the module is imported
(``LEDGER_TOKEN_PACKAGES``, ``LEDGER_PACKAGE_PRICES``; defaults silver = 5, gold = 100, no
prices). It is part of the projection's meaning: after changing it, rebuild the projection.
Tests build their own ``TokenBalances(Catalogue.of(...))``.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from pathlib import Path

from ledger.database import Conn
from ledger.domain.events import RECEIVED_TOPIC, SPENT_TOPIC, decode_spend
from ledger.ingest.providers import mayar
from ledger.payments.rules import (
    Catalogue,
    classify_payment,
    columns,
    delivery_head,
    pg_text,
    raw_body,
    table_digest,
)
from ledger.sql import load
from ledger.store.eventstore import StoredRecord

SQL = load(Path(__file__).with_suffix(".sql"))

CreditRow = tuple[str, uuid.UUID, str, str, int, int]


class TokenBalances:
    name = "token_balances"
    # 2: customers normalised by ledger.payments.customers (ADR 0009 addendum)
    # 3: credits indexed by event_id (audit timelines look credits up by event; ADR 0020)
    version = 3
    topics: tuple[str, ...] = (RECEIVED_TOPIC, SPENT_TOPIC)
    schema_sql = SQL["schema"]
    queries = SQL

    def __init__(self, catalogue: Catalogue | None = None) -> None:
        self.catalogue = catalogue or Catalogue()

    async def apply(self, conn: Conn, records: Sequence[StoredRecord]) -> None:
        credits: dict[str, CreditRow] = {}
        spends: list[tuple[uuid.UUID, str, int, str, int, int]] = []
        for rec in records:
            if rec.topic == RECEIVED_TOPIC:
                state = delivery_head(rec.state)
                if state.provider != "mayar" or state.kind not in mayar.PAID_EVENTS:
                    continue
                data = mayar.DECODER.decode(raw_body(state)).data
                credit = classify_payment(data, self.catalogue, str(rec.id))
                if credit.tokens <= 0 or credit.customer is None or credit.package is None:
                    continue
                row = (
                    credit.payment_key,
                    rec.id,
                    credit.customer,
                    credit.package,
                    credit.tokens,
                    rec.position,
                )
                seen = credits.get(credit.payment_key)
                if seen is None or rec.id < seen[1]:
                    credits[credit.payment_key] = row
            elif rec.topic == SPENT_TOPIC:
                s = decode_spend(rec.state)
                spends.append(
                    (
                        rec.id,
                        pg_text(s.customer),
                        s.amount,
                        pg_text(s.idempotency_key),
                        s.balance_after,
                        rec.position,
                    )
                )
        # customer -> [credited delta, spent delta, last position]
        delta: dict[str, list[int]] = {}

        def add(customer: str, credited: int, spent: int, position: int) -> None:
            d = delta.setdefault(customer, [0, 0, 0])
            d[0] += credited
            d[1] += spent
            d[2] = max(d[2], position)

        if credits:
            existing = {
                r["payment_key"]: r
                for r in await conn.fetch(SQL["existing_credits"], list(credits))
            }
            writes = []
            for key, row in credits.items():
                old = existing.get(key)
                if old is not None and old["event_id"] <= row[1]:
                    continue  # the credit already held wins (smaller event id)
                if old is not None:
                    add(old["customer"], -old["tokens"], 0, 0)
                add(row[2], row[4], 0, row[5])
                writes.append(row)
            if writes:
                await conn.execute(SQL["upsert_credits"], *columns(writes))
        if spends:
            inserted = {
                r["event_id"] for r in await conn.fetch(SQL["insert_spends"], *columns(spends))
            }
            for sp in spends:
                if sp[0] in inserted:
                    inserted.discard(sp[0])  # a record repeated in one batch counts once
                    add(sp[1], 0, sp[2], sp[5])
        if delta:
            customers = sorted(delta)
            await conn.execute(
                SQL["add_to_accounts"],
                customers,
                [delta[c][0] for c in customers],
                [delta[c][1] for c in customers],
                [delta[c][2] for c in customers],
            )

    async def digest(self, conn: Conn) -> str:
        return await table_digest(
            conn, [SQL["digest_credits"], SQL["digest_spends"], SQL["digest_accounts"]]
        )


PROJECTION = TokenBalances(Catalogue.from_env())
