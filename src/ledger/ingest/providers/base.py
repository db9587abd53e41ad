"""What every sender module provides: verification on raw bytes, then typed decoding.

``accept(headers, body)`` raises ``Unauthorized`` (nothing is recorded: 401) or ``Unusable``
(authenticated but unusable: the raw delivery is quarantined, 400), or returns an
``Accepted`` with the dedup key and the provider's event kind.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated, Protocol

import msgspec
from msgspec import Meta

from ledger.errors import LedgerError
from ledger.ingest.safetext import IDENTIFIER_PATTERN, TEXT_PATTERN, WHAT, escape, unsafe_char
from ledger.payments.customers import NotAnAddress, normalize_email


class Unauthorized(LedgerError):
    """Missing or wrong credentials; the message names the header or field, never a value."""


class Unusable(LedgerError):
    """Authenticated, but the payload cannot be used; the message names the fault."""

    def __init__(self, detail: str, *, kind: str = "unknown") -> None:
        super().__init__(detail)
        self.kind = kind


@dataclass(frozen=True, slots=True)
class Accepted:
    dedup_key: str
    kind: str


class Provider(Protocol):
    name: str
    scheme: str

    def accept(self, headers: Mapping[str, str], body: bytes) -> Accepted: ...


# Headers worth keeping with the event. Credentials and signatures are never kept.
KEPT_HEADERS = frozenset(
    {
        "content-type",
        "user-agent",
        "webhook-id",
        "x-request-id",
        "x-forwarded-for",
        "idempotency-key",
        "x-idempotency-key",
        "x-callback-id",
        "x-mayar-event",
    }
)


# Headers that carry a credential: sent twice, we could not say which one vouches for the
# delivery (a proxy may pass the first, we may read the last), so the delivery is refused.
CREDENTIAL_HEADERS = frozenset(
    {"x-callback-token", "x-pwa-signature", "x-signature", "x-callback-signature", "authorization"}
)


def kept_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The headers kept with the event, escaped so they store and compare safely."""
    return {k: escape(v[:512]) for k, v in headers.items() if k.lower() in KEPT_HEADERS}


def check_single(repeated: Collection[str]) -> None:
    """Refuse a delivery that repeats a credential header (see ``CREDENTIAL_HEADERS``)."""
    twice = sorted(CREDENTIAL_HEADERS.intersection(h.lower() for h in repeated))
    if twice:
        raise Unauthorized(f"the {twice[0]} header appears more than once")


def secret_list(value: str | None) -> tuple[str, ...]:
    """A secret setting is a comma-separated list (``new,old``) so a key can be rotated
    without refusing deliveries; the first one signs what we send."""
    return tuple(p.strip() for p in (value or "").split(",") if p.strip())


def matches_any(given: bytes, expected: Sequence[bytes]) -> bool:
    """Constant-time against each expected value, and every one is compared (no early
    exit), so the timing does not say which secret matched."""
    found = False
    for candidate in expected:
        found |= hmac.compare_digest(given, candidate)
    return found


def secrets_equal(given: str | None, expected: Sequence[str]) -> bool:
    """Constant-time comparison; no configured secret matches nothing."""
    if not expected or given is None:
        return False
    return matches_any(given.encode(), [e.encode() for e in expected])


def check_token(headers: Mapping[str, str], header: str, expected: Sequence[str], who: str) -> None:
    if not expected:
        raise Unauthorized(f"{who} webhooks are not accepted: no {who} secret is configured")
    given = headers.get(header)
    if given is None:
        raise Unauthorized(f"missing {header} header")
    if not secrets_equal(given, expected):
        raise Unauthorized(f"{header} header does not match the configured {who} token")


def header_id(headers: Mapping[str, str], name: str) -> str | None:
    """A header that becomes part of a dedup key: safe identifier text of bounded length."""
    value = headers.get(name)
    if value is None or value == "":
        return None
    if len(value) > MAX_IDENTIFIER or unsafe_char(value) is not None:
        raise Unusable(
            f"header {name}: longer than {MAX_IDENTIFIER} characters or contains {WHAT}",
            kind="unsafe-header",
        )
    return value


def hmac_sha256_hex(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


# A string literal (its closing quote optional, so an unterminated one ends the scan instead
# of being retried from every later quote: linear time) or a bracket.
_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*"?|[\[\]{}]', re.DOTALL)


def check_depth(body: bytes, max_depth: int) -> None:
    """Reject JSON nested deeper than ``max_depth`` before any decoder sees it.

    Fast path: a body with fewer brackets than the limit cannot be too deep. Otherwise one
    linear scan skips string literals (brackets inside them do not nest) and counts the rest;
    Midtrans runs this before authentication, so it must stay cheap on any input.
    """
    if body.count(b"{") + body.count(b"[") <= max_depth:
        return
    depth = 0
    for m in _TOKENS.finditer(body):
        token = m.group()
        if token[:1] == b'"':
            continue
        if token in (b"{", b"["):
            depth += 1
            if depth > max_depth:
                raise Unusable(f"JSON nesting deeper than {max_depth} levels", kind="too-deep")
        else:
            depth -= 1


# What decoding a body can raise: msgspec raises UnicodeDecodeError (not DecodeError) for
# invalid UTF-8 inside a string, which must be a 400/401 like any other bad body, never a 500.
DECODE_ERRORS: tuple[type[Exception], ...] = (msgspec.DecodeError, UnicodeDecodeError)


def decode_error(exc: Exception) -> str:
    """msgspec's message already names the path (``at `$.data.id```); keep it short."""
    if isinstance(exc, UnicodeDecodeError):
        return f"body is not valid UTF-8 (byte {exc.start} of a string)"
    text = str(exc)
    for pattern, meaning in PATTERN_MEANINGS.items():
        text = text.replace(f"matching regex {pattern!r}", meaning)
    text = escape(text)
    return text if len(text) <= 300 else text[:300] + "..."


def body_digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


# -- field shapes for the inbound Structs ------------------------------------------------
# Bounds are generous for real payloads (every provider's ids are < 100 characters) and
# small enough that nothing we store or compare is unbounded.
MAX_IDENTIFIER = 256
MAX_TEXT = 4096
MAX_EMAIL_INPUT = 320

Identifier = Annotated[str, Meta(max_length=MAX_IDENTIFIER, pattern=IDENTIFIER_PATTERN)]
"""An id, code, status, name of a thing or timestamp: no control, zero-width or bidi mark."""
Text = Annotated[str, Meta(max_length=MAX_TEXT, pattern=TEXT_PATTERN)]
"""Free text shown to people (description, message): may hold tab and newlines."""
EmailText = Annotated[str, Meta(max_length=MAX_EMAIL_INPUT, pattern=IDENTIFIER_PATTERN)]
"""An e-mail address as sent; ``check_email`` then decides whether it is one."""
Count = Annotated[int, Meta(ge=0, le=2**63 - 1)]

PATTERN_MEANINGS = {
    IDENTIFIER_PATTERN: f"without {WHAT}",
    TEXT_PATTERN: f"without {WHAT}",
}

# The largest amount a delivery may carry: 10^13 IDR (ten trillion rupiah) is far above any
# single payment, far below where Decimal or PostgreSQL numeric arithmetic gets awkward.
MAX_AMOUNT = Decimal(10) ** 13
_CENT = Decimal("0.01")


def check_amount(value: Decimal | None, where: str) -> None:
    """Money is finite, non-negative, at most ``MAX_AMOUNT`` with at most two decimals.

    msgspec's numeric constraints do not apply to ``Decimal`` (and ``"NaN"``/``"Infinity"``
    decode as Decimals), so amounts are checked here; a failure makes the delivery unusable.
    """
    if value is None:
        return
    ok = value.is_finite() and Decimal(0) <= value <= MAX_AMOUNT
    if ok and value != value.quantize(_CENT):
        ok = False
    if not ok:
        raise Unusable(
            f"{where}: an amount must be a finite decimal between 0 and {MAX_AMOUNT:,} "
            "with at most two decimals",
            kind="bad-amount",
        )


def check_email(value: str | None, where: str) -> None:
    """An e-mail address that is present must be one (see ``ledger.payments.customers``)."""
    if value is None or not value.strip():
        return
    try:
        normalize_email(value)
    except NotAnAddress as exc:
        raise Unusable(
            f"{where}: not a usable e-mail address: it {exc}", kind="bad-email"
        ) from None
