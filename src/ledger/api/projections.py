"""Projection operations (``ops:admin``): status with lag, content digests, rebuilds, and the
events each consumer of the log set aside (poisoned, ADR 0010) with their retry."""

from __future__ import annotations

from typing import Annotated, Any

import asyncpg
import msgspec
from litestar import Request
from litestar.di import NamedDependency
from litestar.params import FromPath, QueryParameter

from ledger.api.auth import KeyedController, current_key, keyed_get, keyed_post, reason_missing
from ledger.api.params import ACQUIRE_TIMEOUT
from ledger.api.problems import problem
from ledger.audit import index as audit
from ledger.audit.trail import ReasonRequired, append_in, check_reason, operator_event
from ledger.readmodels import poison
from ledger.readmodels import runner as runners
from ledger.readmodels.access import ProjectionStatus, ReadModels
from ledger.readmodels.contract import Conn, Projection
from ledger.store.eventstore import EventStore


class ConsumerStatus(msgspec.Struct, kw_only=True):
    """The audit index as a consumer of the log: where it is and what it set aside."""

    name: str
    position: int
    head: int
    lag_events: int
    poisoned: int
    poisoned_events: list[poison.PoisonedEvent]


class ProjectionList(msgspec.Struct, kw_only=True):
    items: list[ProjectionStatus]
    head: int
    audit_index: ConsumerStatus | None = None


class RetryDone(msgspec.Struct, kw_only=True):
    """What ``POST /v1/projections/{name}/retry`` re-applied (log positions)."""

    name: str
    resolved: list[int]
    still_poisoned: list[int]
    generations: list[poison.RetryOutcome]


class RebuildStarted(msgspec.Struct, kw_only=True):
    name: str
    generation: int
    live_generation: int
    started: bool  # false: a rebuild was already in progress; this is its generation


def known(read_models: ReadModels) -> dict[str, Projection]:
    """The projections of this code base, as this process configured them (also when its
    runner runs in another process, ADR 0030)."""
    return read_models.projections or runners.available()


def _find(read_models: ReadModels, name: str) -> Projection:
    projections = known(read_models)
    proj = projections.get(name)
    if proj is None:
        raise problem(
            404,
            "projection-not-found",
            "No such projection",
            f"there is no projection named {name!r}; known: {sorted(projections)}",
        )
    return proj


def _reason(request: Request[Any, Any, Any]) -> str:
    try:
        return check_reason(request.headers.get("x-ledger-reason"))
    except ReasonRequired as exc:
        raise reason_missing(exc) from None


async def _audit_status(conn: Conn, poisoned: poison.Poisoned) -> ConsumerStatus:
    row = await conn.fetchrow(audit.SQL["index_behind"])
    position, head = (int(row["position"]), int(row["head"])) if row else (0, 0)
    return ConsumerStatus(
        name=poison.AUDIT_INDEX,
        position=position,
        head=head,
        lag_events=max(0, head - position),
        poisoned=poisoned.count,
        poisoned_events=poisoned.entries,
    )


async def _with_digests(
    rm: ReadModels, items: list[ProjectionStatus], projections: dict[str, Projection]
) -> None:
    for st in items:
        proj = projections.get(st.name)
        if proj is not None:
            st.digest = await rm.digest(proj)


class ProjectionsController(KeyedController):
    path = "/v1/projections"
    tags = ["operations"]
    opt = {"scopes": ("ops:admin",)}

    @keyed_get("/", "Every projection: version, generations, position, lag, state")
    async def list_projections(
        self,
        read_models: NamedDependency[ReadModels],
        store: NamedDependency[EventStore],
        pool: NamedDependency[asyncpg.Pool],
        digest: Annotated[
            bool, QueryParameter(description="also compute each live content digest")
        ] = False,
    ) -> ProjectionList:
        rm = read_models
        items = await rm.status()
        if digest:
            await _with_digests(rm, items, known(read_models))
        head = items[0].head if items else await store.head()
        async with pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
            index = await _audit_status(conn, await poison.annotate(conn, items))
        return ProjectionList(items=items, head=head, audit_index=index)

    @keyed_get("/{name:str}", "One projection's status", 404)
    async def get_projection(
        self,
        read_models: NamedDependency[ReadModels],
        pool: NamedDependency[asyncpg.Pool],
        name: FromPath[str],
        digest: Annotated[bool, QueryParameter(description="also compute the digest")] = False,
    ) -> ProjectionStatus:
        rm = read_models
        found = [st for st in await rm.status() if st.name == name]
        if not found:
            _find(read_models, name)  # 404 when the code does not know it either
            raise problem(
                503,
                "projection-unavailable",
                "The projection is not available",
                f"projection {name!r} has not been started on this database yet",
                headers={"Retry-After": "1"},
            )
        if digest:
            await _with_digests(rm, found, known(read_models))
        async with pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
            await poison.annotate(conn, found)
        return found[0]

    @keyed_post(
        "/{name:str}/rebuild", "Rebuild from position 0 (blue/green)", 404, 413, status_code=202
    )
    async def rebuild(
        self,
        request: Request[Any, Any, Any],
        read_models: NamedDependency[ReadModels],
        pool: NamedDependency[asyncpg.Pool],
        name: FromPath[str],
    ) -> RebuildStarted:
        """Start building a new generation beside the live one; the runner (in this or
        another process) folds it from position 0 and switches readers when it catches
        up. Follow it with ``GET /v1/projections``. Needs ``X-Ledger-Reason``: the request
        is recorded in the log as an operator action."""
        proj = _find(read_models, name)
        reason = _reason(request)
        key = current_key(request)
        async with pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn, conn.transaction():
            # The rebuild and its operator event commit together (the trail never lies).
            generation, started = await runners.start_rebuild(conn, proj)
            await append_in(
                conn,
                operator_event(key.key_id, "ops:admin", "projection.rebuild", name, reason),
            )
        live = int((await read_models.live_schema(name)).rpartition("_g")[2])
        return RebuildStarted(
            name=name, generation=generation, live_generation=live, started=started
        )

    @keyed_post(
        "/{name:str}/retry", "Re-apply a consumer's poisoned events", 404, 413, status_code=200
    )
    async def retry(
        self,
        request: Request[Any, Any, Any],
        read_models: NamedDependency[ReadModels],
        pool: NamedDependency[asyncpg.Pool],
        name: FromPath[str],
    ) -> RetryDone:
        """After a fix, re-apply the events projection ``name`` (or ``audit_index``) set
        aside: each one that now applies is marked resolved, each one that still fails
        stays poisoned with its new error. Late is correct: projections are
        order-independent folds (ADR 0008, 0010). Needs ``X-Ledger-Reason``: the retry and
        its operator event in the log commit together."""
        proj = None if name == poison.AUDIT_INDEX else _find(read_models, name)
        reason = _reason(request)
        key = current_key(request)
        try:
            async with pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn, conn.transaction():
                if proj is None:
                    outcomes = [await audit.retry_poisoned(conn)]
                else:
                    outcomes = await runners.retry_poisoned(conn, proj)
                await append_in(
                    conn,
                    operator_event(key.key_id, "ops:admin", "projection.retry", name, reason),
                )
        except poison.ENVIRONMENT as exc:  # not the events': nothing was changed
            raise problem(
                503,
                "retry-failed",
                "The retry could not run",
                f"nothing was changed: {poison.error_text(exc)}",
                headers={"Retry-After": "5"},
            ) from None
        return RetryDone(
            name=name,
            resolved=[p for o in outcomes for p in o.resolved],
            still_poisoned=[p for o in outcomes for p in o.still_poisoned],
            generations=outcomes,
        )
