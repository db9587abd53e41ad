"""Properties of every read model (hypothesis), folded in real PostgreSQL.

1. Any permutation, duplication and batching of the same set of deliveries gives the same
   digest for every projection. The deliveries are real: signed, sent through the app,
   read back from the log.
2. Token balances equal a plain in-memory model of credits and spends.

Each example folds into fresh schemas of one database; examples are bounded to keep the
file well under a minute.
"""

from __future__ import annotations

import base64
import itertools
import json
import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.domain.events import (
    DELIVERY_TOPIC,
    RECEIVED_TOPIC,
    DeliveryState,
    encode_state,
)
from ledger.payments.rules import Catalogue
from ledger.projections.orders import Orders
from ledger.projections.review import Review
from ledger.projections.subscriptions import Subscriptions
from ledger.projections.token_balances import TokenBalances
from ledger.readmodels.contract import Projection
from ledger.store.eventstore import StoredRecord
from tests.support.db import post_unusable_xendit
from tests.support.readmodels import (
    digest,
    fold,
    post,
    post_mayar,
    query,
    read_log,
    spend_event,
)

PROJECTIONS: list[Projection] = [TokenBalances(), Subscriptions(), Orders(), Review()]
_schemas = itertools.count()
RUN = uuid.uuid4().hex[:6]


def schema(tag: str) -> str:
    return f"t_{tag}_{RUN}_{next(_schemas)}"


def replay(records: list[StoredRecord], order: list[int]) -> list[StoredRecord]:
    """The records in ``order`` (indexes may repeat), renumbered as a log would be."""
    return [
        StoredRecord(pos, records[i].id, records[i].version, records[i].topic, records[i].state)
        for pos, i in enumerate(order, start=1)
    ]


async def universe(client: Any, database_url: str) -> list[StoredRecord]:
    """A varied set of real deliveries: credits (good, unknown, flagged), subscriptions,
    orders from three providers with late notifications, quarantine, conflict, spends."""
    future = (datetime.now(UTC) + timedelta(days=9)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    later = (datetime.now(UTC) + timedelta(days=40)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    await post(client, "mayar", "payment.success", customer="a@x.com", package="silver")
    await post(client, "mayar", "payment.success", customer="a@x.com", package="gold")
    await post_mayar(client, "payment.success", id="p", customerEmail="b@x.com", package="gold")
    await post_mayar(client, "payment.received", id="p", customerEmail="b@x.com", package="gold")
    await post_mayar(client, "payment.success", id="q", customerEmail="b@x.com", package="tin")
    await post_mayar(client, "payment.success", id="q2", package="silver")
    await post_mayar(client, "payment.success", id="c1", customerEmail="c@x.com", package="silver")
    await post_mayar(client, "payment.success", id="c1", customerEmail="c@x.com", package="gold")
    for i, (event, lic, exp) in enumerate(
        [
            ("subscription.activated", "L1", future),
            ("subscription.cancelled", "L1", future),
            ("subscription.renewed", "L1", later),
            ("subscription.activated", "L2", future),
            ("subscription.expired", "L2", None),
            ("membership.activated", "L3", "not a date"),
        ]
    ):
        data = {"id": f"s{i}", "customerEmail": "a@x.com", "licenseCode": lic}
        if exp:
            data["expiredAt"] = exp
        await post_mayar(client, event, **data)
    for status in ("pending", "settlement", "expire", "refund"):
        await post(client, "midtrans", status, order_id="INV-1", transaction_id="t1")
    await post(client, "midtrans", "capture", order_id="INV-2", fraud_status="challenge")
    await post(client, "xendit", "PAID", order_id="BK-1")
    await post(client, "xendit", "EXPIRED", order_id="BK-1")
    await post(client, "partner", "booking.paid", order_id="b-1")
    await post_unusable_xendit(client)
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        from ledger.store.eventstore import EventStore

        await EventStore(pool).append_many(
            [spend_event("a@x.com", 7, "s1", 98), spend_event("b@x.com", 100, "s2", 0)]
        )
    finally:
        await pool.close()
    return await read_log(database_url)


REFERENCE: dict[str, tuple[list[StoredRecord], dict[str, str]]] = {}
PROPERTY = settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


async def reference(client: Any, database_url: str) -> tuple[list[StoredRecord], dict[str, str]]:
    """The universe and its digests folded in log order (once per test database)."""
    if database_url not in REFERENCE:
        records = await universe(client, database_url)
        conn = await asyncpg.connect(database_url)
        try:
            expected, names = {}, {}
            for proj in PROJECTIONS:
                names[proj.name] = name = schema(proj.name)
                await fold(conn, proj, records, name)
                expected[proj.name] = await digest(conn, proj, name)
            # The reference folds have content (digests of empty tables would also match).
            for proj_name, table in (
                ("token_balances", "credits"),
                ("token_balances", "spends"),
                ("subscriptions", "subscriptions"),
                ("orders", "order_history"),
                ("review", "review_items"),
            ):
                rows = await query(conn, names[proj_name], f"SELECT count(*) AS n FROM {table}")
                assert rows[0]["n"] > 0, table
        finally:
            await conn.close()
        REFERENCE[database_url] = (records, expected)
    return REFERENCE[database_url]


@PROPERTY
@given(
    seed=st.integers(0, 2**32),
    dups=st.lists(st.integers(0, 10_000), max_size=10),
    batch=st.integers(1, 12),
)
async def test_any_order_duplication_and_batching_gives_the_same_digests(
    client, database_url, seed, dups, batch
):
    records, expected = await reference(client, database_url)
    rnd = random.Random(seed)
    sequence = list(range(len(records)))
    rnd.shuffle(sequence)
    for d in dups:
        sequence.insert(rnd.randrange(len(sequence) + 1), d % len(records))
    shuffled = replay(records, sequence)
    conn = await asyncpg.connect(database_url)
    try:
        for proj in PROJECTIONS:
            name = schema(proj.name)
            await fold(conn, proj, shuffled, name, batch=batch)
            assert await digest(conn, proj, name) == expected[proj.name], proj.name
            await conn.execute(f'DROP SCHEMA "{name}" CASCADE')
    finally:
        await conn.close()


CUSTOMERS = ["ana@x.com", "bo@x.com", "cy@x.com"]
PACKAGES = ["silver", "gold", "Gold", "tin", None]
CATALOGUE = Catalogue()


def credit_record(n: int, customer: str | None, package: str | None, pid: int) -> StoredRecord:
    event = "payment.success" if n % 2 else "payment.received"
    data: dict[str, Any] = {"id": f"pay-{pid}"}
    if customer:
        data["customerEmail"] = customer.upper()
    if package:
        data["package"] = package
    body = json.dumps({"event": event, "data": data}).encode()
    key = f"mayar:pay-{pid}:{event}#{n}"
    state = DeliveryState(
        originator_topic=DELIVERY_TOPIC,
        timestamp=datetime.now(UTC),
        provider="mayar",
        dedup_key=key,
        kind=event,
        source=None,
        scheme="static-token:x-callback-token",
        headers={},
        body_sha256="0" * 64,
        body_b64=base64.b64encode(body).decode(),
    )
    return StoredRecord(
        0, uuid.uuid5(uuid.NAMESPACE_URL, key), 1, RECEIVED_TOPIC, encode_state(state)
    )


credits_st = st.lists(
    st.tuples(st.sampled_from([*CUSTOMERS, None]), st.sampled_from(PACKAGES), st.integers(0, 6)),
    max_size=25,
)
spends_st = st.lists(
    st.tuples(st.sampled_from(CUSTOMERS), st.integers(1, 60), st.integers(0, 6)), max_size=25
)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(credits=credits_st, spends=spends_st, seed=st.integers(0, 2**16))
async def test_balances_equal_a_plain_model_of_credits_and_spends(
    database_url, credits, spends, seed
):
    records: list[StoredRecord] = []
    # The model: per payment id, the valid credit of the smallest event id.
    winners: dict[str, tuple[uuid.UUID, str, int]] = {}
    for n, (customer, package, pid) in enumerate(credits):
        rec = credit_record(n, customer, package, pid)
        records.append(rec)
        tokens = CATALOGUE.tokens.get((package or "").lower(), 0)
        if customer and tokens:
            seen = winners.get(f"pay-{pid}")
            if seen is None or rec.id < seen[0]:
                winners[f"pay-{pid}"] = (rec.id, customer, tokens)
    credited = dict.fromkeys(CUSTOMERS, 0)
    for _, customer, tokens in winners.values():
        credited[customer] += tokens
    spent = dict.fromkeys(CUSTOMERS, 0)
    seen_keys: set[tuple[str, int]] = set()
    for customer, amount, k in spends:
        if (customer, k) in seen_keys:  # the log keeps one event per key
            continue
        seen_keys.add((customer, k))
        spent[customer] += amount
        ev = spend_event(customer, amount, f"k{k}", 0)
        records.append(StoredRecord(0, ev.id, 1, ev.topic, ev.state))
    rnd = random.Random(seed)
    rnd.shuffle(records)
    records = replay(records, list(range(len(records))))
    conn = await asyncpg.connect(database_url)
    try:
        name = schema("model")
        await fold(conn, TokenBalances(CATALOGUE), records, name, batch=rnd.randint(1, 10))
        rows = await query(conn, name, "SELECT customer, credited, spent FROM accounts")
        got = {r["customer"]: (r["credited"], r["spent"]) for r in rows}
        for customer in CUSTOMERS:
            want = (credited[customer], spent[customer])
            assert got.get(customer, (0, 0)) == want, (customer, got)
        await conn.execute(f'DROP SCHEMA "{name}" CASCADE')
    finally:
        await conn.close()
