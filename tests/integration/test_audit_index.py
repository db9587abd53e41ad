"""The audit index's catch-up against the real database (ADR 0023): in pages with the next
page read ahead, written with COPY, it holds exactly the rows the reference ``interpret``
gives for every event, sets aside what PostgreSQL cannot hold, tolerates a position reset
over a full index, and two catch-ups at once index every event once."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from ledger.audit import index as audit
from ledger.audit.rows import COLUMNS
from ledger.database import create_pool
from ledger.domain.events import (
    CONFLICTED_TOPIC,
    DELIVERY_TOPIC,
    QUARANTINED_TOPIC,
    RECEIVED_TOPIC,
    SPENT_TOPIC,
)
from ledger.readmodels import poison
from ledger.store.eventstore import StoredRecord
from tests.support import PATIENCE
from tests.support.db import fetch, signed
from tests.support.readmodels import append

AT = datetime(2026, 2, 4, 23, 0, 0, 123456, tzinfo=UTC)


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await create_pool(database_url, min_size=1, max_size=4)
    yield p
    await p.close()


def state(provider: str, body: bytes, **overrides: Any) -> bytes:
    out: dict[str, Any] = {
        "originator_topic": DELIVERY_TOPIC,
        "timestamp": AT.isoformat(),
        "provider": provider,
        "dedup_key": f"{provider}:{uuid.uuid4()}",
        "kind": "test",
        "source": "127.0.0.1",
        "scheme": "test",
        "headers": {"content-type": "application/json"},
        "body_sha256": hashlib.sha256(body).hexdigest(),
        "body_b64": base64.b64encode(body).decode(),
        "fault": None,
        "original_event_id": None,
    }
    out.update(overrides)
    return json.dumps(out).encode()


def events() -> list[tuple[bytes, str]]:
    """Every provider's samples under each delivery topic, and odd events."""
    out = []
    for topic in (RECEIVED_TOPIC, QUARANTINED_TOPIC, CONFLICTED_TOPIC):
        out += [
            (state("midtrans", signed("midtrans", "settlement").body), topic),
            (state("midtrans", signed("midtrans", "pending", customer="A@B.io").body), topic),
            (state("xendit", signed("xendit", "PAID", amount="32000").body), topic),
            (state("mayar", signed("mayar", "payment.success", package="gold").body), topic),
            (state("partner", signed("partner", "booking.paid").body), topic),
        ]
    nul = signed("midtrans", "settlement", order_id="INV\x00NUL").body
    out += [
        (state("midtrans", nul), RECEIVED_TOPIC),  # text cannot hold NUL: set aside
        (
            state("mayar", b'{"event": "payment.success", "data": {"amount": 1e400}}'),
            RECEIVED_TOPIC,
        ),
        (state("xendit", b"not json"), QUARANTINED_TOPIC),
        # numeric cannot hold it: set aside
        (
            state("mayar", b'{"event": "payment.success", "data": {"amount": 1e999999}}'),
            RECEIVED_TOPIC,
        ),
        (state("midtrans", b"{}", unknown_field=[1, 2]), RECEIVED_TOPIC),
        (state("midtrans", b"{}", body_b64="Zm9vYg"), RECEIVED_TOPIC),  # not base64: set aside
        (state("midtrans", b"{}", timestamp="2026-02-04T23:00:00+07:00"), RECEIVED_TOPIC),
        (b"{}", RECEIVED_TOPIC),  # not a delivery state: set aside
        (json.dumps({"timestamp": AT.isoformat(), "customer": "Ana@X.io"}).encode(), SPENT_TOPIC),
        (b"[1]", "ledger.domain:Something.Else"),
    ]
    return out


def expected(rec: StoredRecord, chain_hash: bytes) -> tuple[Any, ...] | None:
    """The reference row; None for an event that cannot be indexed."""
    try:
        r = audit.interpret(rec)
    except Exception:  # the reference cannot interpret it: it is set aside
        return None
    row = (*(getattr(r, c) for c in COLUMNS[:-1]), chain_hash)
    if any(isinstance(v, str) and "\x00" in v for v in row):
        return None
    if any(isinstance(v, Decimal) and abs(v.adjusted()) > 200_000 for v in row):
        return None
    return row


def exact(row: Any) -> tuple[Any, ...]:
    """Amounts in PostgreSQL's text form: the digits and scale it holds."""
    return tuple(format(v, "f") if isinstance(v, Decimal) else v for v in row)


async def check_against_the_reference(url: str) -> set[int]:
    """Every indexed row is the reference's; return the positions set aside."""
    log = await fetch(
        url,
        "SELECT notification_id, originator_id, originator_version, topic, state, hash "
        "FROM stored_events ORDER BY notification_id",
    )
    # Amounts as PostgreSQL writes them (asyncpg reads 50000 back as Decimal('5E+4')).
    index = {
        r["position"]: r
        for r in await fetch(
            url,
            "SELECT position, event_id, topic, received_at, category, provider, kind, "
            "dedup_key, customer, order_id, status, amount::text AS amount, "
            "paid_amount::text AS paid_amount, currency, body_sha256, actor, target, hash "
            "FROM audit_index",
        )
    }
    aside = set()
    for e in log:
        want = expected(StoredRecord(e[0], e[1], e[2], e[3], bytes(e[4])), e[5])
        if want is None:
            aside.add(e[0])
            assert e[0] not in index
        else:
            got = index[e[0]]
            assert exact([got[c] for c in COLUMNS]) == exact(want), e[0]
    poisoned = await fetch(url, "SELECT position FROM poisoned_events WHERE consumer = $1",
                           poison.AUDIT_INDEX)  # fmt: skip
    assert {p[0] for p in poisoned} == aside
    return aside


async def test_pages_read_ahead_hold_the_reference_rows(database_url, pool):
    made = events()
    rows = await append(database_url, [s for s, _ in made], [t for _, t in made])
    assert await audit.catch_up(pool, page=4, backoff=0.01) == rows[-1][0]
    aside = await check_against_the_reference(database_url)
    assert len(aside) == 4
    # Caught up: nothing more to do, nothing read twice.
    assert await audit.catch_up(pool, page=4) == rows[-1][0]


async def test_a_position_reset_over_a_full_index_skips_what_is_indexed(database_url, pool):
    states = [state("midtrans", signed("midtrans", "settlement").body) for _ in range(12)]
    rows = await append(database_url, states)
    await audit.catch_up(pool, page=5)
    before = await fetch(database_url, "SELECT * FROM audit_index ORDER BY position")
    await pool.execute("UPDATE audit_index_tracking SET position = 0")
    more = await append(database_url, states[:3])
    assert await audit.catch_up(pool, page=5, backoff=0.01) == more[-1][0]
    after = await fetch(database_url, "SELECT * FROM audit_index ORDER BY position")
    assert after[: len(rows)] == before
    assert [r["position"] for r in after] == [r[0] for r in rows + more]
    assert await check_against_the_reference(database_url) == set()


async def test_two_catch_ups_at_once_index_every_event_once(database_url, pool):
    states = [state("xendit", signed("xendit", "PAID").body) for _ in range(40)]
    rows = await append(database_url, states)
    results = await asyncio.gather(*(audit.catch_up(pool, page=3) for _ in range(2)))
    assert results == [rows[-1][0]] * 2
    assert await check_against_the_reference(database_url) == set()


async def test_only_one_catch_up_per_pool_reads_ahead(database_url):
    """Two connections are enough for two catch-ups far behind: only one of them takes a
    second connection to read ahead (were both to, each would wait for the other's)."""
    states = [state("midtrans", signed("midtrans", "settlement").body) for _ in range(30)]
    rows = await append(database_url, states)
    small = await create_pool(database_url, min_size=1, max_size=2)
    try:
        both = asyncio.gather(*(audit.catch_up(small, page=3) for _ in range(2)))
        assert await asyncio.wait_for(both, PATIENCE) == [rows[-1][0]] * 2
    finally:
        await small.close()
    assert await check_against_the_reference(database_url) == set()
