"""eventsourcing's own PostgreSQL recorder and Mapper read the log the app writes.

Deliveries go in through the real HTTP app; then eventsourcing 9.5's
``PostgresApplicationRecorder`` (table creation off: our migrations own the schema) reads
``stored_events`` back, and its ``Mapper`` with our ``MsgspecTranscoder`` turns the rows into
``Delivery`` events that build ``Delivery`` aggregates (ADR 0001).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import uuid
from collections.abc import Iterator
from datetime import datetime
from urllib.parse import parse_qs, urlsplit

import asyncpg
import pytest
from eventsourcing.persistence import Mapper
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore

from ledger.domain.events import Delivery, MsgspecTranscoder, delivery_id
from ledger.ingest.providers.base import hmac_sha256_hex
from tests.support import SECRETS, signed


def datastore_for(url: str) -> PostgresDatastore:
    """psycopg connection parameters from our URL (embedded: the socket dir is ``?host=``)."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    return PostgresDatastore(
        dbname=parts.path.lstrip("/"),
        host=query.get("host", [parts.hostname or "127.0.0.1"])[0],
        port=parts.port or int(query.get("port", ["5432"])[0]),
        user=parts.username or "postgres",
        password=parts.password or "",
    )


@pytest.fixture
def recorder(database_url: str) -> Iterator[PostgresApplicationRecorder]:
    datastore = datastore_for(database_url)
    try:
        # Never create tables: constructing the recorder only reads type information.
        yield PostgresApplicationRecorder(datastore, events_table_name="stored_events")
    finally:
        datastore.close()


DELIVERIES = [
    ("midtrans", "settlement", {"order_id": "INV-compat-1", "amount": "299000.00"}),
    ("mayar", "payment.success", {"customer": "a@b.c", "package": "silver"}),
    ("xendit", "PAID", {}),
    ("partner", "booking.paid", {}),
]


async def test_eventsourcing_reads_what_the_app_wrote(client, database_url, recorder):
    acks = []
    sent = []
    for provider, event, kw in DELIVERIES:
        d = signed(provider, event, **kw)
        r = await client.post(d.path, content=d.body, headers=d.headers)
        assert r.status_code == 200, r.text
        acks.append(r.json())
        sent.append((provider, d.body))

    # The recorder's connection is blocking (psycopg); keep it off the event loop.
    notifications = await asyncio.to_thread(recorder.select_notifications, 1, 10)
    assert [n.id for n in notifications] == [a["position"] for a in acks]
    assert [str(n.originator_id) for n in notifications] == [a["event_id"] for a in acks]
    assert await asyncio.to_thread(recorder.max_notification_id) == acks[-1]["position"]

    mapper = Mapper(transcoder=MsgspecTranscoder())
    for n, (provider, body) in zip(notifications, sent, strict=True):
        event = mapper.to_domain_event(n)
        assert type(event) is Delivery.Received
        assert event.originator_version == 1
        assert event.provider == provider
        assert event.kind
        assert event.scheme
        assert event.dedup_key
        assert event.originator_id == delivery_id(event.dedup_key)
        assert base64.b64decode(event.body_b64) == body
        assert event.body_sha256 == hashlib.sha256(body).hexdigest()
        assert isinstance(event.timestamp, datetime)
        assert event.timestamp.tzinfo is not None
        assert event.fault is None
        assert event.original_event_id is None

        aggregate = event.mutate(None)
        assert isinstance(aggregate, Delivery)
        assert aggregate.id == n.originator_id
        assert aggregate.version == 1
        assert aggregate.provider == provider
        assert base64.b64decode(aggregate.body_b64) == body
        assert aggregate.created_on == event.timestamp

    # Reading did not create or change anything: still only our migrations' tables.
    conn = await asyncpg.connect(database_url)
    try:
        tables = {
            r[0]
            for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        }
        functions = await conn.fetchval(
            "SELECT count(*) FROM pg_proc WHERE proname LIKE 'es_insert_events%'"
        )
    finally:
        await conn.close()
    assert "stored_events" in tables
    assert not {t for t in tables if t.startswith(("tracking", "notification_tracking"))}
    assert functions == 0


async def test_select_notifications_pages_and_filters_like_the_feed(client, database_url, recorder):
    positions = []
    for i in range(5):
        d = signed("midtrans", "settlement", order_id=f"INV-page-{i}")
        r = await client.post(d.path, content=d.body, headers=d.headers)
        positions.append(r.json()["position"])
    page = await asyncio.to_thread(
        recorder.select_notifications, positions[1], 2, None, (), inclusive_of_start=False
    )
    assert [n.id for n in page] == positions[2:4]
    only_received = await asyncio.to_thread(
        recorder.select_notifications, 1, 10, None, ["ledger.domain:Delivery.Received"]
    )
    assert [n.id for n in only_received] == positions
    assert all(isinstance(n.originator_id, uuid.UUID) for n in only_received)


async def test_a_quarantined_delivery_maps_to_its_own_event_class(client, recorder):
    body = b"not json at all"
    headers = {
        "content-type": "application/json",
        "x-pwa-signature": hmac_sha256_hex(SECRETS["LEDGER_PARTNER_SECRET"], body),
    }
    r = await client.post("/webhooks/partner", content=body, headers=headers)
    assert r.status_code == 400, r.text
    [n] = await asyncio.to_thread(recorder.select_notifications, 1, 10)
    assert n.id == r.json()["position"]
    event = Mapper(transcoder=MsgspecTranscoder()).to_domain_event(n)
    assert type(event) is Delivery.Quarantined
    assert event.fault
    assert "partner body" in event.fault
    assert base64.b64decode(event.body_b64) == body
    assert isinstance(event.mutate(None), Delivery)


async def test_a_status_api_answer_maps_to_reconciliation_checked(database_url, recorder):
    """ADR 0017: ``Reconciliation.Checked`` is an eventsourcing event like the others."""
    from ledger.domain.events import Reconciliation
    from ledger.reconcile.answers import Reading
    from ledger.reconcile.check import checked_event
    from ledger.reconcile.clients import Answer
    from ledger.store.eventstore import EventStore

    body = b'{"status_code":"404","status_message":"Transaction doesn\'t exist."}'
    event = checked_event(
        Answer("midtrans", "INV-compat-9", 200, body), Reading("unknown_order", "404"), "c-1"
    )
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=1)
    try:
        [appended] = await EventStore(pool).append_many([event])
    finally:
        await pool.close()
    [n] = await asyncio.to_thread(recorder.select_notifications, appended.position, 1)
    domain_event = Mapper(transcoder=MsgspecTranscoder()).to_domain_event(n)
    assert type(domain_event) is Reconciliation.Checked
    assert (domain_event.provider, domain_event.order_id, domain_event.reading) == (
        "midtrans",
        "INV-compat-9",
        "unknown_order",
    )
    assert domain_event.body_sha256 == hashlib.sha256(body).hexdigest()
    assert base64.b64decode(domain_event.body_b64) == body
    assert isinstance(domain_event.mutate(None), Reconciliation)


def _sample(state_cls: type, topic: str) -> object:
    """A state with a distinct value in every field (how the app stores it)."""
    from datetime import UTC

    import msgspec

    values: dict[str, object] = {"originator_topic": topic.rpartition(".")[0]}
    values["timestamp"] = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    for f in msgspec.structs.fields(state_cls):
        if f.name in values:
            continue
        kind = str(f.type)
        if "int" in kind:
            values[f.name] = len(f.name)
        elif "dict" in kind:
            values[f.name] = {"k": f.name}
        else:
            values[f.name] = f"v-{f.name}"
    return state_cls(**values)


def _every_stored_event() -> list[tuple[str, type, type]]:
    """(topic, state Struct, event class) for every creation event the app stores."""
    from ledger.domain import events, orders

    return [
        (events.RECEIVED_TOPIC, events.DeliveryState, events.Delivery.Received),
        (events.QUARANTINED_TOPIC, events.DeliveryState, events.Delivery.Quarantined),
        (events.CONFLICTED_TOPIC, events.DeliveryState, events.Delivery.Conflicted),
        (events.OPERATOR_ACTION_TOPIC, events.OperatorActionState, events.OperatorAction.Recorded),
        (events.SPENT_TOPIC, events.SpendState, events.TokenSpend.Spent),
        (events.CHECKED_TOPIC, events.CheckedState, events.Reconciliation.Checked),
        (orders.REGISTERED_TOPIC, orders.RegisteredState, orders.OrderRegistration.Registered),
    ]


@pytest.mark.parametrize(
    ("topic", "state_cls", "event_cls"),
    _every_stored_event(),
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_every_stored_state_maps_to_its_event_and_aggregate(topic, state_cls, event_cls):
    """The aggregates are derived from the state Structs (``aggregate_for``): each stored
    state still maps, field for field, to the event its topic names and to its aggregate,
    and the topics are the permanent ones."""
    import msgspec
    from eventsourcing.persistence import StoredEvent
    from eventsourcing.utils import resolve_topic

    assert resolve_topic(topic) is event_cls
    state = _sample(state_cls, topic)
    raw = msgspec.json.encode(state)
    eid = uuid.uuid4()
    event = Mapper(transcoder=MsgspecTranscoder()).to_domain_event(
        StoredEvent(originator_id=eid, originator_version=1, topic=topic, state=raw)
    )
    assert type(event) is event_cls
    fields = msgspec.structs.asdict(state)
    assert {name: getattr(event, name) for name in fields} == fields
    aggregate = event.mutate(None)
    assert type(aggregate) is resolve_topic(state.originator_topic)
    assert (aggregate.id, aggregate.version, aggregate.created_on) == (eid, 1, state.timestamp)
    own = {n: v for n, v in fields.items() if n not in ("originator_topic", "timestamp")}
    assert {name: getattr(aggregate, name) for name in own} == own
