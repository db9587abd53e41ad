"""Payment facts read from the log, and the live stream of them across processes.

``payment_fact(record)`` turns one stored delivery into what operators and the outbox care
about (order, status, amount, customer), decoding the raw body with the provider's own
prebuilt decoder. ``StreamHub`` wakes SSE clients when anything is appended, in any process:
the log's insert trigger already runs ``pg_notify('ledger_events', position)``, and the hub
LISTENs on that channel through litestar channels' asyncpg backend. Clients then read the
log after their last position, so the feed is gap-free and resumable by position.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections.abc import AsyncIterator
from decimal import Decimal

import msgspec
from litestar.channels.backends.asyncpg import AsyncPgChannelsBackend

from ledger.domain.events import (
    CONFLICTED_TOPIC,
    DELIVERY_TOPICS,
    QUARANTINED_TOPIC,
    decode_delivery,
)
from ledger.ingest.providers import mayar, midtrans, partner, xendit
from ledger.payments import orderstatus
from ledger.payments.customers import customer_key
from ledger.store.eventstore import EventStore, StoredRecord

log = logging.getLogger("ledger.live.hub")

CHANNEL = "ledger_events"  # notified by the log's insert trigger (migration 0001)

MAYAR_STATUS = {
    "payment.success": "paid",
    "payment.received": "paid",
    "payment.created": "pending",
    "payment.pending": "pending",
    "payment.failed": "failed",
    "payment.expired": "failed",
}


class PaymentFact(msgspec.Struct, kw_only=True):
    """One delivery as the feed and the outbox see it. Amounts are decimal strings."""

    position: int
    event_id: str
    recorded_at: str
    provider: str
    kind: str
    state: str  # received | quarantined | conflicted
    order_id: str | None = None
    status: str | None = None  # paid, pending, failed, refunded, ... (None: not a payment)
    amount: str | None = None
    paid_amount: str | None = None
    currency: str | None = None
    customer: str | None = None
    payment_method: str | None = None
    invoice_id: str | None = None
    payment_id: str | None = None


def _dec(value: Decimal | str | None) -> str | None:
    return None if value is None else str(value)


def _email(raw: str | None) -> str | None:
    return customer_key(raw)  # the service's one rule (ledger.payments.customers)


def payment_fact(rec: StoredRecord) -> PaymentFact | None:
    """The fact for a delivery event; None for other topics. Never raises on odd bodies:
    a body its provider cannot decode (quarantined) yields a fact with no order."""
    if rec.topic not in DELIVERY_TOPICS:
        return None
    st = decode_delivery(rec.state)
    state = (
        "quarantined"
        if rec.topic == QUARANTINED_TOPIC
        else "conflicted"
        if rec.topic == CONFLICTED_TOPIC
        else "received"
    )
    fact = PaymentFact(
        position=rec.position,
        event_id=str(rec.id),
        recorded_at=st.timestamp.isoformat(),
        provider=st.provider,
        kind=st.kind,
        state=state,
    )
    body = base64.b64decode(st.body_b64)
    # Quarantined bodies may not decode: the fact still says who sent what, and when.
    with contextlib.suppress(msgspec.DecodeError, ValueError):
        _fill(fact, st.provider, body)
    return fact


def _fill(fact: PaymentFact, provider: str, body: bytes) -> None:
    if provider == "midtrans":
        n = midtrans.DECODER.decode(body)
        fact.order_id = n.order_id
        # One mapping for the whole service (capture depends on fraud_status).
        with contextlib.suppress(orderstatus.UnknownStatus):
            fact.status = orderstatus.midtrans_status(n.transaction_status, n.fraud_status)
        fact.amount = n.gross_amount
        fact.paid_amount = n.gross_amount if fact.status == "paid" else None
        fact.currency = n.currency
        fact.customer = _email(n.customer_email)
        fact.payment_method = n.payment_type
        fact.payment_id = n.transaction_id
    elif provider == "xendit":
        inv = xendit.DECODER.decode(body)
        fact.order_id = inv.external_id
        with contextlib.suppress(orderstatus.UnknownStatus):
            fact.status = orderstatus.xendit_status(inv.status)
        fact.amount = _dec(inv.amount)
        paid = inv.paid_amount if inv.paid_amount is not None else inv.amount
        fact.paid_amount = _dec(paid) if fact.status == "paid" else None
        fact.currency = inv.currency
        fact.customer = _email(inv.payer_email)
        fact.payment_method = inv.payment_channel or inv.payment_method
        fact.invoice_id = inv.id
        fact.payment_id = inv.payment_id
    elif provider == "mayar":
        hook = mayar.DECODER.decode(body)
        fact.order_id = None if hook.data.id is None else str(hook.data.id)
        fact.status = MAYAR_STATUS.get(hook.event)
        fact.amount = _dec(hook.data.amount)
        fact.paid_amount = fact.amount if fact.status == "paid" else None
        fact.customer = hook.data.email
    elif provider == "partner":
        upd = partner.DECODER.decode(body)
        fact.order_id = upd.booking_id
        with contextlib.suppress(orderstatus.UnknownStatus):
            fact.status = orderstatus.partner_status(upd.event, upd.status)
        fact.paid_amount = _dec(upd.paid_amount)
        fact.payment_method = upd.payment_method


# What decoding one odd stored event can raise (binascii.Error is a ValueError).
UNREADABLE = (msgspec.DecodeError, ValueError, TypeError, KeyError, AttributeError, OverflowError)


def _readable_fact(rec: StoredRecord) -> PaymentFact | None:
    """``payment_fact``, or None for an event it fails on (e.g. a body that is not base64):
    one event never ends every client's feed at the same place (ADR 0010). The feed has no
    tracking row to record it in; the audit index sets the same event aside, visibly."""
    try:
        return payment_fact(rec)
    except UNREADABLE as exc:
        log.warning(
            "stream: skipped the event at position %d: %s", rec.position, type(exc).__name__
        )
        return None


class StreamHub:
    """Per process: one LISTEN connection; every SSE client waits on its own wake-up."""

    def __init__(self, dsn: str, store: EventStore) -> None:
        self.store = store
        self._backend = AsyncPgChannelsBackend(dsn=dsn)
        self._waiters: set[asyncio.Event] = set()
        self._task: asyncio.Task[None] | None = None
        self.closed = False

    async def start(self) -> None:
        await self._backend.on_startup()
        await self._backend.subscribe([CHANNEL])
        self._task = asyncio.create_task(self._pump(), name="stream-hub")

    async def stop(self) -> None:
        self.closed = True  # open streams end, so the server can shut down
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(OSError, RuntimeError):
            await self._backend.on_shutdown()
        self.wake_all()

    async def _pump(self) -> None:
        async for _channel, _payload in self._backend.stream_events():
            self.wake_all()

    def wake_all(self) -> None:
        for ev in self._waiters:
            ev.set()

    async def follow(
        self,
        after: int,
        *,
        batch: int = 500,
        keepalive: float = 15.0,
        max_seconds: float | None = None,
    ) -> AsyncIterator[PaymentFact | None]:
        """Facts after position ``after`` in log order; None means "idle, send a ping".

        Ends when the hub stops or after ``max_seconds``: the client reconnects with
        ``Last-Event-ID`` and misses nothing, and a server shutdown never waits on a stream
        for longer than that."""
        wake = asyncio.Event()
        self._waiters.add(wake)
        last = after
        loop = asyncio.get_running_loop()
        until = loop.time() + max_seconds if max_seconds else None
        try:
            while not self.closed:
                wake.clear()  # before reading: a notify during the read wakes us again
                rows = await self.store.read_after(last, batch, DELIVERY_TOPICS)
                for rec in rows:
                    last = rec.position
                    fact = _readable_fact(rec)
                    if fact is not None:
                        yield fact
                if len(rows) == batch:
                    continue
                wait = keepalive
                if until is not None:
                    wait = until - loop.time()
                    if wait <= 0:
                        return
                    wait = min(wait, keepalive)
                try:
                    await asyncio.wait_for(wake.wait(), wait)
                except TimeoutError:
                    yield None
        finally:
            self._waiters.discard(wake)
