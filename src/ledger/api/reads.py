"""Which routes read on the replica (ADR 0019).

A read-only route declares ``dependencies=ON_REPLICA`` (a controller: ``dependencies =
ON_REPLICA``): its ``read_models`` is then the one on ``LEDGER_READ_DATABASE_URL``'s replica,
or the primary's when none is configured. Everything else keeps the primary's: writes,
spends (they need the primary's locks), projection admin, key checks.
"""

from __future__ import annotations

from litestar.di import NamedDependency, Provide

from ledger.readmodels.access import ReadModels


def _on_replica(replica_models: NamedDependency[ReadModels]) -> ReadModels:
    return replica_models


ON_REPLICA = {"read_models": Provide(_on_replica, sync_to_thread=False)}
