"""Pure rules the read models fold with: token credits from Mayar payments, subscription
facts, and the deterministic table digest. No I/O except ``table_digest``'s reads.

Token credits (``classify_payment``): the package is ``data.package`` or
``data.membershipTierName`` (case-insensitive) looked up in the catalogue; the customer is
``data.customerEmail`` else ``data.customer.email`` (``ledger.payments.customers``). No customer, an
unknown or missing package, or (when prices are configured) a paid amount that differs from
the package's price: no tokens, and a flag for the review queue. Nothing is guessed.

Subscriptions (``subscription_fact`` / ``subscription_status``): each Mayar
``subscription.*`` / ``membership.*`` event is one fact about ``(customer, licenseCode)``:

- a *grant* (activated, renewed) extends access to its ``expiredAt`` (no date: no end);
- a *cancel* (cancelled) stops renewal of every period ending at or before its
  ``expiredAt`` (no date: every period);
- an *expire* (expired) ends access of every period ending at or before its ``expiredAt``
  (no date: every period).

The fold keeps only maxima (latest grant expiry, latest cancelled-through, latest
expired-through) and whether anything was granted, so any arrival order and any repeats of
the same facts give the same row. Status is decided when read, against the clock: expired
if an expire covers the latest grant or that grant's expiry has passed; cancelled if a
cancel covers it (access continues until the expiry); else active. A renewal whose expiry is
later than a cancellation's period therefore reactivates the subscription.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

import msgspec

from ledger.domain.events import DeliveryState
from ledger.ingest.providers.mayar import MayarData
from ledger.payments.customers import customer_key

DEFAULT_PACKAGES: dict[str, int] = {"silver": 5, "gold": 100}
# Stands for "no end". A real timestamp, not datetime.max: asyncpg reads values that close
# to its 'infinity' back as a naive datetime, which cannot be compared with aware ones.
FOREVER = datetime(9999, 1, 1, tzinfo=UTC)

Reason = Literal[
    "unknown-customer",
    "unknown-package",
    "amount-mismatch",
    "invalid-expiry",
    "quarantined",
    "dedup-conflict",
]


def _pairs(text: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        if name.strip():
            out[name.strip().lower()] = int(value.strip())
    return out


@dataclass(frozen=True)
class Catalogue:
    """Tokens per package and, optionally, the price (IDR) each package must be paid with.

    It is part of what the projections mean: changing it changes the folded state, so bump
    the projections' version or rebuild them after a change.
    """

    tokens: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_PACKAGES))
    prices: Mapping[str, int] | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Catalogue:
        """``LEDGER_TOKEN_PACKAGES`` ("silver=5,gold=100") and ``LEDGER_PACKAGE_PRICES``
        ("silver=50000,gold=500000"), the same variables ``ledger.config`` reads."""
        env = os.environ if environ is None else environ
        tokens = env.get("LEDGER_TOKEN_PACKAGES") or ""
        prices = env.get("LEDGER_PACKAGE_PRICES") or ""
        return cls(
            tokens=_pairs(tokens) if tokens.strip() else dict(DEFAULT_PACKAGES),
            prices=_pairs(prices) if prices.strip() else None,
        )

    @classmethod
    def of(cls, tokens: Mapping[str, int], prices: Mapping[str, int] | None = None) -> Catalogue:
        return cls(
            tokens={k.strip().lower(): v for k, v in tokens.items()},
            prices={k.strip().lower(): v for k, v in prices.items()} if prices else None,
        )


@dataclass(frozen=True, slots=True)
class Flag:
    reason: Reason
    detail: str


@dataclass(frozen=True, slots=True)
class Credit:
    """What one paid Mayar delivery means for token balances."""

    payment_key: str  # one credit per Mayar payment (data.id), whichever event names it
    customer: str | None
    package: str | None
    tokens: int  # 0 when flagged
    flags: tuple[Flag, ...]


def pg_text(value: str) -> str:
    """PostgreSQL text cannot hold NUL; a provider's string with one must not stop a
    projection, so NUL is stored as U+FFFD (the raw body keeps the original)."""
    return value.replace("\x00", "\ufffd") if "\x00" in value else value


def opt_text(value: object) -> str | None:
    return None if value is None else pg_text(str(value))


def normalize_customer(raw: str | None) -> str | None:
    """The customer an address names (``ledger.payments.customers``: NFKC, casefold, trimmed, must
    look like an address and not a lookalike); None when absent or unusable, which the
    folds flag ``unknown-customer`` and never credit."""
    return customer_key(raw)


def classify_payment(data: MayarData, catalogue: Catalogue, event_id: str) -> Credit:
    """Decide a paid Mayar delivery's credit: tokens, or flags and no tokens."""
    customer = normalize_customer(data.email)
    name = data.package or data.membershipTierName
    package = pg_text(name.strip().lower()) if name and name.strip() else None
    has_id = data.id is not None and str(data.id) != ""
    key = pg_text(f"mayar:{data.id}") if has_id else f"event:{event_id}"
    flags: list[Flag] = []
    if customer is None:
        flags.append(
            Flag("unknown-customer", "no customer: data.customerEmail and data.customer.email")
        )
    if package is None:
        flags.append(
            Flag("unknown-package", "no package: data.package and data.membershipTierName")
        )
    elif package not in catalogue.tokens:
        known = ", ".join(sorted(catalogue.tokens))
        flags.append(
            Flag("unknown-package", f"package {package!r} is not in the catalogue ({known})")
        )
    elif catalogue.prices is not None and package in catalogue.prices:
        price = Decimal(catalogue.prices[package])
        if data.amount is None:
            flags.append(
                Flag("amount-mismatch", f"no data.amount; package {package} costs {price}")
            )
        elif data.amount != price:
            flags.append(
                Flag(
                    "amount-mismatch",
                    f"data.amount {data.amount} differs from the {package} price {price}",
                )
            )
    tokens = 0 if flags or package is None else catalogue.tokens[package]
    return Credit(key, customer, package, tokens, tuple(flags))


FactKind = Literal["grant", "cancel", "expire"]


@dataclass(frozen=True, slots=True)
class SubscriptionFact:
    customer: str | None
    license_code: str
    kind: FactKind | None  # None: informational (created, expiring_soon...)
    until: datetime  # the period end the fact names; FOREVER when none
    flags: tuple[Flag, ...]


def fact_kind(event: str) -> FactKind | None:
    """``subscription.*`` and ``membership.*`` (Mayar's two names for one family)."""
    _, _, suffix = event.lower().partition(".")
    if "expiring" in suffix:
        return None
    if any(w in suffix for w in ("activated", "renewed", "registered")):
        return "grant"
    if any(w in suffix for w in ("cancel", "unsubscribed")):
        return "cancel"
    if "expired" in suffix:
        return "expire"
    return None


def is_subscription_event(event: str) -> bool:
    return event.startswith(("subscription.", "membership."))


def parse_expiry(text: str | None) -> datetime | None:
    """ISO 8601; a time without an offset is taken as UTC. Raises ValueError if invalid."""
    if text is None or not text.strip():
        return None
    value = datetime.fromisoformat(text.strip())
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def subscription_fact(event: str, data: MayarData) -> SubscriptionFact:
    flags: list[Flag] = []
    kind = fact_kind(event)
    customer = normalize_customer(data.email)
    if customer is None and kind is not None:
        flags.append(
            Flag("unknown-customer", "no customer: data.customerEmail and data.customer.email")
        )
    try:
        until = min(parse_expiry(data.expiredAt) or FOREVER, FOREVER)
    except ValueError:
        flags.append(Flag("invalid-expiry", f"data.expiredAt {data.expiredAt!r} is not ISO 8601"))
        until = FOREVER
        if kind == "grant":
            kind = None  # an unreadable expiry grants nothing until a person looks
    license_code = pg_text((data.licenseCode or "").strip())
    return SubscriptionFact(customer, license_code, kind, until, tuple(flags))


SubscriptionStatus = Literal["active", "cancelled", "expired", "pending"]


def subscription_status(
    expiry: datetime | None,
    cancelled_through: datetime | None,
    expired_through: datetime | None,
    now: datetime,
) -> SubscriptionStatus:
    """The status at ``now`` of a folded subscription row (see the module docstring)."""
    if expiry is None:  # never granted: only cancel/expire facts so far
        if expired_through is not None:
            return "expired"
        return "cancelled" if cancelled_through is not None else "pending"
    if expired_through is not None and expired_through >= expiry:
        return "expired"
    if expiry <= now:
        return "expired"
    if cancelled_through is not None and cancelled_through >= expiry:
        return "cancelled"
    return "active"


def _later(a: datetime | None, b: datetime | None) -> datetime | None:
    if a is None:
        return b
    return a if b is None or a >= b else b


class SubscriptionRow:
    """One subscription folded from its facts: only maxima are kept, so any arrival order
    or repetition gives the same row. The one fold rule: the ``subscriptions`` projection
    and the audit's as-of answers both use it."""

    __slots__ = ("cancelled", "expired", "expiry", "position")

    def __init__(self) -> None:
        self.expiry: datetime | None = None
        self.cancelled: datetime | None = None
        self.expired: datetime | None = None
        self.position = 0

    def add(self, fact: SubscriptionFact, position: int) -> None:
        """Fold one fact (logged at ``position``)."""
        if fact.kind == "grant":
            self.expiry = _later(self.expiry, fact.until)
        elif fact.kind == "cancel":
            self.cancelled = _later(self.cancelled, fact.until)
        else:
            self.expired = _later(self.expired, fact.until)
        self.position = max(self.position, position)


def raw_body(state: DeliveryState | DeliveryHead) -> bytes:
    return base64.b64decode(state.body_b64)


class DeliveryHead(msgspec.Struct, frozen=True):
    """The part of a stored ``DeliveryState`` the read models use (decodes faster than the
    whole state: unknown fields such as the headers are skipped)."""

    provider: str
    kind: str
    dedup_key: str
    body_b64: str
    fault: str | None = None
    original_event_id: str | None = None


_head_decoder = msgspec.json.Decoder(DeliveryHead)


def delivery_head(state: bytes) -> DeliveryHead:
    return _head_decoder.decode(state)


def parse_decimal(value: Any) -> Decimal | None:
    if value is None:
        return None
    try:
        return Decimal(str(value))
    except InvalidOperation:
        return None


async def table_digest(conn: Any, queries: Sequence[str]) -> str:
    """sha256 over the rows of each query (each must ORDER BY a unique key and select only
    values that do not depend on arrival order)."""
    h = hashlib.sha256()
    for sql in queries:
        h.update(sql.encode())
        async with conn.transaction():
            async for row in conn.cursor(sql, prefetch=2000):
                h.update(repr(tuple(row.values())).encode())
                h.update(b"\n")
    return h.hexdigest()


def columns(rows: Sequence[Sequence[Any]]) -> list[list[Any]]:
    """Rows to per-column lists, for ``unnest($1::t[], ...)`` batch statements."""
    return [list(col) for col in zip(*rows, strict=True)]
