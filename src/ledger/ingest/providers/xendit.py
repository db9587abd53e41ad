"""Xendit invoice callbacks: static ``x-callback-token`` header."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any, Literal

import msgspec

from ledger.ingest.providers.base import (
    DECODE_ERRORS,
    Accepted,
    EmailText,
    Identifier,
    Text,
    Unusable,
    check_amount,
    check_depth,
    check_email,
    check_token,
    decode_error,
    header_id,
    secret_list,
)

InvoiceStatus = Literal["PENDING", "PAID", "SETTLED", "EXPIRED"]


class XenditInvoice(msgspec.Struct, frozen=True):
    """The official SDK's ``InvoiceCallback``: its required fields and useful optional ones,
    as the log holds them (older deliveries predate the shapes of ``InboundInvoice``)."""

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


class InboundInvoice(XenditInvoice, frozen=True):
    """What ingest accepts: every field we interpret has a shape and a bound."""

    id: Identifier
    external_id: Identifier
    user_id: Identifier
    merchant_name: Text
    created: Identifier
    updated: Identifier
    currency: Identifier
    payer_email: EmailText | None = None
    description: Text | None = None
    paid_at: Identifier | None = None
    payment_method: Identifier | None = None
    payment_channel: Identifier | None = None
    payment_destination: Identifier | None = None
    payment_id: Identifier | None = None
    bank_code: Identifier | None = None
    ewallet_type: Identifier | None = None


DECODER = msgspec.json.Decoder(XenditInvoice)  # the log (folds)
INBOUND = msgspec.json.Decoder(InboundInvoice)  # ingest


class Xendit:
    name = "xendit"
    scheme = "static-token:x-callback-token"

    def __init__(self, token: str | None, *, max_depth: int = 32) -> None:
        self._tokens = secret_list(token)
        self._max_depth = max_depth

    def __repr__(self) -> str:
        return f"Xendit(tokens=<{len(self._tokens)} set>)"

    def accept(self, headers: Mapping[str, str], body: bytes) -> Accepted:
        check_token(headers, "x-callback-token", self._tokens, "Xendit")
        check_depth(body, self._max_depth)
        try:
            inv = INBOUND.decode(body)
        except DECODE_ERRORS as exc:
            raise Unusable(f"Xendit body: {decode_error(exc)}", kind="malformed") from None
        check_amount(inv.amount, "`$.amount`")
        check_amount(inv.paid_amount, "`$.paid_amount`")
        check_email(inv.payer_email, "`$.payer_email`")
        webhook_id = header_id(headers, "webhook-id")
        key = f"xendit:webhook-id:{webhook_id}" if webhook_id else f"xendit:{inv.id}:{inv.status}"
        return Accepted(dedup_key=key, kind=inv.status)
