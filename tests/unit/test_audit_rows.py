"""The audit index's fast path (``ledger.audit.rows``, ADR 0023) against the reference
``ledger.audit.index.interpret``: for every provider's sample bodies and for odd or hostile
stored events, ``index_row`` gives exactly the reference's row (same values, same types,
Decimals with the same digits) or raises exactly what the reference raises."""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.audit.index import index_row, interpret
from ledger.audit.rows import COLUMNS, StrictDelivery, delivery_row
from ledger.domain.events import (
    CHECKED_TOPIC,
    CONFLICTED_TOPIC,
    DELIVERY_TOPIC,
    OPERATOR_ACTION_TOPIC,
    QUARANTINED_TOPIC,
    RECEIVED_TOPIC,
    SPENT_TOPIC,
    DeliveryState,
)
from ledger.ingest.providers import mayar
from ledger.ingest.samples import MIDTRANS_STATUS_CODES
from ledger.store.eventstore import StoredRecord
from tests.support.db import signed

AT = datetime(2026, 2, 4, 23, 0, 0, 123456, tzinfo=UTC)
HASH = hashlib.sha256(b"chain").digest()
DELIVERY_TOPICS = (RECEIVED_TOPIC, QUARANTINED_TOPIC, CONFLICTED_TOPIC)


def exact(value: Any) -> Any:
    """A value compared exactly: the type, and a Decimal's digits (1.0 != 1.00 here)."""
    if isinstance(value, Decimal):
        return ("Decimal", str(value))
    if isinstance(value, datetime):
        return ("datetime", value.isoformat(), value.utcoffset())
    return (type(value).__name__, value)


def outcome(make: Any) -> Any:
    try:
        row = make()
    except Exception as exc:  # the outcome compared: what was raised
        return ("raises", type(exc), str(exc))
    return tuple(exact(v) for v in row)


def reference(rec: StoredRecord) -> Any:
    def make() -> tuple[Any, ...]:
        r = interpret(rec)
        return (*(getattr(r, c) for c in COLUMNS[:-1]), HASH)

    return outcome(make)


def fast(rec: StoredRecord) -> Any:
    return outcome(lambda: index_row(rec.position, rec.id, rec.version, rec.topic, rec.state, HASH))


def state(provider: str, body: bytes, **overrides: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "originator_topic": DELIVERY_TOPIC,
        "timestamp": AT.isoformat(),
        "provider": provider,
        "dedup_key": f"{provider}:k",
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
    return out


def rec(raw: bytes, topic: str = RECEIVED_TOPIC, position: int = 42) -> StoredRecord:
    return StoredRecord(position, uuid.UUID(int=position), 1, topic, raw)


def same(raw: bytes, topic: str = RECEIVED_TOPIC) -> Any:
    r = rec(raw, topic)
    expected = reference(r)
    assert fast(r) == expected, raw
    return expected


def samples() -> list[tuple[str, bytes]]:
    out = [("midtrans", signed("midtrans", ev).body) for ev in MIDTRANS_STATUS_CODES]
    out.append(("midtrans", signed("midtrans", "settlement", customer=" Ana@X.io ").body))
    out.append(("midtrans", signed("midtrans", "capture", fraud_status="challenge").body))
    out.append(("midtrans", signed("midtrans", "capture", fraud_status="deny").body))
    mayar_events = [*sorted(mayar.EVENTS), "membership.renewed", "no.such.event"]
    out += [("mayar", signed("mayar", ev, package="gold").body) for ev in mayar_events]
    xendit_events = ("PENDING", "PAID", "SETTLED", "EXPIRED", "FAILED", "UNKNOWN")
    out += [("xendit", signed("xendit", ev).body) for ev in xendit_events]
    partner_events = ("booking.paid", "booking.dp", "booking.cancelled", "booking.odd")
    out += [("partner", signed("partner", ev).body) for ev in partner_events]
    return out


@pytest.mark.parametrize("topic", DELIVERY_TOPICS)
def test_every_providers_samples_take_the_fast_path_to_the_same_row(topic):
    for provider, body in samples():
        raw = json.dumps(state(provider, body)).encode()
        assert delivery_row(42, uuid.UUID(int=42), topic, raw, HASH) is not None
        row = same(raw, topic)
        assert row[0] != "raises"


ODD_VALUES: list[Any] = [
    None,
    0,
    -1,
    10**40,
    1.5,
    "",
    " ",
    "\x00",
    "INV\x00NUL",
    "\u202e",
    "x" * 5000,
    [],
    {},
    [1, "a"],
    {"a": 1},
    True,
    "NaN",
    "Infinity",
    "-0.00",
    "1e999999",
    "150000.000",
    "١٢٣",
]


def fields_of(body: bytes) -> list[list[str]]:
    """Every path to a value of ``body``'s JSON object (one level of nesting)."""
    obj = json.loads(body)
    paths = []
    for k, v in obj.items():
        paths.append([k])
        if isinstance(v, dict):
            paths += [[k, k2] for k2 in v]
    return paths


def with_value(body: bytes, path: list[str], value: Any, *, drop: bool = False) -> bytes:
    obj = json.loads(body)
    target = obj
    for k in path[:-1]:
        target = target[k]
    if drop:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return json.dumps(obj).encode()


def test_odd_bodies_give_the_same_row_or_the_same_error():
    seen = 0
    for provider, body in samples()[::3]:
        for path in fields_of(body):
            variants = [with_value(body, path, None, drop=True)]
            variants += [with_value(body, path, v) for v in ODD_VALUES]
            for odd in variants:
                same(json.dumps(state(provider, odd)).encode())
                seen += 1
    assert seen > 1000


RAW_BODIES = [
    b"",
    b"not json",
    b"[]",
    b"null",
    b'{"order_id": "a"',
    b"\xff\xfe\x00",
    b'{"event": "payment.success", "data": {"amount": 1e400}}',
    b'{"event": "payment.success", "data": {"amount": 12345678901234567890123456789.5}}',
    b'{"event": "payment.success", "data": {"amount": "NaN"}}',
    b'{"event": "payment.success", "data": {"id": 7, "amount": -0.0}}',
    b'{"event": "payment.success", "event": "payment.failed", "data": {}}',
    b'{"event": "payment.success", "data": {"customerEmail": "\\u0000@x.io"}}',
    b'{"event": "payment.success", "data": {"customer": {"email": "B@Ex.io"}}}',
    b'{"event": "payment.success", "data": {"x": "\xff"}}',
    b'{"event": "payment.success", "data": {"x": 1e99999}}',
    b'{"status": "PAID", "amount": 1, "external_id": "\\ud800"}',
    b'{"order_id": "a", "order_id": "b"}',
]


@pytest.mark.parametrize("provider", ["midtrans", "xendit", "mayar", "partner", "acme", ""])
def test_raw_bodies_that_are_not_what_a_provider_sends(provider):
    for body in RAW_BODIES:
        same(json.dumps(state(provider, body)).encode())


def odd_states() -> list[bytes]:
    body = signed("midtrans", "settlement").body
    good = state("midtrans", body)
    out = [
        b"",
        b"{}",
        b"not json",
        b"\xff",
        json.dumps({**good, "unknown": 1}).encode(),
        json.dumps({**good, "unknown": 1e999}).encode().replace(b"Infinity", b"1e99999"),
        json.dumps({**good, "unknown": "x"}).encode().replace(b'"x"', b'"\xff"'),
        json.dumps(good).encode().replace(b'"fault": null', b'"fault": null, "kind": "again"'),
        json.dumps({**good, "body_b64": "!!!not base64"}).encode(),
        json.dumps({**good, "body_b64": "Zm9v"}).encode(),
        json.dumps({**good, "body_b64": "Zm9vYg"}).encode(),
        json.dumps({**good, "body_b64": "Zm9v\u00e9"}).encode(),
        json.dumps({**good, "body_b64": 5}).encode(),
        json.dumps({**good, "timestamp": "2026-02-04T23:00:00"}).encode(),
        json.dumps({**good, "timestamp": "2026-02-04T23:00:00+07:00"}).encode(),
        json.dumps({**good, "timestamp": "2026-02-04 23:00:00Z"}).encode(),
        json.dumps({**good, "timestamp": "yesterday"}).encode(),
        json.dumps({**good, "timestamp": 0}).encode(),
        json.dumps({**good, "headers": 5}).encode(),
        json.dumps({**good, "headers": {"a": 1}}).encode(),
        json.dumps({**good, "dedup_key": "a\u0000b"}).encode(),
        json.dumps({**good, "provider": None}).encode(),
        json.dumps({**good, "source": None, "fault": "why"}).encode(),
    ]
    for key in good:
        out.append(json.dumps({k: v for k, v in good.items() if k != key}).encode())
    return out


@pytest.mark.parametrize("topic", [*DELIVERY_TOPICS, OPERATOR_ACTION_TOPIC, CHECKED_TOPIC])
def test_odd_stored_states_give_the_same_row_or_the_same_error(topic):
    for raw in odd_states():
        same(raw, topic)


def test_other_events_take_the_reference_path():
    spent = {"timestamp": AT.isoformat(), "customer": " Budi@Example.com ", "amount": 3}
    for topic, raw in [
        (SPENT_TOPIC, json.dumps(spent).encode()),
        ("ledger.domain:Something.Else", b"[1, 2]"),
        ("no-colon", b"{}"),
    ]:
        assert delivery_row(42, uuid.UUID(int=42), topic, raw, HASH) is None
        same(raw, topic)


def test_a_time_with_an_offset_is_the_same_instant():
    body = signed("xendit", "PAID").body
    at = datetime(2026, 2, 5, 6, 0, tzinfo=timezone(timedelta(hours=7)))
    expected = same(json.dumps(state("xendit", body, timestamp=at.isoformat())).encode())
    assert expected[3][1] == at.isoformat()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(
    provider=st.sampled_from(["midtrans", "xendit", "mayar", "partner"]),
    pick=st.integers(min_value=0, max_value=10_000),
    value=json_values,
    drop=st.booleans(),
)
def test_a_body_with_any_field_replaced_gives_the_same_row(provider, pick, value, drop):
    bodies = [b for p, b in samples() if p == provider]
    body = bodies[pick % len(bodies)]
    paths = fields_of(body)
    odd = with_value(body, paths[pick % len(paths)], value, drop=drop)
    same(msgspec.json.encode(state(provider, odd)))


def test_the_strict_state_has_the_delivery_states_fields_and_types():
    def fields(struct: Any) -> list[tuple[str, Any, Any]]:
        return [(f.name, f.type, f.default) for f in msgspec.structs.fields(struct)]

    strict = fields(StrictDelivery)
    assert [f for f in strict if f[0] != "body_b64"] == [
        f for f in fields(DeliveryState) if f[0] != "body_b64"
    ]
    assert ("body_b64", bytes, msgspec.NODEFAULT) in strict
    assert ("body_b64", str, msgspec.NODEFAULT) in fields(DeliveryState)


B64 = st.text(
    alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=-_ \n\\é",
    max_size=24,
)


@settings(max_examples=500, deadline=None)
@given(text=B64 | st.binary(max_size=18).map(lambda b: base64.b64encode(b).decode()))
def test_base64_msgspec_reads_is_read_the_same_by_the_reference(text):
    """Where msgspec decodes a body, it is the bytes ``base64.b64decode`` gives; elsewhere
    the reference decides (and ``index_row`` agrees with it, as every test here checks)."""
    raw = msgspec.json.encode(state("midtrans", b"{}", body_b64=text))
    try:
        mine = msgspec.json.decode(raw, type=StrictDelivery).body_b64
    except msgspec.ValidationError:
        mine = None
    if mine is not None:
        assert mine == base64.b64decode(text)
    same(raw)
