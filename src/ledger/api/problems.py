"""RFC 9457 problem details: one stable ``type`` per fault, a ``detail`` naming the field."""

from __future__ import annotations

import logging
from typing import Any

from litestar import Request
from litestar.exceptions import HTTPException
from litestar.plugins.problem_details import ProblemDetailsConfig, ProblemDetailsException
from litestar.response import Response

from ledger.store import StoreUnavailable

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


def _from_unavailable(exc: StoreUnavailable) -> ProblemDetailsException:
    return problem(
        503,
        "store-unavailable",
        "The event store is unavailable",
        "the event store could not be reached; nothing was recorded, retry later",
        headers={"Retry-After": "5"},
    )


def _from_unexpected(exc: Exception) -> ProblemDetailsException:
    # A bug: answer problem+json without internals; the traceback goes to the log.
    logging.getLogger("ledger.api").error("unhandled error", exc_info=exc)
    return problem(500, "internal", "Internal error", "an unexpected error occurred; it was logged")


def problem_handler(request: Request[Any, Any, Any], exc: ProblemDetailsException) -> Response[Any]:
    return exc.to_response(request)


CONFIG = ProblemDetailsConfig(
    enable_for_all_http_exceptions=False,
    exception_to_problem_detail_map={
        HTTPException: _from_http,
        StoreUnavailable: _from_unavailable,
        Exception: _from_unexpected,
    },
)
