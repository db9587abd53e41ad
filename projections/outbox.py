"""The outbox projector: turns paid orders in the log into outbox messages, exactly once.

Run by the projection runner, so its writes commit with its tracking position. Messages go
to ``public.outbox`` (not the generation schema) under deterministic ids
``uuid5(source event id | kind | target)`` with ``ON CONFLICT DO NOTHING``: replaying or
rebuilding derives the same ids and sends nothing twice (ADR 0007). Bodies are built in
``ledger.outbox.messages``; the rules below live in ``ledger.outbox.effects``; what each
event says is read once, in ``ledger.outbox.reading`` (ADR 0022).

It reads three topics: deliveries, the answers of the providers' status APIs
(``Reconciliation.Checked``, ADR 0017) and registered orders (``OrderRegistration.Registered``,
ADR 0016), whose customer, ``booking_id`` and expected amount and currency it keeps in its own
generation table (``registrations``). Messages, each only when its target is configured:

- ``email``: "Payment received" to the customer on the order's first transition to paid.
  The address is the registered customer's when the order is registered (the merchant's
  own record of who ordered wins over whatever a payer typed at the provider), else the
  notification's. Real Midtrans notifications carry none: if the order is paid before it
  is registered and no address was known, the e-mail is owed and goes out when the
  registration arrives, once (its id derives from the registration event).
- ``revalidate``: the order's pages (seed 001) on the first transition to paid, for shop
  orders only: never for Mayar, whose ids are payment ids, not shop orders.
- ``partner``: ``booking.paid`` (first report) / ``booking.updated`` (a later change of
  status or paid amount) for an order of a booking provider (``partner_booking_providers``,
  default Xendit), under the registered ``booking_id`` when there is one, else the
  provider's order id. ``LUNAS`` only when the paid amount (the most any paid fact said)
  reaches the expected one (registered, else the provider's stated total); else ``DP``.
  The bytes are fixed here and signed by the dispatcher at send time.

Only payments that mean something have effects:

- Mayar: a payment makes messages only when the token credit rules
  (``ledger.payments.rules.classify_payment``, the catalogue ``token_balances`` uses)
  credit something. A payment for an unknown package, without a customer or at the wrong
  price credits nothing and sits in review: no e-mail (and never a revalidation).
- The amount rule (``ledger.payments.orderstatus.settle``): an ``amount_mismatch`` order
  (more than expected, or another currency) gets no e-mail, no revalidation and no
  partner message; the order view lists it as ``amount_mismatch`` and this projection
  keeps why in ``orders.withheld``. A ``partially_paid`` order (a down payment) is paid
  money: e-mail and revalidation on the first payment, ``DP`` to the partner.
- A verified answer of a status API that reads ``paid`` (a missed webhook recovered by
  ``ledger reconcile`` or the reconciler) has exactly the effects the webhook would have had.
  The first-paid state is kept per order, not per event, so whichever of the answer and a
  late webhook comes first makes the messages and the other makes none. A Midtrans answer
  carries no address: the registration gives it.

A registration that arrives after the order was paid changes no message already derived
(the partner sync keeps the id it was sent under); it only settles an owed e-mail.

Old news is not re-sent: an event older than ``max_age`` is folded (the state stays exact)
but makes no message, so a rebuild after a target was added (or its URL changed, which
changes the ids) does not mail every customer of the past.

The admin live feed reads the log itself (``/v1/stream``), so it needs no message here.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from ledger.config import Settings
from ledger.database import Conn
from ledger.domain.events import CHECKED_TOPIC, RECEIVED_TOPIC
from ledger.domain.orders import REGISTERED_TOPIC
from ledger.errors import NotConfigured
from ledger.outbox.effects import OrderState, Registration, Where, on_paid, on_registered
from ledger.outbox.messages import message_hex
from ledger.outbox.reading import Item, Unstorable, read
from ledger.payments.rules import Catalogue
from ledger.sql import load
from ledger.store.eventstore import StoredRecord

__all__ = ["PROJECTION", "SQL", "OutboxProjection", "Targets", "Unstorable", "stored"]

SQL = load(Path(__file__).with_suffix(".sql"))


@dataclass(frozen=True)
class Targets:
    """Where messages may go; a target that is not configured produces no messages.
    ``catalogue``: the token packages, to judge whether a Mayar payment credits anything
    (the same settings the ``token_balances`` projection reads)."""

    partner_url: str | None = None
    booking_providers: frozenset[str] = frozenset({"xendit"})
    email_from: str | None = None
    revalidate_url: str | None = None
    max_age: float = 7 * 86400.0  # seconds; 0: no limit
    catalogue: Catalogue = field(default_factory=Catalogue)

    @classmethod
    def from_settings(cls, s: Settings) -> Targets:
        return cls(
            partner_url=s.partner_sync_url
            if s.partner_sync_url and s.partner_sync_secret
            else None,
            booking_providers=frozenset(
                p.strip() for p in s.partner_booking_providers.split(",") if p.strip()
            ),
            email_from=s.smtp_from if s.smtp_url else None,
            revalidate_url=s.revalidate_url,
            max_age=s.outbox_max_age,
            catalogue=Catalogue.of(s.token_packages, s.package_prices),
        )

    @property
    def where(self) -> Where:
        return Where(self.partner_url, self.booking_providers, self.email_from, self.revalidate_url)


def _state(row: Any) -> OrderState:
    return OrderState(
        first_paid=row["first_paid_position"],
        partner_status=row["partner_status"],
        partner_paid=row["partner_paid_amount"],
        paid=row["paid_amount"],
        owed=row["email_owed"],
        withheld=row["withheld"],
    )


def _registration(row: Any) -> Registration | None:
    if row["reg_customer"] is None:
        return None
    return Registration(
        row["reg_customer"], row["reg_booking_id"], row["reg_amount"], row["reg_currency"]
    )


# PostgreSQL's numeric: digits before and after the point it keeps (its documented limits).
_NUMERIC_WEIGHT = 131072
_NUMERIC_SCALE = 16383
_NAN, _ZERO = Decimal("NaN"), Decimal(0)


def stored(d: Decimal | None) -> Decimal | None:
    """``d`` as it reads after a round trip through a numeric column (asyncpg's codec), so
    that folding in memory sees what reading the row back would have shown: no negative
    zero, the scale kept, an integer's trailing groups of four zeros in the exponent
    (``100000`` reads ``1.0E+5``), NaN for sNaN. Out of numeric's range: ``Unstorable``.
    Remembered by the value's text (which tells apart every sign, digit and exponent):
    a rebuild stores the same few amounts over and over."""
    if d is None or d.is_infinite():
        return d
    key = str(d)
    got = _STORED.get(key)
    if got is None:
        got = _stored(d)
        if len(_STORED) >= 4096:
            _STORED.clear()
        _STORED[key] = got
    return got


_STORED: dict[str, Decimal] = {}


def _stored(d: Decimal) -> Decimal:
    if d.is_nan():
        return _NAN
    sign, digits, exponent = d.as_tuple()
    assert isinstance(exponent, int)
    if exponent < -_NUMERIC_SCALE or (d and d.adjusted() >= _NUMERIC_WEIGHT):
        raise Unstorable(f"numeric value out of range: {d:.6E}")
    if exponent < 0:
        return d.copy_abs() if sign and d.is_zero() else d
    if exponent == 0 and digits[-1] != 0:
        return d  # the usual case: nothing to normalize
    whole, groups = abs(int(d)), 0
    if whole == 0:
        return _ZERO
    while whole % 10000 == 0:
        whole //= 10000
        groups += 1
    return Decimal((sign, tuple(int(c) for c in str(whole)), 4 * groups))


def _stored_state(state: OrderState, before: OrderState | None) -> OrderState:
    """``state`` with its amounts as a round trip gives them back (``before``'s already are)."""
    paid, partner_paid = state.paid, state.partner_paid
    if before is None or paid is not before.paid:
        paid = stored(paid)
    if before is None or partner_paid is not before.partner_paid:
        partner_paid = stored(partner_paid)
    if paid is state.paid and partner_paid is state.partner_paid:
        return state
    return OrderState(
        state.first_paid, state.partner_status, partner_paid, paid, state.owed, state.withheld
    )


@dataclass(slots=True)
class Fold:
    """A batch's orders in memory: their states (None: no row yet) and registrations (the
    kept one, the first), read in one statement; what changed, to write in one each."""

    states: dict[str, OrderState | None]
    kept: dict[str, Registration | None]
    changed: set[str] = field(default_factory=set)
    registered: dict[str, Registration] = field(default_factory=dict)

    @classmethod
    async def read(cls, conn: Conn, refs: list[str]) -> Fold:
        states: dict[str, OrderState | None] = {}
        kept: dict[str, Registration | None] = {}
        for row in await conn.fetch(SQL["get_orders"], refs):
            ref = row["order_ref"]
            states[ref] = _state(row) if row["known"] else None
            kept[ref] = _registration(row)
        return cls(states, kept)

    async def write(self, conn: Conn) -> None:
        if self.registered:
            regs = list(self.registered.items())
            await conn.execute(
                SQL["insert_registrations"],
                [ref for ref, _ in regs],
                [r.customer for _, r in regs],
                [r.booking_id for _, r in regs],
                [r.amount for _, r in regs],
                [r.currency for _, r in regs],
            )
        if self.changed:
            refs = sorted(self.changed)
            states = [self.states[ref] or OrderState() for ref in refs]
            await conn.execute(
                SQL["upsert_orders"],
                refs,
                [s.first_paid for s in states],
                [s.partner_status for s in states],
                [s.partner_paid for s in states],
                [s.paid for s in states],
                [s.owed for s in states],
                [s.withheld for s in states],
            )


class OutboxProjection:
    name = "outbox"
    # 2: registrations (ADR 0016), status-API answers (ADR 0017), the amount rule, Mayar
    # payments only when credited, no revalidation for Mayar
    version = 2
    topics = (RECEIVED_TOPIC, CHECKED_TOPIC, REGISTERED_TOPIC)
    schema_sql = SQL["schema"]
    queries = SQL
    # Fold items per step of a batch (``apply``): each step's messages are inserted while
    # the next step is folded.
    chunk = 512

    def __init__(self, targets: Targets | None = None) -> None:
        self._targets = targets

    def configure(self, targets: Targets) -> None:
        """Called by the composition root (``ledger.app``) with this process's settings."""
        self._targets = targets

    @property
    def targets(self) -> Targets:
        """Never read from the environment here: an unconfigured projection is a fault of
        the deployment (retried, never the events' fault), not a reason to guess."""
        if self._targets is None:
            raise NotConfigured("the outbox projection's targets were not configured")
        return self._targets

    async def apply(self, conn: Conn, records: Sequence[StoredRecord]) -> None:
        """Fold the batch in log order in memory, with a bounded number of statements: one
        read of every order the batch names, one insert of messages per ``chunk`` items,
        then one write each of registrations and order states. The same result as folding
        the events one by one with a round trip each (as before;
        ``tests/integration/test_outbox_batch.py``). A chunk's messages are inserted while
        the next chunk is folded: PostgreSQL works while Python does."""
        t = self.targets
        items = read(records, t.catalogue)
        if not items:
            return
        fold = await Fold.read(conn, sorted({item[1] for item in items}))
        now = datetime.now(UTC)  # old news: one reading of the clock per batch
        sending: asyncio.Task[str] | None = None
        try:
            for start in range(0, len(items), self.chunk):
                columns = self._fold(fold, items[start : start + self.chunk], now)
                if sending is not None:  # one statement at a time on a connection
                    await sending
                    sending = None
                if columns[0]:
                    insert = conn.execute(SQL["insert_messages"], *columns)
                    sending = asyncio.ensure_future(insert)
                    await asyncio.sleep(0)  # sent: the next chunk is folded meanwhile
        except BaseException:
            if sending is not None:  # the connection is free again before the rollback
                with contextlib.suppress(Exception):
                    await sending
            raise
        if sending is not None:
            await sending
        await fold.write(conn)

    def _fold(self, fold: Fold, items: list[Item], now: datetime) -> tuple[list[Any], ...]:
        """Fold ``items`` in log order; the messages they make, as the columns of
        ``insert_messages``: id (hex), kind, target, source event id and position, order
        ref, customer, payload."""
        where, max_age = self.targets.where, self.targets.max_age
        states, kept, changed = fold.states, fold.kept, fold.changed
        columns: tuple[list[Any], ...] = ([], [], [], [], [], [], [], [])
        ids, kinds, targets, sources, positions, refs, customers, payloads = columns
        for rec, ref, what, at in items:
            state = before = states[ref]
            if isinstance(what, Registration):
                if kept[ref] is None:  # the first registration stands
                    kept[ref] = fold.registered[ref] = what
                if state is None or state.owed is None:  # no e-mail owed
                    continue
                state, out = on_registered(what, state, where)
                customer: str | None = what.customer
            else:
                known = kept[ref]
                state, out = on_paid(what, known, state or OrderState(), where)
                customer = known.customer if known else what.customer
            states[ref] = _stored_state(state, before)
            changed.add(ref)
            if max_age and (now - at).total_seconds() > max_age:
                # Old news: a rebuild after a target was added (or its URL changed, which
                # changes the ids) must not mail every customer of the past or re-sync every
                # old booking. The fold above still happens, so the state stays exact.
                continue
            if out:
                event_id = str(rec.id)
                for kind, target, payload in out:
                    ids.append(message_hex(event_id, kind, target))
                    kinds.append(kind)
                    targets.append(target)
                    sources.append(rec.id)
                    positions.append(rec.position)
                    refs.append(ref)
                    customers.append(customer)
                    payloads.append(payload)
        return columns

    async def digest(self, conn: Conn) -> str:
        h = hashlib.sha256()
        for query in ("digest_rows", "digest_registrations"):
            for r in await conn.fetch(SQL[query]):
                h.update(repr(tuple(r.values())).encode())
        return h.hexdigest()


PROJECTION = OutboxProjection()
