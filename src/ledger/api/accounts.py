"""Token accounts: ``GET /v1/accounts/{customer}`` and ``POST .../spend``.

Customers are identified by e-mail, compared trimmed and lowercased (as the projection
stores them). Spends go through ``ledger.accounts.spend.Spender`` (why they never overdraw: there).
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Request
from litestar.di import NamedDependency
from litestar.response import Response

from ledger.accounts.spend import Spender
from ledger.api.auth import KeyedController, keyed_get, keyed_post
from ledger.api.params import CustomerPath, MinPosition
from ledger.api.problems import problem
from ledger.api.reads import ON_REPLICA
from ledger.payments.rules import normalize_customer
from ledger.readmodels.access import ReadModels, require_position

PROJECTION = "token_balances"
MAX_CUSTOMER = 320

# The live generation's position, read in the same snapshot as the rows it vouches for.
LIVE_POSITION = """
SELECT t.position FROM public.projections p
JOIN public.projection_tracking t ON t.name = p.name AND t.generation = p.live_generation
WHERE p.name = $1
"""


class SpendRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    amount: Annotated[int, msgspec.Meta(gt=0, le=1_000_000_000)]
    idempotency_key: Annotated[
        str, msgspec.Meta(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")
    ]
    # Recorded in the log: no NUL or control characters (they would poison its consumers).
    reason: Annotated[str, msgspec.Meta(max_length=500, pattern=r"^[^\x00-\x1f\x7f]*$")] = ""


class SpendAnswer(msgspec.Struct, kw_only=True):
    balance: int
    position: int
    event_id: str


class Account(msgspec.Struct, kw_only=True):
    customer: str
    tokens: int
    credited: int
    spent: int
    position: int  # the projection's position this answer is consistent with
    last_event_position: int | None  # the last credit or spend of this customer


_spend_decoder = msgspec.json.Decoder(SpendRequest)


def customer_param(raw: str) -> str:
    """The path's customer, normalized; 400 naming the fault when unusable."""
    customer = normalize_customer(raw) if raw.strip().isprintable() else None
    if customer is None or len(customer) > MAX_CUSTOMER:
        raise problem(
            400,
            "invalid-customer",
            "Invalid customer",
            f"customer must be a non-empty e-mail address of at most {MAX_CUSTOMER} "
            "printable characters",
        )
    return customer


class AccountsController(KeyedController):
    path = "/v1/accounts"
    tags = ["accounts"]

    @keyed_get(
        "/{customer:str}",
        "A customer's token balance",
        opt={"scopes": ("audit:read", "tokens:write")},
        dependencies=ON_REPLICA,
    )
    async def get_account(
        self,
        read_models: NamedDependency[ReadModels],
        customer: CustomerPath,
        min_position: MinPosition = None,
    ) -> Account:
        """Tokens (credited minus spent). A customer never seen has zero of everything."""
        who = customer_param(customer)
        await require_position(read_models, PROJECTION, min_position)
        async with read_models.reading(PROJECTION) as conn:
            position = int(await conn.fetchval(LIVE_POSITION, PROJECTION) or 0)
            row = await conn.fetchrow(read_models.query(PROJECTION, "account"), who)
        if row is None:
            return Account(
                customer=who,
                tokens=0,
                credited=0,
                spent=0,
                position=position,
                last_event_position=None,
            )
        return Account(
            customer=who,
            tokens=row["tokens"],
            credited=row["credited"],
            spent=row["spent"],
            position=position,
            last_event_position=row["last_position"],
        )

    @keyed_post(
        "/{customer:str}/spend",
        "Spend tokens (idempotent, never overdraws)",
        409,
        413,
        status_code=201,
        opt={"scopes": ("tokens:write",)},
    )
    async def spend(
        self,
        request: Request[Any, Any, Any],
        spender: NamedDependency[Spender],
        customer: CustomerPath,
    ) -> Response[SpendAnswer]:
        """Body ``{"amount": n > 0, "idempotency_key": "...", "reason": "..."}``.

        201 ``{"balance", "position", "event_id"}``; the same idempotency key again returns
        the first answer (and spends nothing). 409 ``insufficient-tokens`` with the current
        balance; 409 ``idempotency-key-reused`` for a different amount under a used key;
        503 when the balance projection lags or the customer's lock is busy.
        """
        who = customer_param(customer)
        try:
            req = _spend_decoder.decode(await request.body())
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise problem(400, "invalid-spend", "Invalid spend request", str(exc)) from None
        # InsufficientTokens, IdempotencyConflict, ProjectionLagging and SpendBusy become
        # problem+json in ledger.api.problems (the one mapping).
        res = await spender.spend(who, req.amount, req.idempotency_key, req.reason)
        headers = {"Idempotent-Replayed": "true"} if res.replayed else {}
        return Response(
            SpendAnswer(balance=res.balance, position=res.position, event_id=res.event_id),
            status_code=201,
            headers=headers,
        )
