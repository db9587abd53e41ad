"""``GET /v1/orders/{provider}/{order_id}``: an order's status and history (read model).

The route accepts ``?min_position=N`` (read-your-writes): it waits, bounded, until the
projection has applied position N, else answers 503 ``projection-lagging`` with the lag.
A Xendit order is found by our ``external_id`` or by Xendit's own invoice ``id``.
"""

from __future__ import annotations

import asyncpg
import msgspec
from litestar import get
from litestar.di import NamedDependency

from ledger.api.accounts import LIVE_POSITION
from ledger.api.auth import KeyedController
from ledger.api.params import MinPosition, OrderIdPath, ProviderPath
from ledger.api.problems import KEYED, problem, responses
from ledger.api.reads import ON_REPLICA
from ledger.payments import orderstatus
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
    # "notification" (a webhook) or "reconciliation" (the provider's status API, ADR 0017)
    source: str = "notification"


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


def history_entry(row: asyncpg.Record) -> orderstatus.Entry:
    """An ``order_history`` row as the precedence rules read it."""
    return orderstatus.Entry(
        row["position"],
        str(row["event_id"]),
        row["provider_status"],
        row["status"],
        row["amount"],
        row["currency"],
        row["payment_method"],
        row["customer"],
    )


class OrdersController(KeyedController):
    path = "/v1/orders"
    tags = ["read models"]
    opt = {"scopes": ("audit:read",)}

    @get(
        "/{provider:str}/{order_id:str}",
        summary="An order's status and full history",
        responses=responses(*KEYED, 404),
        dependencies=ON_REPLICA,
    )
    async def get_order(
        self,
        read_models: NamedDependency[ReadModels],
        provider: ProviderPath,
        order_id: OrderIdPath,
        min_position: MinPosition = None,
    ) -> Order:
        """Status by precedence (arrival order does not matter); history in log order, with
        notifications that arrived after a higher status marked ``late``. ``order_id`` is
        the provider's order id (Xendit: ``external_id``) or, failing that, the provider's
        own id for the order (Xendit's invoice ``id``); the answer names the order id."""
        if provider not in ORDER_PROVIDERS:
            raise problem(
                404,
                "unknown-provider",
                "No such order provider",
                f"provider must be one of {list(ORDER_PROVIDERS)}, not {provider!r}",
            )
        await require_position(read_models, "orders", min_position)
        async with read_models.reading("orders") as conn:
            position = int(await conn.fetchval(LIVE_POSITION, "orders") or 0)
            rows = await conn.fetch(read_models.query("orders", "history"), provider, order_id)
        if not rows:
            raise problem(
                404,
                "order-not-found",
                "No such order",
                f"no {provider} notification for order {order_id!r} up to position {position}",
                position=position,
            )
        history = [history_entry(r) for r in rows]
        top = orderstatus.decide(history)
        late = orderstatus.late_flags(history)
        method = top.payment_method or next(
            (e.payment_method for e in reversed(history) if e.payment_method), None
        )
        return Order(
            provider=provider,
            order_id=rows[0]["order_id"],
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
                    source=r["source"],
                )
                for e, is_late, r in zip(history, late, rows, strict=True)
            ],
            position=position,
        )
