"""Mayar: static ``x-callback-token`` header; body ``{"event": ..., "data": {...}}``."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal

import msgspec

from ledger.providers.base import (
    DECODE_ERRORS,
    Accepted,
    Unusable,
    body_digest,
    check_depth,
    check_token,
    decode_error,
)

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
        raw = self.customerEmail or (self.customer.email if self.customer else None)
        return raw.strip().lower() if raw and raw.strip() else None


class MayarWebhook(msgspec.Struct, frozen=True):
    event: str
    data: MayarData = MayarData()


DECODER = msgspec.json.Decoder(MayarWebhook)


def known_event(event: str) -> bool:
    return event in EVENTS or event.startswith("membership.")


class Mayar:
    name = "mayar"
    scheme = "static-token:x-callback-token"

    def __init__(self, token: str | None, *, max_depth: int = 32) -> None:
        self._token = token
        self._max_depth = max_depth

    def accept(self, headers: Mapping[str, str], body: bytes) -> Accepted:
        check_token(headers, "x-callback-token", self._token, "Mayar")
        check_depth(body, self._max_depth)
        try:
            hook = DECODER.decode(body)
        except DECODE_ERRORS as exc:
            raise Unusable(f"Mayar body: {decode_error(exc)}", kind="malformed") from None
        if not known_event(hook.event):
            raise Unusable(f"unknown Mayar event {hook.event!r} at `$.event`", kind=hook.event[:64])
        if hook.data.id is not None and str(hook.data.id) != "":
            key = f"mayar:{hook.data.id}:{hook.event}"
        else:
            key = f"mayar:{body_digest(body)}"
        return Accepted(dedup_key=key, kind=hook.event)
