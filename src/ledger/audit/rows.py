"""The audit index's fast path: one delivery's index row as a tuple, ready for COPY.

Deliveries are nearly every event of the log, and catching the index up used to cost ~50 us
of Python per event (decode the state twice, build a ``PaymentFact``, turn its time into
text and back, then encode every cell into one array per column). ``delivery_row`` reads
a delivery with the same decoders and the same payment reading (``read_payment``) as
``ledger.audit.index.interpret``, the reference, and returns the same values in
``COLUMNS`` order; ``ledger.audit.index`` COPYs the tuples (ADR 0023).

It takes the fast path only when that cannot change the answer: the state must decode as
``DeliveryState`` with no field the Struct does not declare and canonical base64
(``StrictDelivery``). The
reference also decodes the whole state generically (for the dedup key and body digest), which
rejects things a typed decode skips unread in an unknown field (invalid UTF-8, numbers out
of range); any state with such a field, or that does not decode, is left to the reference
(``delivery_row`` returns None), so it is indexed, or fails and is set aside, exactly as
before.
"""

from __future__ import annotations

import functools
import uuid
from decimal import Decimal, InvalidOperation
from typing import Any

import msgspec

from ledger.domain.events import (
    CONFLICTED_TOPIC,
    QUARANTINED_TOPIC,
    RECEIVED_TOPIC,
    DeliveryFields,
)
from ledger.payments.facts import read_payment

# audit_index's columns, in the order of the row tuples (and of ``IndexRow``'s fields).
COLUMNS = (
    "position",
    "event_id",
    "topic",
    "received_at",
    "category",
    "provider",
    "kind",
    "dedup_key",
    "customer",
    "order_id",
    "status",
    "amount",
    "paid_amount",
    "currency",
    "body_sha256",
    "actor",
    "target",
    "hash",
)
Row = tuple[Any, ...]

# The category of each delivery topic (``ledger.payments.facts``' state of a fact).
CATEGORIES = {
    RECEIVED_TOPIC: "received",
    QUARANTINED_TOPIC: "quarantined",
    CONFLICTED_TOPIC: "conflicted",
}


class StrictDelivery(
    DeliveryFields[dict[str, str], bytes], frozen=True, forbid_unknown_fields=True
):
    """``DeliveryState``'s fields with the same types (both are ``DeliveryFields``; a test
    holds them equal) but the body, refusing fields it does not declare (see the module
    docstring); the body is decoded from base64 by msgspec as the state is parsed, without
    the text in between. msgspec reads only canonical base64 (padded, no other characters),
    where ``base64.b64decode`` gives the same bytes; anything else is left to the reference."""


_strict = msgspec.json.Decoder(StrictDelivery)


@functools.lru_cache(maxsize=4_096)
def decimal(text: str | None) -> Decimal | None:
    """An amount as the index stores it: None when absent, not a number or not finite.
    Cached: a log repeats a few amounts (Decimals are immutable)."""
    if text is None:
        return None
    try:
        value = Decimal(text)
    except InvalidOperation:
        return None
    return value if value.is_finite() else None


def delivery_row(
    position: int, event_id: uuid.UUID, topic: str, state: bytes, chain_hash: bytes | None
) -> Row | None:
    """The index row of a delivery event (``interpret``'s values, ``COLUMNS`` order); None
    when the event is not a delivery or the fast path does not apply (the reference then
    decides)."""
    category = CATEGORIES.get(topic)
    if category is None:
        return None
    try:
        st = _strict.decode(state)
    except (msgspec.DecodeError, ValueError):
        return None
    try:
        p = read_payment(st.provider, st.body_b64)
    except (msgspec.DecodeError, ValueError):
        p = None  # a body its provider cannot decode (quarantined): no order
    if p is None:
        return (
            position, event_id, topic, st.timestamp, category, st.provider, st.kind,
            st.dedup_key, None, None, None, None, None, None, st.body_sha256, None, None,
            chain_hash,
        )  # fmt: skip
    return (
        position, event_id, topic, st.timestamp, category, st.provider, st.kind, st.dedup_key,
        p.customer, p.order_id, p.status, decimal(p.amount), decimal(p.paid_amount),
        p.currency, st.body_sha256, None, None, chain_hash,
    )  # fmt: skip
