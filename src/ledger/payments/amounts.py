"""How an amount is written wherever we show one: a plain decimal string.

Amounts read back from ``numeric`` columns can carry an exponent (asyncpg gives
``Decimal("5.5E+5")`` for 550000), and ``str()`` of such a Decimal is scientific notation.
Finance reads these strings, so every amount we print goes through ``plain``.
"""

from __future__ import annotations

from decimal import Decimal


def plain(value: Decimal | int | str) -> str:
    """``value`` in positional notation, its scale kept: "550000", "100000.10", "0.10"."""
    return format(Decimal(value), "f")


def plain_or_none(value: Decimal | int | str | None) -> str | None:
    """``plain``, passing None through (an amount the event does not carry)."""
    return None if value is None else plain(value)
