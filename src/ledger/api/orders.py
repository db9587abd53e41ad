"""Read models over HTTP: orders, subscriptions and the review queue.

Every route accepts ``?min_position=N`` (read-your-writes): it waits, bounded, until the
projection has applied position N, else answers 503 ``projection-lagging`` with the lag.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import msgspec
from litestar import Controller, Request, get
from litestar.params import QueryParameter

from ledger.api.accounts import LIVE_POSITION, customer_param
from ledger.api.auth import require_key
from ledger.api.docs import BEARER
from ledger.api.params import CustomerPath, Limit, MinPosition, OrderIdPath, Position, ProviderPath
from ledger.api.problems import KEYED, problem, responses
from ledger.payments import orderstatus
from ledger.payments.rules import FOREVER, subscription_status
from ledger.projections.orders import SQL as ORDERS_SQL
from ledger.projections.review import SQL as REVIEW_SQL
from ledger.projections.subscriptions import SQL as SUBSCRIPTIONS_SQL
from ledger.readmodels import poison
from ledger.readmodels.access import ReadModels, require_position

ORDER_PROVIDERS = ("midtrans", "xendit", "partner")


class HistoryEntry(msgspec.Struct, kw_only=True):
    position: int
    event_id: str
    provider_status: str
    status: str
    late: bool
    amount: str | None
    link: str


class Order(msgspec.Struct, kw_only=True):
    provider: str
    order_id: str
    status: str
    amount: str | None
    currency: str | None
    payment_method: str | None
    customer: str | None
    history: list[HistoryEntry]
    position: int


class Subscription(msgspec.Struct, kw_only=True):
    license_code: str
    status: Literal["active", "cancelled", "expired", "pending"]
    access: bool  # active, or cancelled with time left
    expiry: datetime | None  # None: no end
    last_event_position: int


class Subscriptions(msgspec.Struct, kw_only=True):
    customer: str
    items: list[Subscription]
    position: int
    as_of: datetime


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


def _rm(request: Request[Any, Any, Any]) -> ReadModels:
    rm: ReadModels = request.app.state.services.read_models
    return rm


class OrdersController(Controller):
    path = "/v1/orders"
    tags = ["read models"]
    guards = [require_key]
    security = BEARER
    opt = {"scopes": ("audit:read",)}

    @get(
        "/{provider:str}/{order_id:str}",
        summary="An order's status and full history",
        responses=responses(*KEYED, 404),
    )
    async def get_order(
        self,
        request: Request[Any, Any, Any],
        provider: ProviderPath,
        order_id: OrderIdPath,
        min_position: MinPosition = None,
    ) -> Order:
        """Status by precedence (arrival order does not matter); history in log order, with
        notifications that arrived after a higher status marked ``late``."""
        if provider not in ORDER_PROVIDERS:
            raise problem(
                404,
                "unknown-provider",
                "No such order provider",
                f"provider must be one of {list(ORDER_PROVIDERS)}, not {provider!r}",
            )
        rm = _rm(request)
        await require_position(rm, "orders", min_position)
        async with rm.reading("orders") as conn:
            position = int(await conn.fetchval(LIVE_POSITION, "orders") or 0)
            rows = await conn.fetch(ORDERS_SQL["history"], provider, order_id)
        if not rows:
            raise problem(
                404,
                "order-not-found",
                "No such order",
                f"no {provider} notification for order {order_id!r} up to position {position}",
                position=position,
            )
        history = [
            orderstatus.Entry(
                r["position"],
                str(r["event_id"]),
                r["provider_status"],
                r["status"],
                r["amount"],
                r["currency"],
                r["payment_method"],
                r["customer"],
            )
            for r in rows
        ]
        top = orderstatus.decide(history)
        late = orderstatus.late_flags(history)
        method = top.payment_method or next(
            (e.payment_method for e in reversed(history) if e.payment_method), None
        )
        return Order(
            provider=provider,
            order_id=order_id,
            status=top.status,
            amount=top.amount,
            currency=top.currency,
            payment_method=method,
            customer=top.customer,
            history=[
                HistoryEntry(
                    position=e.position,
                    event_id=e.event_id,
                    provider_status=e.provider_status,
                    status=e.status,
                    late=is_late,
                    amount=e.amount,
                    link=f"/v1/events/{e.event_id}",
                )
                for e, is_late in zip(history, late, strict=True)
            ],
            position=position,
        )


class SubscriptionsController(Controller):
    path = "/v1/subscriptions"
    tags = ["read models"]
    guards = [require_key]
    security = BEARER
    opt = {"scopes": ("audit:read", "tokens:write")}

    @get(
        "/{customer:str}",
        summary="A customer's subscriptions, status as of now",
        responses=responses(*KEYED),
    )
    async def get_subscriptions(
        self,
        request: Request[Any, Any, Any],
        customer: CustomerPath,
        min_position: MinPosition = None,
    ) -> Subscriptions:
        """One item per license code. The status is decided now: a subscription whose
        expiry has passed reads ``expired`` even if no ``expired`` event came."""
        who = customer_param(customer)
        rm = _rm(request)
        await require_position(rm, "subscriptions", min_position)
        async with rm.reading("subscriptions") as conn:
            position = int(await conn.fetchval(LIVE_POSITION, "subscriptions") or 0)
            rows = await conn.fetch(SUBSCRIPTIONS_SQL["for_customer"], who)
        now = datetime.now(UTC)
        items = []
        for r in rows:
            status = subscription_status(
                r["expiry"], r["cancelled_through"], r["expired_through"], now
            )
            items.append(
                Subscription(
                    license_code=r["license_code"],
                    status=status,
                    access=status in ("active", "cancelled"),
                    expiry=None if r["expiry"] in (None, FOREVER) else r["expiry"],
                    last_event_position=r["last_position"],
                )
            )
        return Subscriptions(customer=who, items=items, position=position, as_of=now)


class ReviewController(Controller):
    path = "/v1/review"
    tags = ["read models"]
    guards = [require_key]
    security = BEARER
    opt = {"scopes": ("audit:read",)}

    @get("/", summary="Deliveries that need a person", responses=responses(*KEYED))
    async def list_review(
        self,
        request: Request[Any, Any, Any],
        after: Position = 0,
        limit: Limit = 100,
        reason: Annotated[
            str | None, QueryParameter(max_length=100, description="only this reason")
        ] = None,
        min_position: MinPosition = None,
    ) -> ReviewPage:
        """Quarantined, dedup conflicts, unknown package or customer, amount mismatch,
        unreadable expiry, events a consumer of the log set aside (``poisoned:<consumer>``;
        ``reason=poisoned`` lists them all): each with its reason and a link to the raw
        event."""
        rm = _rm(request)
        await require_position(rm, "review", min_position)
        async with rm.reading("review") as conn:
            position = int(await conn.fetchval(LIVE_POSITION, "review") or 0)
            rows = await conn.fetch(REVIEW_SQL["page"], after, limit + 1, reason)
            # Events a consumer of the log set aside (ADR 0010): reason poisoned:<consumer>.
            poisoned = await poison.review_rows(conn, after, limit + 1, reason)
            rows = poison.merge_review(rows, poisoned, limit + 1)
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
