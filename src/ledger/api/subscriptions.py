"""``GET /v1/subscriptions/{customer}``: a customer's subscriptions, status as of now.

Accepts ``?min_position=N`` (read-your-writes), like every read-model route.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

import msgspec
from litestar.di import NamedDependency

from ledger.api.accounts import LIVE_POSITION, customer_param
from ledger.api.auth import KeyedController, keyed_get
from ledger.api.params import CustomerPath, MinPosition
from ledger.api.reads import ON_REPLICA
from ledger.payments.rules import FOREVER, subscription_status
from ledger.readmodels.access import ReadModels, require_position


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


class SubscriptionsController(KeyedController):
    path = "/v1/subscriptions"
    tags = ["read models"]
    opt = {"scopes": ("audit:read", "tokens:write")}

    @keyed_get(
        "/{customer:str}",
        "A customer's subscriptions, status as of now",
        dependencies=ON_REPLICA,
    )
    async def get_subscriptions(
        self,
        read_models: NamedDependency[ReadModels],
        customer: CustomerPath,
        min_position: MinPosition = None,
    ) -> Subscriptions:
        """One item per license code. The status is decided now: a subscription whose
        expiry has passed reads ``expired`` even if no ``expired`` event came."""
        who = customer_param(customer)
        await require_position(read_models, "subscriptions", min_position)
        async with read_models.reading("subscriptions") as conn:
            position = int(await conn.fetchval(LIVE_POSITION, "subscriptions") or 0)
            rows = await conn.fetch(read_models.query("subscriptions", "for_customer"), who)
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
