"""Xendit invoice callbacks: static ``x-callback-token`` header."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any, Literal

import msgspec

from ledger.providers.base import (
    DECODE_ERRORS,
    Accepted,
    Unusable,
    check_depth,
    check_token,
    decode_error,
)

InvoiceStatus = Literal["PENDING", "PAID", "SETTLED", "EXPIRED"]


class XenditInvoice(msgspec.Struct, frozen=True):
    """The official SDK's ``InvoiceCallback``: its required fields and useful optional ones."""

    id: str
    external_id: str
    user_id: str
    status: InvoiceStatus
    merchant_name: str
    amount: Decimal
    created: str
    updated: str
    currency: str
    payer_email: str | None = None
    description: str | None = None
    paid_amount: Decimal | None = None
    paid_at: str | None = None
    payment_method: str | None = None
    payment_channel: str | None = None
    payment_destination: str | None = None
    payment_details: dict[str, Any] | None = None
    payment_id: str | None = None
    bank_code: str | None = None
    ewallet_type: str | None = None


DECODER = msgspec.json.Decoder(XenditInvoice)


class Xendit:
    name = "xendit"
    scheme = "static-token:x-callback-token"

    def __init__(self, token: str | None, *, max_depth: int = 32) -> None:
        self._token = token
        self._max_depth = max_depth

    def accept(self, headers: Mapping[str, str], body: bytes) -> Accepted:
        check_token(headers, "x-callback-token", self._token, "Xendit")
        check_depth(body, self._max_depth)
        try:
            inv = DECODER.decode(body)
        except DECODE_ERRORS as exc:
            raise Unusable(f"Xendit body: {decode_error(exc)}", kind="malformed") from None
        webhook_id = headers.get("webhook-id")
        key = f"xendit:webhook-id:{webhook_id}" if webhook_id else f"xendit:{inv.id}:{inv.status}"
        return Accepted(dedup_key=key, kind=inv.status)
