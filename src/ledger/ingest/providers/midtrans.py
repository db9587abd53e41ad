"""Midtrans HTTP notifications: ``signature_key = sha512(order_id + status_code +
gross_amount + server_key)`` over the fields exactly as sent.

The signature covers a plain concatenation, so it vouches for the three fields only if they
can be split one way: each must have its documented shape (``MidtransSigned``) before the
signature is trusted, or ``"CAT-1"+"200"+"50000.00"`` could be resent as ``"CAT-12"+"00"``.
A shape failure is 401: such a signature cannot vouch for these fields.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from ledger.ingest.providers.base import (
    DECODE_ERRORS,
    PATTERN_MEANINGS,
    Accepted,
    EmailText,
    Identifier,
    Text,
    Unauthorized,
    Unusable,
    check_depth,
    check_email,
    decode_error,
    matches_any,
    secret_list,
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


# Midtrans' documented status codes (docs.midtrans.com, "Code statuses": 2xx, 300, 4xx, 5xx).
StatusCode = Literal[
    "200", "201", "202", "300",
    "400", "401", "402", "403", "404", "405", "406", "407", "408", "409", "410", "411", "412",
    "413",
    "500", "501", "502", "503", "504", "505",
]  # fmt: skip
# Order ids: at most 50 letters, digits, "-", "_", "~", "." (Midtrans' Snap/Core API rule).
ORDER_ID_PATTERN = r"^[A-Za-z0-9_~.\-]{1,50}\Z"
# A non-negative decimal with exactly two places, no leading zeros, below 10^13 ("299000.00").
GROSS_AMOUNT_PATTERN = r"^(0|[1-9][0-9]{0,12})\.[0-9]{2}\Z"
SIGNATURE_PATTERN = r"^[0-9a-fA-F]{128}\Z"
PATTERN_MEANINGS[ORDER_ID_PATTERN] = "of 1-50 letters, digits, '-', '_', '~' or '.'"
PATTERN_MEANINGS[GROSS_AMOUNT_PATTERN] = "that is a non-negative amount with two decimals"
PATTERN_MEANINGS[SIGNATURE_PATTERN] = "of 128 hex digits"


class MidtransSigned(msgspec.Struct, frozen=True):
    """Just what the signature covers, in its documented shapes; decoded first so we can
    authenticate."""

    order_id: Annotated[str, Meta(pattern=ORDER_ID_PATTERN)]
    status_code: StatusCode
    gross_amount: Annotated[str, Meta(pattern=GROSS_AMOUNT_PATTERN)]
    signature_key: Annotated[str, Meta(pattern=SIGNATURE_PATTERN)]


class MidtransNotification(msgspec.Struct, frozen=True):
    """As the log holds it (older deliveries predate the shapes of ``InboundNotification``)."""

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


class InboundNotification(MidtransNotification, frozen=True):
    """What ingest accepts: the signed fields as in ``MidtransSigned``, the rest bounded."""

    order_id: Annotated[str, Meta(pattern=ORDER_ID_PATTERN)]
    status_code: StatusCode
    gross_amount: Annotated[str, Meta(pattern=GROSS_AMOUNT_PATTERN)]
    signature_key: Annotated[str, Meta(pattern=SIGNATURE_PATTERN)]
    transaction_id: Identifier
    transaction_time: Identifier | None = None
    status_message: Text | None = None
    settlement_time: Identifier | None = None
    payment_type: Identifier | None = None
    merchant_id: Identifier | None = None
    fraud_status: Identifier | None = None
    currency: Identifier | None = None
    customer_email: EmailText | None = None


SIGNED = msgspec.json.Decoder(MidtransSigned)
DECODER = msgspec.json.Decoder(MidtransNotification)  # the log (folds)
INBOUND = msgspec.json.Decoder(InboundNotification)  # ingest, after authentication


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
        self._server_keys = secret_list(server_key)
        self._max_depth = max_depth

    def __repr__(self) -> str:
        return f"Midtrans(server_keys=<{len(self._server_keys)} set>)"

    def accept(self, headers: Mapping[str, str], body: bytes) -> Accepted:
        if not self._server_keys:
            raise Unauthorized("Midtrans webhooks are not accepted: no server key is configured")
        try:
            # Too deep, malformed or out of shape cannot be authenticated: refused, not recorded.
            check_depth(body, self._max_depth)
            signed = SIGNED.decode(body)
        except (Unusable, msgspec.DecodeError, UnicodeDecodeError) as exc:
            why = str(exc) if isinstance(exc, Unusable) else decode_error(exc)
            raise Unauthorized(f"signature cannot be verified: {why}") from None
        given = signed.signature_key.lower().encode()
        expected = [
            signature(signed.order_id, signed.status_code, signed.gross_amount, key).encode()
            for key in self._server_keys
        ]
        if not matches_any(given, expected):
            raise Unauthorized(
                "signature_key does not match order_id, status_code and gross_amount"
            )
        try:
            n = INBOUND.decode(body)
        except DECODE_ERRORS as exc:
            raise Unusable(f"Midtrans body: {decode_error(exc)}", kind="malformed") from None
        check_email(n.customer_email, "`$.customer_email`")
        return Accepted(dedup_key=dedup_key(n), kind=n.transaction_status)
