"""RFC 9457 problem details: one stable ``type`` per fault, a ``detail`` naming the field."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import asyncpg
import msgspec
from litestar import Request
from litestar.exceptions import HTTPException
from litestar.openapi import ResponseSpec
from litestar.plugins.problem_details import ProblemDetailsConfig, ProblemDetailsException
from litestar.response import Response

from ledger.accounts.spend import IdempotencyConflict, InsufficientTokens, SpendBusy
from ledger.audit.trail import ReasonRequired
from ledger.errors import (
    LedgerError,
    PositionBeyondHead,
    ProjectionLagging,
    ProjectionUnavailable,
    UnknownProjection,
)
from ledger.outbox.dispatcher import NotRetryable
from ledger.payments.registration import InvalidRegistration, RegistrationConflict
from ledger.readmodels.replica import ReplicaLagging, ReplicaUnavailable
from ledger.store.eventstore import UNAVAILABLE_ERRORS, StoreUnavailable

MEDIA_TYPE = "application/problem+json"
E = TypeVar("E", bound=Exception)

TITLES = {
    400: ("bad-request", "The request is malformed"),
    401: ("unauthorized", "Missing or wrong credentials"),
    403: ("forbidden", "The API key lacks the required scope"),
    404: ("not-found", "No such resource"),
    405: ("method-not-allowed", "Method not allowed"),
    409: ("conflict", "Conflict"),
    413: ("body-too-large", "The request body is too large"),
    429: ("rate-limited", "Too many requests"),
    503: ("unavailable", "Temporarily unavailable; retry later"),
}


def problem(
    status: int,
    slug: str,
    title: str,
    detail: str,
    *,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> ProblemDetailsException:
    return ProblemDetailsException(
        status_code=status,
        type_=f"/problems/{slug}",
        title=title,
        detail=detail,
        headers=headers,
        extra=extra or None,
    )


def _from_http(exc: HTTPException) -> ProblemDetailsException:
    if isinstance(exc, ProblemDetailsException):
        return exc
    slug, title = TITLES.get(exc.status_code, ("error", "Error"))
    detail = exc.detail
    if exc.status_code == 413:
        detail = "the request body exceeds this route's size limit"
    extra: dict[str, Any] = {}
    if isinstance(exc.extra, dict):
        extra = exc.extra
    elif isinstance(exc.extra, list):
        extra = {"errors": exc.extra}
    return problem(exc.status_code, slug, title, detail, headers=exc.headers, **extra)


class Problem(msgspec.Struct, kw_only=True):
    """RFC 9457 problem details as this service sends them (more members may follow)."""

    type: str
    title: str
    status: int
    detail: str


_DESCRIPTIONS = {
    400: "Invalid parameter or body (the detail names it)",
    401: "Missing, unknown or revoked API key",
    403: "The API key lacks the route's scope",
    404: "No such resource",
    409: "Conflict with the current state",
    413: "The request body is too large",
    503: "The database or a read model is unavailable; retry after Retry-After seconds",
}


def responses(*codes: int) -> dict[int, ResponseSpec]:
    """OpenAPI entries for the problem answers a route gives (``responses=`` of a route)."""
    return {
        code: ResponseSpec(
            data_container=Problem,
            media_type=MEDIA_TYPE,
            description=_DESCRIPTIONS[code],
            generate_examples=False,
        )
        for code in codes
    }


# What every keyed route may answer besides its success.
KEYED = (400, 401, 403, 503)


def _from_unavailable(exc: Exception) -> ProblemDetailsException:
    # Every "database unreachable" error (refused or missing socket, a killed session, a
    # server shutting down or starting up, too many connections, a pool acquire that timed
    # out) is a 503 with Retry-After, from whichever route met it.
    return problem(
        503,
        "store-unavailable",
        "The event store is unavailable",
        "the event store could not be reached; nothing was recorded, retry later",
        headers={"Retry-After": "5"},
    )


def _from_data_error(exc: Exception) -> ProblemDetailsException:
    # A value PostgreSQL cannot take (out of range, not representable): the request's fault
    # wherever the routes' own bounds did not catch it first. Never a 500.
    logging.getLogger("ledger.api").warning("value refused by the database: %s", type(exc).__name__)
    return problem(
        400,
        "invalid-value",
        "A parameter holds a value that cannot be used",
        "a parameter is out of range or holds characters that cannot be stored",
    )


def _from_unexpected(exc: Exception) -> ProblemDetailsException:
    # A bug: answer problem+json without internals; the traceback goes to the log.
    logging.getLogger("ledger.api").error("unhandled error", exc_info=exc)
    return problem(500, "internal", "Internal error", "an unexpected error occurred; it was logged")


# -- the typed errors of ledger.errors and each concept's package: the one mapping --------


@dataclass(frozen=True)
class Answer(Generic[E]):
    """How one typed error answers: its status, ``/problems/<slug>`` and title; the detail is
    the error's own message unless ``detail`` words it; ``members`` adds problem members;
    ``retry_after`` (seconds) marks a fault that passes."""

    status: int
    slug: str
    title: str
    detail: Callable[[E], str] = str
    members: Callable[[E], dict[str, Any]] = lambda _: {}
    retry_after: str | None = None


ANSWERS: dict[type[LedgerError], Answer[Any]] = {
    ProjectionLagging: Answer[ProjectionLagging](
        503,
        "projection-lagging",
        "The projection has not caught up yet",
        lambda e: (
            f"projection {e.name!r} has applied up to position {e.reached}; "
            f"position {e.wanted} was asked for. Retry shortly."
        ),
        lambda e: {
            "projection": e.name,
            "reached": e.reached,
            "wanted": e.wanted,
            "lag": e.wanted - e.reached,
        },
        retry_after="1",
    ),
    ProjectionUnavailable: Answer[ProjectionUnavailable](
        503,
        "projection-unavailable",
        "The projection is not available",
        lambda e: f"projection {e.name!r} has not been started on this database yet; retry shortly",
        lambda e: {"projection": e.name},
        retry_after="1",
    ),
    PositionBeyondHead: Answer[PositionBeyondHead](
        400,
        "min-position-beyond-head",
        "min_position is beyond the log's head",
        lambda e: (
            f"query parameter 'min_position' is {e.wanted} but the log's head is "
            f"{e.head}; pass a position this service returned"
        ),
        lambda e: {"parameter": "min_position", "head": e.head},
    ),
    UnknownProjection: Answer(404, "projection-not-found", "No such projection"),
    InsufficientTokens: Answer[InsufficientTokens](
        409,
        "insufficient-tokens",
        "Not enough tokens",
        lambda e: f"the balance is {e.balance} tokens; {e.amount} were asked for",
        lambda e: {"balance": e.balance, "amount": e.amount},
    ),
    IdempotencyConflict: Answer[IdempotencyConflict](
        409,
        "idempotency-key-reused",
        "The idempotency key was used for a different spend",
        lambda e: (
            f"idempotency_key was first used to spend {e.first.amount} tokens; "
            "use a new key for a new spend"
        ),
    ),
    SpendBusy: Answer(503, "spend-busy", "Try again", retry_after="1"),
    InvalidRegistration: Answer[InvalidRegistration](
        400,
        "invalid-registration",
        "Invalid order registration",
        members=lambda e: {"field": e.field},
    ),
    RegistrationConflict: Answer[RegistrationConflict](
        409,
        "registration-conflict",
        "The order was registered with different terms",
        lambda e: (
            f"the order was first registered with a different {', '.join(e.fields)}; "
            "the first registration stands (register a new order id for new terms)"
        ),
        lambda e: {"fields": e.fields},
    ),
    NotRetryable: Answer(409, "not-retryable", "The message cannot be retried"),
    ReasonRequired: Answer[ReasonRequired](
        400,
        "reason-required",
        "A reason is required",
        lambda e: f"send why in the X-Ledger-Reason header ({e})",
    ),
}


def _from_typed(exc: Exception) -> ProblemDetailsException:
    """The answer ``ANSWERS`` gives the error (its nearest class there); a typed error with no
    entry reached the edge: a bug, like any other."""
    answer = next((ANSWERS[c] for c in type(exc).__mro__ if c in ANSWERS), None)
    if answer is None:
        return _from_unexpected(exc)
    retry = None if answer.retry_after is None else {"Retry-After": answer.retry_after}
    return problem(
        answer.status,
        answer.slug,
        answer.title,
        answer.detail(exc),
        headers=retry,
        **answer.members(exc),
    )


def _from_replica_lagging(exc: Exception) -> ProblemDetailsException:
    assert isinstance(exc, ReplicaLagging)
    seconds = "" if exc.seconds is None else f", {exc.seconds:g} s"
    return problem(
        503,
        "replica-lagging",
        "The read replica has not replayed that position yet",
        f"on the read replica, {exc.name!r} has applied up to position {exc.reached}; "
        f"position {exc.wanted} was asked for. The replica is {exc.behind} positions"
        f"{seconds} behind the primary. Retry shortly.",
        headers={"Retry-After": str(exc.retry_after)},
        projection=exc.name,
        reached=exc.reached,
        wanted=exc.wanted,
        lag=exc.wanted - exc.reached,
        replica_lag_positions=exc.behind,
        replica_lag_seconds=exc.seconds,
    )


def _from_replica_unavailable(exc: Exception) -> ProblemDetailsException:
    return problem(
        503,
        "replica-unavailable",
        "The read replica is unavailable",
        f"{exc}; nothing was read, retry later (writes are not affected)",
        headers={"Retry-After": "5"},
    )


def _from_rolled_back(exc: Exception) -> ProblemDetailsException:
    # A serialization failure, a deadlock, or a replica's replay cancelling a query: the
    # same request succeeds when retried.
    return problem(
        503,
        "try-again",
        "The query was cancelled; retry",
        f"the database cancelled the query ({type(exc).__name__}); retry shortly",
        headers={"Retry-After": "1"},
    )


def problem_handler(request: Request[Any, Any, Any], exc: ProblemDetailsException) -> Response[Any]:
    return exc.to_response(request)


CONFIG = ProblemDetailsConfig(
    enable_for_all_http_exceptions=False,
    exception_to_problem_detail_map={
        HTTPException: _from_http,
        StoreUnavailable: _from_unavailable,
        ReplicaUnavailable: _from_replica_unavailable,
        ReplicaLagging: _from_replica_lagging,
        LedgerError: _from_typed,
        **dict.fromkeys(ANSWERS, _from_typed),
        **dict.fromkeys(UNAVAILABLE_ERRORS, _from_unavailable),
        asyncpg.PostgresConnectionError: _from_unavailable,
        asyncpg.DataError: _from_data_error,
        asyncpg.TransactionRollbackError: _from_rolled_back,
        OverflowError: _from_data_error,
        Exception: _from_unexpected,
    },
)
