"""``GET /v1/review``: deliveries that need a person (read model), paged by position.

Accepts ``?min_position=N`` (read-your-writes), like every read-model route.
"""

from __future__ import annotations

import contextlib
from typing import Annotated

import asyncpg
import msgspec
from litestar import get
from litestar.di import NamedDependency
from litestar.params import QueryParameter

from ledger.api.accounts import LIVE_POSITION
from ledger.api.auth import KeyedController
from ledger.api.params import Limit, MinPosition, Position
from ledger.api.problems import KEYED, responses
from ledger.errors import ProjectionUnavailable
from ledger.readmodels import poison
from ledger.readmodels.access import ReadModels, require_position


class ReviewItem(msgspec.Struct, kw_only=True):
    event_id: str
    position: int
    reason: str
    detail: str
    provider: str
    kind: str
    dedup_key: str
    link: str


class ReviewPage(msgspec.Struct, kw_only=True):
    items: list[ReviewItem]
    next_after: int
    has_more: bool
    position: int


class ReviewController(KeyedController):
    path = "/v1/review"
    tags = ["read models"]
    opt = {"scopes": ("audit:read",)}

    @get("/", summary="Deliveries that need a person", responses=responses(*KEYED))
    async def list_review(
        self,
        read_models: NamedDependency[ReadModels],
        after: Position = 0,
        limit: Limit = 100,
        reason: Annotated[
            str | None, QueryParameter(max_length=100, description="only this reason")
        ] = None,
        min_position: MinPosition = None,
    ) -> ReviewPage:
        """Quarantined, dedup conflicts, unknown package or customer, amount mismatch,
        unreadable expiry, events a consumer of the log set aside (``poisoned:<consumer>``;
        ``reason=poisoned`` lists them all), held notifications the provider's status API
        contradicted (``unconfirmed``): each with its reason and a link to the raw event."""
        await require_position(read_models, "review", min_position)
        async with read_models.reading("review") as conn:
            position = int(await conn.fetchval(LIVE_POSITION, "review") or 0)
            rows = await conn.fetch(read_models.query("review", "page"), after, limit + 1, reason)
            # Events a consumer of the log set aside (ADR 0010): reason poisoned:<consumer>.
            poisoned = await poison.review_rows(conn, after, limit + 1, reason)
        # Held notifications the provider's status API contradicted (ADR 0016).
        unconfirmed: list[asyncpg.Record] = []
        with contextlib.suppress(ProjectionUnavailable):
            async with read_models.reading("orders") as conn:
                query = read_models.query("orders", "review_unconfirmed")
                unconfirmed = list(await conn.fetch(query, after, limit + 1, reason))
        rows = poison.merge_review([*rows, *unconfirmed], poisoned, limit + 1)
        has_more = len(rows) > limit
        page = list(rows[:limit])
        # Never split one event's reasons across pages: the cursor is a position.
        if has_more and rows[limit]["position"] == page[-1]["position"]:
            kept = [r for r in page if r["position"] != page[-1]["position"]]
            page = kept or page
        items = [
            ReviewItem(
                event_id=str(r["event_id"]),
                position=r["position"],
                reason=r["reason"],
                detail=r["detail"],
                provider=r["provider"],
                kind=r["kind"],
                dedup_key=r["dedup_key"],
                link=f"/v1/events/{r['event_id']}",
            )
            for r in page
        ]
        next_after = items[-1].position if items else after
        return ReviewPage(items=items, next_after=next_after, has_more=has_more, position=position)
