"""Registered orders: the merchant's app says, before any payment, who ordered what and how
much it expects (``PUT /v1/orders/{provider}/{order_id}``, ADR 0016).

One ``OrderRegistration`` aggregate per order: its id is derived from the provider and the
order id (``registration_id``), so the log's primary key makes a second registration of the
same order a duplicate append, never a second event. A repeat with the same terms is
answered from the first event; different terms are a conflict (409), and the first stays.

Every field is JSON-native, like every other event (``ledger.domain.events``); ``amount``
is a canonical decimal string (``canonical_amount``), ``expires_at`` ISO 8601 in UTC.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

import msgspec

from ledger.domain.events import LEDGER_NAMESPACE, StateCodec, aggregate_for


class RegisteredState(msgspec.Struct, frozen=True, kw_only=True):
    """The stored state of ``OrderRegistration.Registered`` (what ``Mapper`` would write):
    the merchant's registration of one order (ADR 0016). ``key_id`` is the key that
    registered it; the terms are the other fields."""

    originator_topic: str
    timestamp: datetime
    provider: str
    order_id: str
    customer: str
    amount: str
    currency: str
    package: str | None = None
    booking_id: str | None = None
    expires_at: str | None = None
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    key_id: str = ""


OrderRegistration = aggregate_for(RegisteredState, "OrderRegistration", "Registered")

REGISTRATION_TOPIC = "ledger.domain:OrderRegistration"
REGISTERED_TOPIC = "ledger.domain:OrderRegistration.Registered"

# The terms of a registration: what a repeat must match (who sent it and when do not count).
TERMS = ("customer", "amount", "currency", "package", "booking_id", "expires_at", "metadata")

_registered = StateCodec(RegisteredState)
encode_registered, decode_registered = _registered.encode, _registered.decode


def registration_id(provider: str, order_id: str) -> uuid.UUID:
    """The id of an order's registration: one per provider and order id."""
    return uuid.uuid5(LEDGER_NAMESPACE, f"order:{provider}\x00{order_id}")


def canonical_amount(value: str | Decimal) -> str:
    """One spelling per amount, so "100000", "100000.0" and "100000.00" are the same terms:
    positional notation, no trailing zeros after the point."""
    d = Decimal(value)
    if d == d.to_integral_value():
        return format(d.quantize(1), "f")
    return format(d.normalize(), "f")


def differing_terms(first: RegisteredState, second: RegisteredState) -> list[str]:
    """The terms in which two registrations of one order differ (empty: the same order)."""
    return [t for t in TERMS if getattr(first, t) != getattr(second, t)]
