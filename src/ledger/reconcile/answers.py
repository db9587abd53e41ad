"""What a provider's status API answered about one order: pure reading, no I/O.

``read_answer`` gives the reading stored with the answer (an order status, or
``unknown_order``, ``unverified``, ``refused``); ``payment`` gives the payment a verified
answer describes, read by ``ledger.payments.facts`` exactly like a notification, so the orders
projection folds it with the same precedence rules.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import msgspec

from ledger.ingest.providers import midtrans
from ledger.ingest.providers.base import matches_any
from ledger.payments import orderstatus
from ledger.payments.facts import Payment, read_payment

Verdict = Literal["unknown_order", "unverified", "refused"]
VERDICTS: tuple[str, ...] = ("unknown_order", "unverified", "refused")


class Reading(msgspec.Struct, frozen=True):
    """``reading`` is an order status, or a verdict; ``provider_status`` as the API said it."""

    reading: str
    provider_status: str | None = None

    @property
    def applicable(self) -> bool:
        """A verified status: the orders projection folds it."""
        return self.reading in orderstatus.RANK


class _StatusCode(msgspec.Struct):
    status_code: str | None = None


_status_code = msgspec.json.Decoder(_StatusCode)
_raw_list = msgspec.json.Decoder(list[msgspec.Raw])


def read_answer(
    provider: str, order_id: str, http_status: int, body: bytes, server_keys: Sequence[str]
) -> Reading:
    """Our reading of one answer. ``server_keys``: Midtrans' keys that may sign it."""
    if provider == "midtrans":
        return _read_midtrans(order_id, http_status, body, server_keys)
    if provider == "xendit":
        return _read_xendit(order_id, http_status, body)
    raise ValueError(f"no status API for provider {provider!r}")


def _read_midtrans(
    order_id: str, http_status: int, body: bytes, server_keys: Sequence[str]
) -> Reading:
    try:
        code = _status_code.decode(body).status_code
    except (msgspec.DecodeError, UnicodeDecodeError):
        code = None
    # Midtrans says "no such transaction" in the body, whatever the HTTP status.
    if code == "404":
        return Reading("unknown_order", "404")
    if not 200 <= http_status < 300:
        return Reading("refused", code)
    try:
        signed = midtrans.SIGNED.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError):
        # No signed status (an error answer such as 401 in the body): nothing to apply.
        return Reading("refused" if code and not code.startswith("2") else "unverified", code)
    given = signed.signature_key.lower().encode()
    expected = [
        midtrans.signature(signed.order_id, signed.status_code, signed.gross_amount, k).encode()
        for k in server_keys
    ]
    # A verified answer about another order must not change this one.
    if not matches_any(given, expected) or signed.order_id != order_id:
        return Reading("unverified", code)
    try:
        paid = read_payment("midtrans", body)
    except (msgspec.DecodeError, ValueError):
        return Reading("unverified", code)
    if paid is None or paid.status is None:
        return Reading("unverified", paid.provider_status if paid else code)
    return Reading(paid.status, paid.provider_status)


def _invoices(order_id: str, body: bytes) -> list[Payment]:
    """The invoices of ``order_id`` in a Xendit answer, read like callbacks."""
    found: list[Payment] = []
    for raw in _raw_list.decode(body):
        p = read_payment("xendit", bytes(raw))
        if p is not None and p.order_id == order_id:
            found.append(p)
    return found


def _read_xendit(order_id: str, http_status: int, body: bytes) -> Reading:
    if not 200 <= http_status < 300:
        return Reading("refused", None)
    try:
        invoices = _invoices(order_id, body)
    except (msgspec.DecodeError, ValueError):
        return Reading("unverified", None)
    if not invoices:
        return Reading("unknown_order", None)
    best = _best(invoices)
    if best.status is None:
        return Reading("unverified", best.provider_status)
    return Reading(best.status, best.provider_status)


def _best(invoices: list[Payment]) -> Payment:
    """The invoice that decides (several invoices may share an external id): the highest
    status, as for notifications."""
    return max(invoices, key=lambda p: orderstatus.RANK.get(p.status or "", 0))


def payment(provider: str, order_id: str, body: bytes) -> Payment:
    """The payment a verified answer describes (only called for an applicable reading)."""
    if provider == "xendit":
        return _best(_invoices(order_id, body))
    found = read_payment(provider, body)
    if found is None:
        raise ValueError(f"no payment in a {provider} answer")
    return found
