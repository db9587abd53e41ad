"""``PUT /v1/orders/{provider}/{order_id}`` registers an order (ADR 0016);
``GET /v1/orders/{provider}/{order_id}``: an order's status and history (read model).

The route accepts ``?min_position=N`` (read-your-writes): it waits, bounded, until the
projection has applied position N, else answers 503 ``projection-lagging`` with the lag.
A Xendit order is found by our ``external_id`` or by Xendit's own invoice ``id``.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import asyncpg
import msgspec
from litestar import HttpMethod, Request, get, put, route
from litestar.di import NamedDependency
from litestar.response import Response

from ledger.api.accounts import LIVE_POSITION
from ledger.api.auth import KeyedController, current_key
from ledger.api.docs import json_body
from ledger.api.params import MinPosition, OrderIdPath, ProviderPath
from ledger.api.problems import KEYED, problem, responses
from ledger.api.reads import ON_REPLICA
from ledger.payments import orderstatus
from ledger.payments.registration import RegistrationBody, decode_body, register, terms
from ledger.readmodels.access import ReadModels, require_position
from ledger.store.eventstore import GroupCommitter

ORDER_PROVIDERS = ("midtrans", "xendit", "partner")


class RegistrationAnswer(msgspec.Struct, kw_only=True):
    """An order's registration as recorded (the first one, when repeated)."""

    provider: str
    order_id: str
    customer: str
    amount: str
    currency: str
    package: str | None
    booking_id: str | None
    expires_at: str | None
    metadata: dict[str, Any]
    registered_at: str
    position: int
    event_id: str


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
    # A notification held until the provider's status API confirms it (ADR 0016):
    # "held" (no answer yet), "confirmed" or "unconfirmed" (the API said otherwise; it
    # does not count). None: an ordinary notification, counted as it came.
    confirmation: str | None = None


class Order(msgspec.Struct, kw_only=True):
    provider: str
    order_id: str
    status: str
    # The one definition used by the order view, the export and the daily summary:
    # expected = the registered amount, else the total the provider states;
    # paid = what the provider says was paid. amount_check: match, short (partially_paid),
    # over or currency (amount_mismatch), or None when there is nothing to compare.
    expected_amount: str | None
    paid_amount: str | None
    amount_check: str | None
    amount: str | None
    currency: str | None
    payment_method: str | None
    customer: str | None
    registration: RegistrationAnswer | None
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


def registration_answer(row: asyncpg.Record) -> RegistrationAnswer:
    return RegistrationAnswer(
        provider=row["provider"],
        order_id=row["order_id"],
        customer=row["customer"],
        amount=row["amount"],
        currency=row["currency"],
        package=row["package"],
        booking_id=row["booking_id"],
        expires_at=None if row["expires_at"] is None else row["expires_at"].isoformat(),
        metadata=msgspec.json.decode(row["metadata"]),
        registered_at=row["registered_at"].isoformat(),
        position=row["position"],
        event_id=str(row["event_id"]),
    )


def confirmations(rows: list[asyncpg.Record]) -> list[str | None]:
    out: list[str | None] = []
    for i, r in enumerate(rows):
        if not r["held"]:
            out.append(None)
            continue
        later = [x["status"] for x in rows[i + 1 :] if x["source"] == "reconciliation"]
        out.append(orderstatus.confirmation(r["status"], later))
    return out


def order_view(
    provider: str,
    order_id: str,
    rows: list[asyncpg.Record],
    reg: RegistrationAnswer | None,
    position: int,
) -> Order:
    """The order as finance and the merchant's app read it (ADR 0016)."""
    history = [history_entry(r) for r in rows]
    counted = [(e, r) for e, r in zip(history, rows, strict=True) if not r["held"]]
    late = orderstatus.late_flags(history)
    conf = confirmations(rows)
    top = orderstatus.decide([e for e, _ in counted]) if counted else None
    status = top.status if top else "pending"
    same = [r for e, r in counted if top is not None and e.status == top.status]
    paid = max(
        (r["paid_amount"] for r in same if r["paid_amount"] is not None),
        key=lambda a: Decimal(a),
        default=None,
    )
    total = next((r["total_amount"] for r in reversed(same) if r["total_amount"]), None)
    total = total or next((r["total_amount"] for r in reversed(rows) if r["total_amount"]), None)
    expected = reg.amount if reg else total
    currency = top.currency if top else None
    status, check = orderstatus.settle(
        status, expected, reg.currency if reg else None, paid, currency
    )
    method = (top.payment_method if top else None) or next(
        (e.payment_method for e in reversed(history) if e.payment_method), None
    )
    return Order(
        provider=provider,
        order_id=order_id,
        status=status,
        expected_amount=expected,
        paid_amount=paid,
        amount_check=check,
        amount=top.amount if top else expected,
        currency=currency or (reg.currency if reg else None),
        payment_method=method,
        customer=(top.customer if top else None) or (reg.customer if reg else None),
        registration=reg,
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
                confirmation=c,
            )
            for e, is_late, r, c in zip(history, late, rows, conf, strict=True)
        ],
        position=position,
    )


class OrdersController(KeyedController):
    path = "/v1/orders"
    tags = ["read models"]
    opt = {"scopes": ("audit:read",)}

    @route(
        "/{provider:str}/{order_id:str}",
        http_method=[HttpMethod.OPTIONS],
        include_in_schema=False,
    )
    async def allow_order(self, provider: ProviderPath, order_id: OrderIdPath) -> Response[None]:
        """``Allow`` for an order: litestar's automatic OPTIONS answer lists only the first
        handler's methods when a path has several (as for ``/webhooks/partner``)."""
        del provider, order_id
        return Response(None, status_code=204, headers={"Allow": "GET, OPTIONS, PUT"})

    @put(
        "/{provider:str}/{order_id:str}",
        status_code=201,
        summary="Register an order: customer and expected amount (idempotent)",
        opt={"scopes": ("orders:write",)},
        responses=responses(*KEYED, 409, 413),
        operation_class=json_body(RegistrationBody),
    )
    async def register_order(
        self,
        request: Request[Any, Any, Any],
        committer: NamedDependency[GroupCommitter],
        provider: ProviderPath,
        order_id: OrderIdPath,
    ) -> Response[RegistrationAnswer]:
        """Body ``{"customer": e-mail, "amount": "299000.00", "currency": "IDR",
        "package"?, "booking_id"?, "expires_at"?: ISO 8601, "metadata"?: {...}}``.

        201 on the first registration, 200 when the same terms are sent again (nothing new
        is recorded); 409 ``registration-conflict`` naming the fields that differ from the
        first registration, which stands; 400 ``invalid-registration`` naming the field."""
        body = decode_body(await request.body())
        state = terms(provider, order_id, body, current_key(request).key_id)
        res = await register(committer, state)
        st = res.state
        return Response(
            RegistrationAnswer(
                provider=st.provider,
                order_id=st.order_id,
                customer=st.customer,
                amount=st.amount,
                currency=st.currency,
                package=st.package,
                booking_id=st.booking_id,
                expires_at=st.expires_at,
                metadata=st.metadata,
                registered_at=st.timestamp.isoformat(),
                position=res.position,
                event_id=res.event_id,
            ),
            status_code=201 if res.created else 200,
        )

    @get(
        "/{provider:str}/{order_id:str}",
        summary="An order's status, registration and full history",
        opt={"scopes": ("audit:read", "orders:write")},
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
            found = rows[0]["order_id"] if rows else order_id
            reg_row = await conn.fetchrow(
                read_models.query("orders", "registration"), provider, found
            )
        if not rows and reg_row is None:
            raise problem(
                404,
                "order-not-found",
                "No such order",
                f"no {provider} notification or registration for order {order_id!r} "
                f"up to position {position}",
                position=position,
            )
        reg = registration_answer(reg_row) if reg_row else None
        return order_view(provider, found, list(rows), reg, position)
