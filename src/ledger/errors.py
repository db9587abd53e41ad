"""The ledger's typed errors: one root, ``LedgerError``, and one subclass per failure.

Each failure a caller can act on is a subclass whose docstring is its default message
(procrastinate's style). Errors are values inside the service; ``ledger.api.problems`` is
the one place that turns them into problem+json at the edge. Errors whose home is one
concept's package stay there (``StoreUnavailable`` in ``ledger.store.eventstore``,
``InsufficientTokens`` in ``ledger.accounts.spend``, ...) and derive from ``LedgerError``;
the read-model errors live here because the API maps them and ``readmodels`` must not
know HTTP. This module imports nothing from ``ledger``, so every package may import it.
"""

from __future__ import annotations


class LedgerError(Exception):
    """A ledger operation failed."""

    def __init__(self, *args: object) -> None:
        super().__init__(*(args or ((self.__doc__ or "").strip().split("\n")[0],)))


class UnknownProjection(LedgerError, LookupError):
    """No projection of that name exists in this code base."""


class ProjectionUnavailable(LedgerError):
    """The projection has not been started on this database yet; retry shortly."""

    def __init__(self, name: str) -> None:
        super().__init__(f"projection {name!r} has not been started on this database yet")
        self.name = name


class ProjectionLagging(LedgerError):
    """A projection has not reached the position a reader asked for (yet)."""

    def __init__(self, name: str, reached: int, wanted: int) -> None:
        super().__init__(f"projection {name} is at position {reached}, wanted {wanted}")
        self.name = name
        self.reached = reached
        self.wanted = wanted


class PositionBeyondHead(LedgerError):
    """A reader asked for a position beyond the log's head (not a write it saw)."""

    def __init__(self, wanted: int, head: int) -> None:
        super().__init__(f"position {wanted} is beyond the log's head {head}")
        self.wanted = wanted
        self.head = head


class NotConfigured(LedgerError):
    """A component was used before the composition root configured it (a deployment
    fault: a consumer retries it and never sets an event aside for it)."""
