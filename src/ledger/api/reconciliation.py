"""``GET /v1/reconciliation``: what the providers' status APIs answered, judged (issue 10).

Each row is one answer (a ``Reconciliation.Checked`` event) beside what the ledger said
before it: ``missed`` (the API knew more: the order was recovered), ``unconfirmed`` (it
contradicted a held notification, which is not applied), ``mismatch`` (it disagreed
otherwise, or its answer did not verify), ``ok`` (it agreed). Paged by position like
``/v1/review``; accepts ``?min_position=N`` (read-your-writes) like every read-model route.
"""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import quote

import msgspec
from litestar import get
from litestar.di import NamedDependency
from litestar.params import QueryParameter

from ledger.api.accounts import LIVE_POSITION
from ledger.api.auth import KeyedController
from ledger.api.params import Limit, MinPosition, Position, Time
from ledger.api.problems import KEYED, responses
from ledger.api.reads import ON_REPLICA
from ledger.api.times import parse_time
from ledger.readmodels.access import ReadModels, require_position

State = Literal["missed", "unconfirmed", "mismatch", "ok"]


class CheckItem(msgspec.Struct, kw_only=True):
    position: int
    event_id: str
    provider: str
    order_id: str
    checked_at: str
    state: str
    # What the API said, as we read it: an order status, or unknown_order / unverified.
    reading: str
    provider_status: str | None
    # The order's status in the ledger before the answer (None: no notification then).
    ledger_status: str | None
    resolution: str
    order: str  # link to the order view
    link: str  # link to the answer's event (its raw body and hash)


class CheckPage(msgspec.Struct, kw_only=True):
    items: list[CheckItem]
    next_after: int
    has_more: bool
    position: int


class ReconciliationController(KeyedController):
    path = "/v1/reconciliation"
    tags = ["read models"]
    opt = {"scopes": ("audit:read",)}
    dependencies = ON_REPLICA  # read-only: on LEDGER_READ_DATABASE_URL's replica if set

    @get("/", summary="Answers of the providers' status APIs, judged", responses=responses(*KEYED))
    async def list_checks(
        self,
        read_models: NamedDependency[ReadModels],
        check_state: Annotated[
            State | None,
            QueryParameter(
                name="state",
                description="only missed (recovered), unconfirmed, mismatch or ok answers",
            ),
        ] = None,
        after: Position = 0,
        limit: Limit = 100,
        since: Time = None,
        min_position: MinPosition = None,
    ) -> CheckPage:
        """Where the ledger and a provider disagreed, and how each was resolved: recovered
        missed webhooks, held notifications the provider contradicted (not applied),
        mismatches; ``state=ok`` lists the answers that agreed."""
        start = parse_time("since", since)
        await require_position(read_models, "orders", min_position)
        async with read_models.reading("orders") as conn:
            position = int(await conn.fetchval(LIVE_POSITION, "orders") or 0)
            rows = await conn.fetch(
                read_models.query("orders", "checks"), after, limit + 1, check_state, start
            )
        has_more = len(rows) > limit
        items = [
            CheckItem(
                position=r["position"],
                event_id=str(r["event_id"]),
                provider=r["provider"],
                order_id=r["order_id"],
                checked_at=r["checked_at"].isoformat(),
                state=r["state"],
                reading=r["reading"],
                provider_status=r["provider_status"],
                ledger_status=r["ledger_status"],
                resolution=r["resolution"],
                order=f"/v1/orders/{r['provider']}/{quote(r['order_id'], safe='')}",
                link=f"/v1/events/{r['event_id']}",
            )
            for r in rows[:limit]
        ]
        next_after = items[-1].position if items else after
        return CheckPage(items=items, next_after=next_after, has_more=has_more, position=position)
