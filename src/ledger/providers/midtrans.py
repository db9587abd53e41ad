"""Midtrans HTTP notifications: ``signature_key = sha512(order_id + status_code +
gross_amount + server_key)`` over the fields exactly as sent."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Literal

import msgspec

from ledger.providers.base import (
    DECODE_ERRORS,
    Accepted,
    Unauthorized,
    Unusable,
    check_depth,
    decode_error,
)

TransactionStatus = Literal[
    "authorize",
    "capture",
    "settlement",
    "pending",
    "deny",
    "cancel",
    "expire",
    "failure",
    "refund",
    "partial_refund",
    "chargeback",
    "partial_chargeback",
]


class MidtransSigned(msgspec.Struct, frozen=True):
    """Just what the signature covers; decoded first so we can authenticate."""

    order_id: str
    status_code: str
    gross_amount: str
    signature_key: str


class MidtransNotification(msgspec.Struct, frozen=True):
    order_id: str
    status_code: str
    gross_amount: str
    signature_key: str
    transaction_status: TransactionStatus
    transaction_id: str
    transaction_time: str | None = None
    status_message: str | None = None
    settlement_time: str | None = None
    payment_type: str | None = None
    merchant_id: str | None = None
    fraud_status: str | None = None
    currency: str | None = None
    customer_email: str | None = None


SIGNED = msgspec.json.Decoder(MidtransSigned)
DECODER = msgspec.json.Decoder(MidtransNotification)


def signature(order_id: str, status_code: str, gross_amount: str, server_key: str) -> str:
    raw = (order_id + status_code + gross_amount + server_key).encode()
    return hashlib.sha512(raw).hexdigest()


def dedup_key(n: MidtransNotification) -> str:
    key = f"midtrans:{n.order_id}:{n.transaction_id}:{n.transaction_status}:{n.status_code}"
    return f"{key}:{n.fraud_status}" if n.fraud_status else key


class Midtrans:
    name = "midtrans"
    scheme = "sha512-signature_key"

    def __init__(self, server_key: str | None, *, max_depth: int = 32) -> None:
        self._server_key = server_key
        self._max_depth = max_depth

    def accept(self, headers: Mapping[str, str], body: bytes) -> Accepted:
        if not self._server_key:
            raise Unauthorized("Midtrans webhooks are not accepted: no server key is configured")
        try:
            # Too deep or malformed cannot be authenticated: it is refused, not recorded.
            check_depth(body, self._max_depth)
            signed = SIGNED.decode(body)
        except (Unusable, msgspec.DecodeError, UnicodeDecodeError) as exc:
            why = str(exc) if isinstance(exc, Unusable) else decode_error(exc)
            raise Unauthorized(f"signature cannot be verified: {why}") from None
        expected = signature(
            signed.order_id, signed.status_code, signed.gross_amount, self._server_key
        )
        if not hmac.compare_digest(signed.signature_key.lower().encode(), expected.encode()):
            raise Unauthorized(
                "signature_key does not match order_id, status_code and gross_amount"
            )
        try:
            n = DECODER.decode(body)
        except DECODE_ERRORS as exc:
            raise Unusable(f"Midtrans body: {decode_error(exc)}", kind="malformed") from None
        return Accepted(dedup_key=dedup_key(n), kind=n.transaction_status)
