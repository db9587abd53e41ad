"""Registering an order (``PUT /v1/orders/{provider}/{order_id}``, ADR 0016).

The request is validated to its documented shape before anything is recorded: a customer
that is an e-mail address (``ledger.payments.customers``, the one customer rule), a positive
decimal amount of at most 13 integer digits and 2 decimals, an ISO 4217 currency, optional
package and booking id (printable, no control, zero-width or bidi characters), an optional
ISO 8601 expiry and an optional metadata object of bounded size whose text is storable.
Each fault raises ``InvalidRegistration`` naming the field.

The event is appended through the group committer under ``registration_id``: the first
registration wins in the log's primary key, even across processes. A repeat is answered
from the stored event; different terms raise ``RegistrationConflict`` naming the fields.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec

from ledger.domain.orders import (
    REGISTERED_TOPIC,
    REGISTRATION_TOPIC,
    RegisteredState,
    canonical_amount,
    decode_registered,
    differing_terms,
    encode_registered,
    registration_id,
)
from ledger.errors import LedgerError
from ledger.ingest.providers.midtrans import ORDER_ID_PATTERN as MIDTRANS_ORDER_ID
from ledger.ingest.safetext import WHAT, unsafe_char
from ledger.payments.customers import NotAnAddress, normalize_email
from ledger.store.eventstore import GroupCommitter, NewEvent

PROVIDERS = ("midtrans", "xendit", "partner")
MAX_ID = 255
MAX_TEXT = 200
MAX_METADATA = 4096  # bytes of the metadata object as JSON
AMOUNT = re.compile(r"^(0|[1-9]\d{0,12})(\.\d{1,2})?$")
CURRENCY = re.compile(r"^[A-Z]{3}$")


def _doc(description: str, example: str, **bounds: Any) -> Any:
    return msgspec.Meta(description=description, examples=[example], **bounds)


class RegistrationBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """An order registration (ADR 0016). Shapes are declared here (and in OpenAPI); the
    rules they cannot express (an address, a positive amount, storable text, the expiry's
    calendar) are checked in ``terms``."""

    customer: Annotated[str, _doc("the customer's e-mail address", "budi@example.com")]
    amount: Annotated[
        str,
        _doc("the expected amount, a decimal string", "299000.00", pattern=AMOUNT.pattern),
    ]
    currency: Annotated[str, _doc("ISO 4217 code", "IDR", pattern=CURRENCY.pattern)]
    package: Annotated[str, _doc("what was ordered", "gold", max_length=MAX_TEXT)] | None = None
    booking_id: (
        Annotated[
            str, _doc("the partner's booking id, for partner sync", "BK-1", max_length=MAX_ID)
        ]
        | None
    ) = None
    expires_at: (
        Annotated[str, _doc("ISO 8601 time the order expires", "2026-12-01T12:00:00+07:00")] | None
    ) = None
    metadata: dict[str, Any] | None = None


class InvalidRegistration(LedgerError, ValueError):
    """A registration that does not have the documented shape; ``field`` names the fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class RegistrationConflict(LedgerError):
    """The order was registered before with different terms (the first one stands)."""

    def __init__(self, first: RegisteredState, fields: list[str]) -> None:
        super().__init__(f"order already registered with a different {', '.join(fields)}")
        self.first = first
        self.fields = fields


@dataclass(frozen=True, slots=True)
class Registered:
    state: RegisteredState
    position: int
    event_id: str
    created: bool  # False: an identical registration was already recorded


_decoder = msgspec.json.Decoder(RegistrationBody)
_json = msgspec.json.Encoder()


def decode_body(raw: bytes) -> RegistrationBody:
    try:
        return _decoder.decode(raw)
    except msgspec.ValidationError as exc:
        field = str(exc).rpartition("`$.")[2].rstrip("`") if "`$." in str(exc) else "body"
        raise InvalidRegistration(field, str(exc)) from None
    except msgspec.DecodeError as exc:
        raise InvalidRegistration("body", f"not a JSON object: {exc}") from None


def check_order_id(provider: str, order_id: str) -> None:
    if provider not in PROVIDERS:
        raise InvalidRegistration("provider", f"must be one of {list(PROVIDERS)}")
    if provider == "midtrans" and re.match(MIDTRANS_ORDER_ID, order_id) is None:
        raise InvalidRegistration(
            "order_id", "a Midtrans order id is 1-50 letters, digits, '-', '_', '~' or '.'"
        )
    _text("order_id", order_id, MAX_ID)


def _text(field: str, value: str, limit: int) -> str:
    if not value or len(value) > limit:
        raise InvalidRegistration(field, f"must be 1-{limit} characters")
    bad = unsafe_char(value)
    if bad is not None or not value.isprintable():
        raise InvalidRegistration(field, f"contains {bad or 'an unprintable character'}, {WHAT}")
    return value


def _storable(field: str, value: Any) -> None:
    """Every string in a metadata value (keys too) must be storable text."""
    if isinstance(value, str):
        bad = unsafe_char(value, free_text=True)
        if bad is not None:
            raise InvalidRegistration(field, f"contains {bad}, {WHAT}")
    elif isinstance(value, dict):
        for k, v in value.items():
            _storable(field, k)
            _storable(field, v)
    elif isinstance(value, list):
        for v in value:
            _storable(field, v)
    elif isinstance(value, float) and value != value:  # pragma: no cover - JSON has no NaN
        raise InvalidRegistration(field, "holds NaN")


def _expiry(value: str) -> str:
    try:
        moment = datetime.fromisoformat(_text("expires_at", value, 64))
    except ValueError:
        raise InvalidRegistration("expires_at", "must be an ISO 8601 date-time") from None
    aware = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    try:
        return aware.astimezone(UTC).isoformat()
    except OverflowError:
        raise InvalidRegistration("expires_at", "falls outside years 1-9999") from None


def terms(provider: str, order_id: str, body: RegistrationBody, key_id: str) -> RegisteredState:
    """The event state for a valid registration (canonical spellings), or
    ``InvalidRegistration`` naming the first field at fault."""
    check_order_id(provider, order_id)
    try:
        customer = normalize_email(body.customer)
    except NotAnAddress as exc:
        raise InvalidRegistration("customer", f"the address {exc}") from None
    if AMOUNT.fullmatch(body.amount) is None:
        raise InvalidRegistration(
            "amount",
            'must be a decimal string like "299000" or "299000.00" (at most 13 '
            "integer digits and 2 decimals)",
        )
    amount = canonical_amount(body.amount)
    if amount == "0":
        raise InvalidRegistration("amount", "must be greater than 0")
    if CURRENCY.fullmatch(body.currency) is None:
        raise InvalidRegistration("currency", 'must be an ISO 4217 code such as "IDR"')
    metadata = body.metadata or {}
    _storable("metadata", metadata)
    if len(_json.encode(metadata)) > MAX_METADATA:
        raise InvalidRegistration("metadata", f"must be at most {MAX_METADATA} bytes as JSON")
    return RegisteredState(
        originator_topic=REGISTRATION_TOPIC,
        timestamp=datetime.now(UTC),
        provider=provider,
        order_id=order_id,
        customer=customer,
        amount=amount,
        currency=body.currency,
        package=None if body.package is None else _text("package", body.package, MAX_TEXT),
        booking_id=None
        if body.booking_id is None
        else _text("booking_id", body.booking_id, MAX_ID),
        expires_at=None if body.expires_at is None else _expiry(body.expires_at),
        metadata=metadata,
        key_id=key_id,
    )


async def register(committer: GroupCommitter, state: RegisteredState) -> Registered:
    """Record the registration once; a repeat with the same terms returns the first."""
    event_id = registration_id(state.provider, state.order_id)
    res = await committer.append(NewEvent(event_id, REGISTERED_TOPIC, encode_registered(state)))
    recorded = decode_registered(res.state) if res.duplicate else state
    if res.duplicate:
        differ = differing_terms(recorded, state)
        if differ:
            raise RegistrationConflict(recorded, differ)
    return Registered(recorded, res.position, str(event_id), not res.duplicate)
