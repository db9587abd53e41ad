"""``GET /admin``: the operator page (one self-contained HTML file, no CDN, no build step).

The page itself is public; it asks for an API key once (kept in the browser's
localStorage) and sends it with every data call: ``/v1/stream`` (live feed),
``/v1/outbox`` (dead letters, retry, search), ``/v1/audit/events`` (search the log by order
id or customer; scope ``audit:read``) and ``/v1/projections`` (lag, and the poisoned events
each consumer of the log set aside, with a retry button: ``/v1/projections/{name}/retry``),
``/v1/review`` (deliveries that need a person) and ``/v1/reconciliation`` (where a provider's
status API disagreed with the ledger, and how it was resolved). A chart of payments per minute
over the last hour is drawn by the page on a canvas: a backlog from ``/v1/audit/events``
(``from`` an hour ago), then the stream's ``payment`` messages.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from litestar import MediaType, get
from litestar.response import Response

PAGE = Path(__file__).resolve().parent.parent / "static" / "admin.html"


@cache
def _page() -> bytes:
    return PAGE.read_bytes()


@get("/admin", media_type=MediaType.HTML, include_in_schema=False)
async def admin_page() -> Response[bytes]:
    return Response(
        _page(),
        media_type=MediaType.HTML,
        headers={
            "Cache-Control": "no-cache",
            "Content-Security-Policy": (
                "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                "connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'"
            ),
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        },
    )
