"""Order status: each provider's notification mapped to one order status, and precedence.

Pure logic (no I/O), used by ``ledger.payments.facts`` (the one reading of a provider body),
the ``orders`` projection and the orders API.

The mapping follows ``shared/reference/providers.md``. Precedence makes the folded status
independent of arrival order: an order's status is the highest-ranked status among all its
notifications, so a ``pending`` or ``expire`` that arrives after ``paid`` never downgrades it
(it stays in the history, marked late). Ranks::

    pending < failed < paid < partially_refunded < refunded
            < partially_charged_back < charged_back

The reference only says "chargebacks after paid"; we rank them after the refunds too, so a
chargeback (a dispute the merchant lost) is what an order finally reads, whatever else came.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from ledger.errors import LedgerError

OrderStatus = Literal[
    "pending",
    "failed",
    "paid",
    "partially_refunded",
    "refunded",
    "partially_charged_back",
    "charged_back",
]

RANK: dict[str, int] = {
    "pending": 10,
    "failed": 20,
    "paid": 30,
    "partially_refunded": 40,
    "refunded": 50,
    "partially_charged_back": 60,
    "charged_back": 70,
}

_MIDTRANS: dict[str, OrderStatus] = {
    "settlement": "paid",
    "pending": "pending",
    "authorize": "pending",
    "deny": "failed",
    "cancel": "failed",
    "expire": "failed",
    "failure": "failed",
    "refund": "refunded",
    "partial_refund": "partially_refunded",
    "chargeback": "charged_back",
    "partial_chargeback": "partially_charged_back",
}

_XENDIT: dict[str, OrderStatus] = {
    "PENDING": "pending",
    "PAID": "paid",
    "SETTLED": "paid",
    "EXPIRED": "failed",
}


# Mayar's payment events, for the feed and the audit index (Mayar orders are not folded:
# its payments are token credits, ``ledger.payments.rules``).
_MAYAR: dict[str, OrderStatus] = {
    "payment.success": "paid",
    "payment.received": "paid",
    "payment.created": "pending",
    "payment.pending": "pending",
    "payment.failed": "failed",
    "payment.expired": "failed",
}


class UnknownStatus(LedgerError, ValueError):
    """A provider status this module cannot map (the caller decides: review or raise)."""


def midtrans_status(transaction_status: str, fraud_status: str | None = None) -> OrderStatus:
    """``capture`` depends on ``fraud_status``: accept (or absent) is paid, challenge is
    pending (a person must decide), deny is failed; an unknown verdict is pending too."""
    if transaction_status == "capture":
        fraud = (fraud_status or "accept").lower()
        if fraud == "accept":
            return "paid"
        if fraud == "challenge":
            return "pending"
        if fraud == "deny":
            return "failed"
        return "pending"  # an unknown fraud verdict needs a person, like challenge
    try:
        return _MIDTRANS[transaction_status]
    except KeyError:
        raise UnknownStatus(f"Midtrans transaction_status {transaction_status!r}") from None


def xendit_status(status: str) -> OrderStatus:
    try:
        return _XENDIT[status]
    except KeyError:
        raise UnknownStatus(f"Xendit status {status!r}") from None


def mayar_status(event: str) -> OrderStatus | None:
    """The status a Mayar payment event reports; None for its other events (subscriptions,
    reminders, tests), which say nothing about a payment's state."""
    return _MAYAR.get(event)


def partner_status(event: str, status: str | None) -> OrderStatus:
    """``LUNAS`` (paid in full) is paid; ``DP`` (down payment only) is still pending;
    a ``booking.paid`` without a status is taken as paid."""
    if status == "LUNAS" or (status is None and event == "booking.paid"):
        return "paid"
    if status == "DP" or status is None:
        return "pending"
    raise UnknownStatus(f"partner booking status {status!r}")


def rank(status: str) -> int:
    return RANK[status]


def fold(statuses: Iterable[OrderStatus]) -> OrderStatus | None:
    """The order's status from all its notifications' statuses (any order, any repeats)."""
    best: OrderStatus | None = None
    for s in statuses:
        if best is None or RANK[s] > RANK[best]:
            best = s
    return best


@dataclass(frozen=True, slots=True)
class Entry:
    """One notification in an order's history, as the projection stores it."""

    position: int
    event_id: str  # canonical UUID text: its string order is the UUID's order
    provider_status: str
    status: str
    amount: str | None = None
    currency: str | None = None
    payment_method: str | None = None
    customer: str | None = None


def decide(history: Sequence[Entry]) -> Entry:
    """The notification that decides the order: the highest status, ties broken by the
    larger event id, so the choice never depends on arrival order."""
    return max(history, key=lambda e: (RANK[e.status], e.event_id))


def late_flags(history: Sequence[Entry]) -> list[bool]:
    """For a history in log order: was each entry ranked below a status already recorded
    before it? Such a notification arrived late and did not change the order."""
    flags: list[bool] = []
    best = -1
    for e in history:
        r = RANK[e.status]
        flags.append(r < best)
        best = max(best, r)
    return flags


# Notifications that lower what the merchant keeps are confirmed with the provider's status
# API before they count (ADR 0016): a Midtrans signature does not cover
# ``transaction_status``, so a captured settlement can be replayed as a refund. Xendit's
# invoice callbacks have no such status (EXPIRED after PAID never downgrades), and the
# partner signs its whole body and has no status API.
CONFIRMED_BY_API: dict[str, frozenset[str]] = {
    "midtrans": frozenset(
        {"partially_refunded", "refunded", "partially_charged_back", "charged_back"}
    ),
}


def held(provider: str, status: str, source: str = "notification") -> bool:
    """Is this notification held until the provider's status API confirms it?"""
    return source == "notification" and status in CONFIRMED_BY_API.get(provider, frozenset())


def awaiting(rows: Sequence[Any]) -> list[str]:
    """The statuses of held notifications no status-API answer has followed yet, for an
    order's ``order_history`` rows in log order (keys ``held``, ``status``, ``source``)."""
    out: list[str] = []
    answered = False
    for r in reversed(rows):  # one pass: an answer covers every held row before it
        if r["source"] == "reconciliation":
            answered = True
        elif r["held"] and not answered:
            out.append(r["status"])
    out.reverse()
    return out


def confirmation(held_status: str, later_answers: Sequence[str]) -> str:
    """A held notification's state from the verified API statuses recorded after it:
    ``confirmed`` (one of them says the same), ``unconfirmed`` (they say otherwise) or
    ``held`` (none yet)."""
    if not later_answers:
        return "held"
    return "confirmed" if held_status in later_answers else "unconfirmed"


# The amount rule (ADR 0016): an order whose paid amount differs from what was expected is
# never plain ``paid``.
AmountCheck = Literal["match", "short", "over", "currency"]


def settle(
    status: str,
    expected: str | None,
    expected_currency: str | None,
    paid: str | None,
    paid_currency: str | None,
) -> tuple[str, AmountCheck | None]:
    """The status an order reads once its paid amount is compared with the expected one,
    and the comparison. ``partially_paid``: less than expected was paid (a Xendit or partner
    down payment); ``amount_mismatch``: more than expected, or another currency. Only a
    ``pending`` or ``paid`` order is judged; refunds and chargebacks keep their status."""
    if expected is None or paid is None or status not in ("pending", "paid"):
        return status, None
    try:
        want, got = Decimal(expected), Decimal(paid)
    except InvalidOperation:
        return status, None
    if got <= 0 and status == "pending":
        return status, None
    if expected_currency and paid_currency and expected_currency != paid_currency:
        return "amount_mismatch", "currency"
    if got < want:
        return "partially_paid", "short"
    if got > want:
        return "amount_mismatch", "over"
    return ("paid", "match") if status == "paid" else (status, None)
