"""Read-model access for request handlers: the live generation, positions, read-your-writes.

``ReadModels`` works whether or not this process runs the projection runner: everything it
knows comes from the ``projections`` and ``projection_tracking`` tables, so a web process
and a separate ``ledger worker`` cooperate through the database alone.

Routes get it injected (``read_models: NamedDependency[ReadModels]``) and use it like this::

    await require_position(read_models, "token_balances", min_position)  # or ProjectionLagging
    async with read_models.reading("token_balances") as conn:  # search_path = live schema
        row = await conn.fetchrow(read_models.query("token_balances", "account"), customer)

Nothing here speaks HTTP: failures are the typed errors of ``ledger.errors``
(``ProjectionLagging``, ``ProjectionUnavailable``, ``PositionBeyondHead``,
``UnknownProjection``), which ``ledger.api.problems`` maps to problem+json.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import asyncpg
import msgspec

from ledger.database import ACQUIRE_TIMEOUT, Conn
from ledger.errors import (
    PositionBeyondHead,
    ProjectionLagging,
    ProjectionUnavailable,
    UnknownProjection,
)
from ledger.payments.rules import Catalogue
from ledger.readmodels import replica
from ledger.readmodels.contract import Projection, schema_name
from ledger.readmodels.poison import AUDIT_INDEX, PoisonedEvent
from ledger.sql import package_sql
from ledger.store.eventstore import SQL as STORE_SQL

SQL = package_sql("runner")
REPLICA_SQL = package_sql("replica")


__all__ = ["ProjectionLagging", "ProjectionStatus", "ReadModels", "require_position"]


class ProjectionStatus(msgspec.Struct, kw_only=True):
    """One row of ``GET /v1/projections`` and ``ledger projections status``."""

    name: str
    version: int
    live_generation: int
    building_generation: int | None
    position: int
    building_position: int | None
    head: int
    lag_events: int
    lag_seconds: float
    state: str
    error: str | None
    updated_at: datetime
    digest: str | None = None
    # Events set aside by the live and building generations, unresolved (ADR 0010).
    poisoned: int = 0
    poisoned_events: list[PoisonedEvent] = msgspec.field(default_factory=list)


class _Stamp(msgspec.Struct):
    timestamp: datetime | None = None


_stamp = msgspec.json.Decoder(_Stamp)


def _recorded_at(state: bytes | None) -> datetime | None:
    if not state:
        return None
    try:
        return _stamp.decode(state).timestamp
    except msgspec.DecodeError:
        return None


class ReadModels:
    """Positions and read transactions on the live generation of each projection."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        poll: float = 0.015,
        projections: Mapping[str, Projection] | None = None,
        primary: asyncpg.Pool | None = None,
        wait_timeout: float = 2.0,
    ) -> None:
        # Where reads run. With ``primary`` given, ``pool`` is a streaming replica's
        # (ADR 0019): positions and rows come from the replica, the log's head from the
        # primary, and the replica's failures are ``ReplicaUnavailable``.
        self.pool = pool
        self.primary = primary or pool
        self.on_replica = self.primary is not pool
        self.poll = poll
        # How long ``?min_position`` waits for a position before answering 503.
        self.wait_timeout = wait_timeout
        # The read models of this code base, handed in by the composition root.
        self.projections: dict[str, Projection] = dict(projections or {})

    @asynccontextmanager
    async def _session(self) -> AsyncIterator[Conn]:
        """A connection to where reads run (a replica's failures: ``ReplicaUnavailable``)."""
        if not self.on_replica:
            async with self.pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
                yield conn
            return
        async with replica.answering(), self.pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
            yield conn

    def query(self, projection: str, name: str) -> str:
        """The named read query of a projection (its ``queries``), to run on a connection
        from ``reading(projection)``; ``UnknownProjection`` if either name is unknown."""
        proj = self.projections.get(projection)
        if proj is None or name not in proj.queries:
            raise UnknownProjection(f"no query {name!r} in projection {projection!r}")
        return proj.queries[name]

    def catalogue(self, projection: str) -> Catalogue:
        """The token catalogue ``projection`` folds with, so an answer computed outside the
        read model (the audit's as-of balance) credits exactly as it does. The
        environment's catalogue when the projection keeps none."""
        found = getattr(self.projections.get(projection), "catalogue", None)
        return found if isinstance(found, Catalogue) else Catalogue.from_env()

    async def position(self, name: str) -> int:
        """The position the live generation has applied where reads run (0 if it never
        ran); ``audit_index``: the audit index's position."""
        query = REPLICA_SQL["audit_position"] if name == AUDIT_INDEX else SQL["live_position"]
        async with self._session() as conn:
            value = await conn.fetchval(query, *(() if name == AUDIT_INDEX else (name,)))
        return int(value or 0)

    async def head(self) -> int:
        """The log's head on the primary: the highest committed position (0 when empty)."""
        async with self.primary.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
            value = await conn.fetchval(STORE_SQL["head"])
        return int(value or 0)

    async def live_schema(self, name: str) -> str:
        """The schema of the live generation (``p_<name>_g<N>``); ``ProjectionUnavailable`` if
        not registered."""
        async with self._session() as conn:
            generation = await conn.fetchval(SQL["live_generation"], name)
        if generation is None:
            raise ProjectionUnavailable(name)
        return schema_name(name, generation)

    async def wait_for(
        self,
        name: str,
        position: int,
        timeout: float = 2.0,  # noqa: ASYNC109 -- a polling deadline, part of the contract
    ) -> bool:
        """True once the live generation has applied ``position`` (polls the tracking row,
        which works across processes); False after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        delay = self.poll / 2
        while True:
            if await self.position(name) >= position:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            delay = min(delay * 2, self.poll)
            await asyncio.sleep(min(delay, remaining))

    async def require(
        self,
        name: str,
        position: int,
        timeout: float = 2.0,  # noqa: ASYNC109 -- see wait_for
    ) -> None:
        """Raise ``ProjectionLagging`` unless ``position`` is reached within ``timeout``
        (on a replica ``ReplicaLagging``, which also says how far its replay is behind)."""
        if await self.wait_for(name, position, timeout):
            return
        reached = await self.position(name)
        if not self.on_replica:
            raise ProjectionLagging(name, reached, position)
        async with self._session() as conn:
            lag = await replica.replay_lag(conn)
        behind = max(0, await self.head() - lag.head)
        raise replica.ReplicaLagging(name, reached, position, behind=behind, seconds=lag.seconds)

    async def audit_pool(self, indexed: int) -> asyncpg.Pool:
        """The pool to query the audit index on, once it holds position ``indexed`` (what
        ``ledger.audit.index.catch_up`` returned on the primary): the primary's at once, a
        replica's when it has replayed that far (else ``ReplicaLagging``)."""
        if self.on_replica:
            await self.require(AUDIT_INDEX, indexed, self.wait_timeout)
        return self.pool

    @asynccontextmanager
    async def reading(self, name: str) -> AsyncIterator[Conn]:
        """A pool connection in a read-only, repeatable-read transaction whose
        ``search_path`` is the live generation's schema (then ``public``)."""
        async with (
            self._session() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            generation = await conn.fetchval(SQL["live_generation"], name)
            if generation is None:
                raise ProjectionUnavailable(name)
            await conn.execute(f"SET LOCAL search_path TO {schema_name(name, generation)}, public")
            yield conn

    async def digest(self, proj: Projection, generation: int | None = None) -> str:
        """The content digest of the live (or the given) generation."""
        async with (
            self.pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            if generation is None:
                generation = await conn.fetchval(SQL["live_generation"], proj.name)
                if generation is None:
                    raise ProjectionUnavailable(proj.name)
            await conn.execute(
                f"SET LOCAL search_path TO {schema_name(proj.name, generation)}, public"
            )
            return await proj.digest(conn)

    async def status(self) -> list[ProjectionStatus]:
        """Every registered projection with its position and lag behind the log's head."""
        async with self.pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
            rows = await conn.fetch(SQL["status"])
            head = int(await conn.fetchval(STORE_SQL["head"]))
            now = datetime.now(UTC)
            found: list[ProjectionStatus] = []
            for r in rows:
                position = int(r["position"] or 0)
                lag_seconds = 0.0
                if position < head:
                    stamp = _recorded_at(await conn.fetchval(SQL["first_after"], position))
                    if stamp is not None:
                        lag_seconds = max(0.0, (now - stamp).total_seconds())
                found.append(
                    ProjectionStatus(
                        name=r["name"],
                        version=r["version"],
                        live_generation=r["live_generation"],
                        building_generation=r["building_generation"],
                        position=position,
                        building_position=r["building_position"],
                        head=head,
                        lag_events=max(0, head - position),
                        lag_seconds=round(lag_seconds, 3),
                        state=r["state"],
                        error=r["error"],
                        updated_at=r["updated_at"],
                    )
                )
        return found


async def require_position(
    read_models: ReadModels,
    name: str,
    min_position: int | None,
    timeout: float | None = None,  # noqa: ASYNC109 -- see ReadModels.wait_for
) -> None:
    """For query routes' ``?min_position=N``: wait (bounded: ``timeout``, by default the
    read models' ``wait_timeout``) until the projection has applied N where reads run, else
    raise ``ProjectionLagging`` naming how far it got (``ReplicaLagging`` on a replica). A
    position beyond the primary's head cannot be a write the client saw:
    ``PositionBeyondHead``, at once (no wait)."""
    if min_position is None or min_position <= 0:
        return
    head = await read_models.head()
    if min_position > head:
        raise PositionBeyondHead(min_position, head)
    await read_models.require(
        name, min_position, read_models.wait_timeout if timeout is None else timeout
    )
