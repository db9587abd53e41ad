"""Waiting on conditions: the one polling helper of the test suite."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

# How long a test waits for a condition before it fails. A guard against a hang, never a
# speed assertion: a condition that holds arrives much sooner, on any machine.
PATIENCE = 60.0


async def until(
    condition: Callable[[], Awaitable[T] | T],
    *,
    timeout: float = PATIENCE,
    every: float = 0.05,
    what: str = "condition",
) -> T:
    """Poll ``condition`` (sync or async) until it returns something truthy; return that.

    Tests wait on conditions, never on sleeps. Fails with the last value seen after
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout:.0f}s (last: {value!r})")
        await asyncio.sleep(every)
