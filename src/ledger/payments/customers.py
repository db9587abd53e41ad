"""Customers are e-mail addresses, normalised once, here, for the whole service.

``normalize_email``: Unicode NFKC, then ``str.casefold()``, then trimmed; the result must
look like an address (``local@domain`` with a dot in the domain, at most 254 characters,
local part at most 64) and must not be a lookalike: no control, zero-width or bidi
characters, no symbols outside ASCII, and the letters of one script only (``budi@ex\u0430mple.com``
with a Cyrillic ``\u0430`` is refused, so it can never be credited to ``budi@example.com``'s
account nor open a new one). Ingest quarantines a delivery whose address fails; the folds
use ``customer_key``, which answers None (no customer: flagged for review) for the same.

Before 2026-11 the rule was ``strip().lower()`` with no shape check; for ASCII addresses the
two agree, so only non-ASCII or malformed addresses in older events fold differently (the
read models that fold customers bumped their version for it).

Imports nothing from the rest of the ledger but ``safetext``.
"""

from __future__ import annotations

import functools
import re
import unicodedata

from ledger.errors import LedgerError
from ledger.ingest.safetext import WHAT, unsafe_char

MAX_EMAIL = 254
MAX_LOCAL = 64
_SHAPE = re.compile(r"[^@\s]{1,64}@[^@\s.]+(?:\.[^@\s.]+)+")
# Scripts that are written together (Japanese mixes Han, Hiragana and Katakana).
_SAME_SCRIPT = {"CJK": "HAN", "HIRAGANA": "HAN", "KATAKANA": "HAN"}


class NotAnAddress(LedgerError, ValueError):
    """The text is not an e-mail address the ledger can keep apart from every other one."""


def _script(ch: str) -> str | None:
    """The script of a letter or digit; None for ASCII punctuation and combining marks."""
    if ch.isascii():
        return "LATIN" if ch.isalpha() else None
    category = unicodedata.category(ch)
    if category[0] not in "LMN":
        raise NotAnAddress(f"contains U+{ord(ch):04X}, a symbol or punctuation outside ASCII")
    first = unicodedata.name(ch, "UNKNOWN").split(" ", 1)[0]
    if first == "COMBINING":
        return None
    return _SAME_SCRIPT.get(first, first)


def normalize_email(raw: str) -> str:
    """The customer key for ``raw``; raises ``NotAnAddress`` saying why it cannot be one."""
    value = unicodedata.normalize("NFKC", raw).casefold().strip()
    if not value:
        raise NotAnAddress("is empty")
    bad = unsafe_char(value)
    if bad is not None:
        raise NotAnAddress(f"contains {bad}, {WHAT}")
    if len(value) > MAX_EMAIL:
        raise NotAnAddress(f"is longer than {MAX_EMAIL} characters")
    if _SHAPE.fullmatch(value) is None:
        raise NotAnAddress(
            f"is not local@domain (local part of 1-{MAX_LOCAL} characters, a dot in the domain)"
        )
    scripts = {s for s in map(_script, value) if s is not None}
    if len(scripts) > 1:
        raise NotAnAddress(f"mixes scripts ({', '.join(sorted(scripts)).lower()})")
    return value


def customer_key(raw: str | None) -> str | None:
    """``normalize_email`` for folds and lookups: None when absent, blank or not an address."""
    if raw is None or not raw.strip():
        return None
    return _key(raw)


@functools.lru_cache(maxsize=65_536)
def _key(raw: str) -> str | None:
    # A pure function of the string, called for every payment by every fold (rebuilds read
    # the same few customers many times): cached, bounded.
    try:
        return normalize_email(raw)
    except NotAnAddress:
        return None
