"""The projection contract: what a read model in ``projections/`` provides.

A projection is a module in ``projections/`` exposing ``PROJECTION``, an object with:

- ``name`` (str, ``[a-z_]+``) and ``version`` (int, bump when its meaning changes);
- ``topics``: the stored-event topics it handles (others are skipped but still advance
  its position);
- ``schema_sql``: DDL for its tables, written with *unqualified* names. The runner creates
  one PostgreSQL schema per generation (``p_<name>_g<generation>``) and runs the DDL with
  ``search_path`` set to it, so a rebuild builds generation N+1 beside the live N;
- ``async apply(conn, records)``: fold a batch (log order) into its tables. It runs inside
  the runner's transaction with ``search_path`` set to the generation being built, and
  the runner writes the tracking position in that same transaction (exactly-once);
- ``async digest(conn) -> str``: a deterministic content digest of its tables (same
  events, same digest, whatever the arrival order or batching);
- ``queries``: its named SQL statements (its ``.sql`` file, loaded by name). Readers run
  the read ones on the live generation through ``ReadModels.query(projection, name)``,
  so the core reads a read model without importing it.

Handlers must be idempotent under replay of the same records (they are, because a batch
and its position commit together) and must raise on data they cannot fold, never log and
carry on: the runner retries the batch, then sets the events that fail on their own aside
as poisoned (ADR 0010) and applies the rest, so ``apply`` must give the same result for
any subset of a batch (it does when the fold is order-independent, ADR 0008). A poisoned
event may be applied later, after others, by an operator's retry.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Protocol, runtime_checkable

from ledger.database import Conn as Conn  # re-exported: what projections annotate with
from ledger.store.eventstore import StoredRecord

NAME = re.compile(r"^[a-z][a-z0-9_]{0,40}$")


@runtime_checkable
class Projection(Protocol):
    name: str
    version: int
    topics: tuple[str, ...]
    schema_sql: str
    queries: Mapping[str, str]

    async def apply(self, conn: Conn, records: Sequence[StoredRecord]) -> None: ...

    async def digest(self, conn: Conn) -> str: ...


def schema_name(name: str, generation: int) -> str:
    """The PostgreSQL schema holding one generation of a projection's tables."""
    if not NAME.match(name):
        raise ValueError(f"invalid projection name {name!r}")
    return f"p_{name}_g{int(generation)}"


def discover(package: ModuleType) -> dict[str, Projection]:
    """Every ``PROJECTION`` in ``package`` (the composition root passes the read models'
    package; the core never names it), by name."""
    found: dict[str, Projection] = {}
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        proj = getattr(module, "PROJECTION", None)
        if proj is None:
            continue
        if not isinstance(proj, Projection) or not NAME.match(proj.name):
            raise TypeError(f"{module.__name__}.PROJECTION does not fit the contract")
        if proj.name in found:
            raise ValueError(f"two projections named {proj.name!r}")
        found[proj.name] = proj
    return found
