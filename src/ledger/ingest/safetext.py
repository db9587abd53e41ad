"""What text the ledger stores and compares: the one definition of "safe text".

A provider's string that holds NUL cannot be stored in PostgreSQL ``text``; other control
characters, zero-width and bidi marks make two different strings look the same (or make a
log line lie); lone surrogates cannot be encoded at all. Ingest refuses to interpret such
strings (the delivery is quarantined); folds and edges use ``unsafe_char`` to decide the
same way. Imports nothing from the rest of the ledger.
"""

from __future__ import annotations

import re

# Never in an identifier: C0 controls, DEL, C1 controls, zero-width and joiner/mark
# characters (U+200B-U+200F), bidi embeddings/overrides (U+202A-U+202E), invisible
# operators (U+2060-U+2064), bidi isolates (U+2066-U+2069), BOM/ZWNBSP (U+FEFF) and
# surrogates (only lone ones can reach a ``str``).
_FORBIDDEN = (
    "\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff\ud800-\udfff"
)
# Free text (names, descriptions, messages) may also hold tab, newline and carriage return,
# and the joiners U+200C/U+200D (emoji sequences, Indic scripts); it is shown, never compared.
_FORBIDDEN_IN_TEXT = _FORBIDDEN.replace("\x00-\x1f", "\x00-\x08\x0b\x0c\x0e-\x1f").replace(
    "\u200b-\u200f", "\u200b\u200e\u200f"
)

# For msgspec ``Meta(pattern=...)`` (which uses ``re.search``): ``\Z``, not ``$``, so a
# trailing newline cannot slip past the anchor.
IDENTIFIER_PATTERN = f"^[^{_FORBIDDEN}]*\\Z"
TEXT_PATTERN = f"^[^{_FORBIDDEN_IN_TEXT}]*\\Z"

_UNSAFE = re.compile(f"[{_FORBIDDEN}]")
_UNSAFE_IN_TEXT = re.compile(f"[{_FORBIDDEN_IN_TEXT}]")

WHAT = "a control, zero-width or bidi character"


def unsafe_char(value: str, *, free_text: bool = False) -> str | None:
    """The first character that makes ``value`` unsafe, as ``U+XXXX``; None when safe."""
    m = (_UNSAFE_IN_TEXT if free_text else _UNSAFE).search(value)
    return None if m is None else f"U+{ord(m.group()):04X}"


def is_safe(value: str, *, free_text: bool = False) -> bool:
    return unsafe_char(value, free_text=free_text) is None


def escape(value: str) -> str:
    """``value`` with every unsafe character written as ``\\uXXXX``: storable, and it cannot
    pass for another string (for faults and kinds that quote what a sender sent)."""
    if is_safe(value):
        return value
    return _UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", value)
