"""What every sender module provides: verification on raw bytes, then typed decoding.

``accept(headers, body)`` raises ``Unauthorized`` (nothing is recorded: 401) or ``Unusable``
(authenticated but unusable: the raw delivery is quarantined, 400), or returns an
``Accepted`` with the dedup key and the provider's event kind.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import msgspec


class Unauthorized(Exception):
    """Missing or wrong credentials; the message names the header or field, never a value."""


class Unusable(Exception):
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


def kept_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {k: v[:512] for k, v in headers.items() if k.lower() in KEPT_HEADERS}


def secrets_equal(given: str | None, expected: str | None) -> bool:
    """Constant-time comparison; an unset expected secret matches nothing."""
    if not expected or given is None:
        return False
    return hmac.compare_digest(given.encode(), expected.encode())


def check_token(headers: Mapping[str, str], header: str, expected: str | None, who: str) -> None:
    if not expected:
        raise Unauthorized(f"{who} webhooks are not accepted: no {who} secret is configured")
    given = headers.get(header)
    if given is None:
        raise Unauthorized(f"missing {header} header")
    if not secrets_equal(given, expected):
        raise Unauthorized(f"{header} header does not match the configured {who} token")


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
    return text if len(text) <= 300 else text[:300] + "..."


def body_digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()
