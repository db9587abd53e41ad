"""The booking partner, inbound: ``x-pwa-signature = hex(HMAC-SHA256(raw body, secret))``."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any, Literal

import msgspec

from ledger.ingest.providers.base import (
    DECODE_ERRORS,
    Accepted,
    Identifier,
    Unauthorized,
    Unusable,
    body_digest,
    check_amount,
    check_depth,
    decode_error,
    header_id,
    hmac_sha256_hex,
    matches_any,
    secret_list,
)

SIGNATURE_HEADER = "x-pwa-signature"


class BookingUpdate(msgspec.Struct, frozen=True):
    """As the log holds it (older deliveries predate the shapes of ``InboundUpdate``)."""

    event: Literal["booking.paid", "booking.updated"]
    booking_id: str
    status: Literal["LUNAS", "DP"] | None = None
    paid_amount: Decimal | None = None
    payment_method: str | None = None
    payment_details: dict[str, Any] | None = None
    timestamp: str | None = None


class InboundUpdate(BookingUpdate, frozen=True):
    """What ingest accepts: every field we interpret has a shape and a bound."""

    booking_id: Identifier
    payment_method: Identifier | None = None
    timestamp: Identifier | None = None


DECODER = msgspec.json.Decoder(BookingUpdate)  # the log (folds)
INBOUND = msgspec.json.Decoder(InboundUpdate)  # ingest

DESCRIPTION = {
    "endpoint": "/webhooks/partner",
    "methods": ["POST", "GET"],
    "content_type": "application/json",
    "required_header": SIGNATURE_HEADER,
    "signature": "hex(HMAC-SHA256(raw request body, shared secret))",
    "signed": "the exact raw body bytes, before any parsing",
    "check": 'printf \'%s\' "$BODY" | openssl dgst -sha256 -hmac "$SECRET"',
    "events": ["booking.paid", "booking.updated"],
}


class Partner:
    name = "partner"
    scheme = "hmac-sha256:x-pwa-signature"

    def __init__(self, secret: str | None, *, max_depth: int = 32) -> None:
        self._secrets = secret_list(secret)
        self._max_depth = max_depth

    def __repr__(self) -> str:
        return f"Partner(secrets=<{len(self._secrets)} set>)"

    def accept(self, headers: Mapping[str, str], body: bytes) -> Accepted:
        if not self._secrets:
            raise Unauthorized("partner webhooks are not accepted: no partner secret is configured")
        given = headers.get(SIGNATURE_HEADER)
        if given is None:
            raise Unauthorized(f"missing {SIGNATURE_HEADER} header")
        expected = [hmac_sha256_hex(s, body).encode() for s in self._secrets]
        if not matches_any(given.strip().lower().encode(), expected):
            raise Unauthorized(f"{SIGNATURE_HEADER} is not the HMAC-SHA256 of the body")
        check_depth(body, self._max_depth)
        try:
            update = INBOUND.decode(body)
        except DECODE_ERRORS as exc:
            raise Unusable(f"partner body: {decode_error(exc)}", kind="malformed") from None
        check_amount(update.paid_amount, "`$.paid_amount`")
        idem = header_id(headers, "idempotency-key") or header_id(headers, "x-idempotency-key")
        if idem:
            key = f"partner:idempotency:{idem}"
        elif update.timestamp:
            key = f"partner:{update.booking_id}:{update.event}:{update.status}:{update.timestamp}"
        else:
            key = f"partner:{body_digest(body)}"
        return Accepted(dedup_key=key, kind=update.event)
