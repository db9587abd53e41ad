"""Mayar: static ``x-callback-token`` header; body ``{"event": ..., "data": {...}}``."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Annotated

import msgspec
from msgspec import Meta

from ledger.ingest.providers.base import (
    DECODE_ERRORS,
    Accepted,
    Count,
    EmailText,
    Identifier,
    Text,
    Unusable,
    body_digest,
    check_amount,
    check_depth,
    check_email,
    check_token,
    decode_error,
    secret_list,
)
from ledger.payments.customers import customer_key

EVENTS = frozenset(
    {
        "testing",
        "payment.success",
        "payment.received",
        "payment.created",
        "payment.pending",
        "payment.failed",
        "payment.expired",
        "payment.reminder",
        "subscription.created",
        "subscription.activated",
        "subscription.renewed",
        "subscription.cancelled",
        "subscription.expired",
        "subscription.expiring_soon",
    }
)
PAID_EVENTS = frozenset({"payment.success", "payment.received"})


class MayarCustomer(msgspec.Struct, frozen=True):
    email: str | None = None
    name: str | None = None


class MayarData(msgspec.Struct, frozen=True):
    """As the log holds it. Older deliveries were accepted before the field shapes below
    (``InboundData``) were enforced, so the folds read them with these plain types."""

    id: str | int | None = None
    customerEmail: str | None = None
    customer: MayarCustomer | None = None
    package: str | None = None
    membershipTierName: str | None = None
    licenseCode: str | None = None
    expiredAt: str | None = None
    amount: Decimal | None = None
    status: str | None = None

    @property
    def email(self) -> str | None:
        """The customer (``ledger.payments.customers``); None when absent or not an address."""
        return customer_key(self.customerEmail or (self.customer.email if self.customer else None))


class MayarWebhook(msgspec.Struct, frozen=True):
    event: str
    data: MayarData = MayarData()


# What ingest accepts from now on: every field we interpret has a shape and a bound.
class InboundCustomer(MayarCustomer, frozen=True):
    email: EmailText | None = None
    name: Text | None = None


class InboundData(MayarData, frozen=True):
    id: Identifier | Count | None = None
    customerEmail: EmailText | None = None
    customer: InboundCustomer | None = None
    package: Identifier | None = None
    membershipTierName: Identifier | None = None
    licenseCode: Identifier | None = None
    expiredAt: Identifier | None = None
    status: Identifier | None = None


class InboundWebhook(MayarWebhook, frozen=True):
    event: Annotated[str, Meta(max_length=64, pattern=r"^[A-Za-z0-9_]+(\.[A-Za-z0-9_-]+)*\Z")]
    data: InboundData = InboundData()


DECODER = msgspec.json.Decoder(MayarWebhook)  # the log (folds)
INBOUND = msgspec.json.Decoder(InboundWebhook)  # ingest


def known_event(event: str) -> bool:
    return event in EVENTS or event.startswith("membership.")


class Mayar:
    name = "mayar"
    scheme = "static-token:x-callback-token"

    def __init__(self, token: str | None, *, max_depth: int = 32) -> None:
        self._tokens = secret_list(token)
        self._max_depth = max_depth

    def __repr__(self) -> str:
        return f"Mayar(tokens=<{len(self._tokens)} set>)"

    def accept(self, headers: Mapping[str, str], body: bytes) -> Accepted:
        check_token(headers, "x-callback-token", self._tokens, "Mayar")
        check_depth(body, self._max_depth)
        try:
            hook = INBOUND.decode(body)
        except DECODE_ERRORS as exc:
            raise Unusable(f"Mayar body: {decode_error(exc)}", kind="malformed") from None
        if not known_event(hook.event):
            raise Unusable(f"unknown Mayar event {hook.event!r} at `$.event`", kind=hook.event)
        check_amount(hook.data.amount, "`$.data.amount`")
        check_email(hook.data.customerEmail, "`$.data.customerEmail`")
        check_email(
            hook.data.customer.email if hook.data.customer else None, "`$.data.customer.email`"
        )
        if hook.data.id is not None and str(hook.data.id) != "":
            key = f"mayar:{hook.data.id}:{hook.event}"
        else:
            key = f"mayar:{body_digest(body)}"
        return Accepted(dedup_key=key, kind=hook.event)
