"""Token accounts: ``GET /v1/accounts/{customer}`` and ``POST .../spend``.

Customers are identified by e-mail, compared trimmed and lowercased (as the projection
stores them). Spends go through ``ledger.accounts.spend.Spender`` (why they never overdraw: there).
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, get, post
from litestar.response import Response

from ledger.accounts.spend import IdempotencyConflict, InsufficientTokens, SpendBusy, Spender
from ledger.api.auth import require_key
from ledger.api.docs import BEARER
from ledger.api.params import CustomerPath, MinPosition
from ledger.api.problems import KEYED, problem, responses
from ledger.payments.rules import normalize_customer
from ledger.projections.token_balances import SQL as BALANCES_SQL
from ledger.readmodels.access import ProjectionLagging, ReadModels, require_position

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


def lagging(exc: ProjectionLagging) -> Exception:
    return problem(
        503,
        "projection-lagging",
        "The projection has not caught up yet",
        f"projection {exc.name!r} has applied up to position {exc.reached}; "
        f"position {exc.wanted} is needed. Retry shortly.",
        headers={"Retry-After": "1"},
        projection=exc.name,
        reached=exc.reached,
        wanted=exc.wanted,
        lag=exc.wanted - exc.reached,
    )


def spender(request: Request[Any, Any, Any]) -> Spender:
    services = request.app.state.services
    found: Spender | None = services.extras.get("spender")
    if found is None:
        found = Spender(services.store, services.committer, services.read_models)
        services.extras["spender"] = found
    return found


class AccountsController(Controller):
    path = "/v1/accounts"
    tags = ["accounts"]
    guards = [require_key]
    security = BEARER

    @get(
        "/{customer:str}",
        summary="A customer's token balance",
        opt={"scopes": ("audit:read", "tokens:write")},
        responses=responses(*KEYED),
    )
    async def get_account(
        self,
        request: Request[Any, Any, Any],
        customer: CustomerPath,
        min_position: MinPosition = None,
    ) -> Account:
        """Tokens (credited minus spent). A customer never seen has zero of everything."""
        who = customer_param(customer)
        rm: ReadModels = request.app.state.services.read_models
        await require_position(rm, PROJECTION, min_position)
        async with rm.reading(PROJECTION) as conn:
            position = int(await conn.fetchval(LIVE_POSITION, PROJECTION) or 0)
            row = await conn.fetchrow(BALANCES_SQL["account"], who)
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

    @post(
        "/{customer:str}/spend",
        status_code=201,
        summary="Spend tokens (idempotent, never overdraws)",
        opt={"scopes": ("tokens:write",)},
        responses=responses(*KEYED, 409, 413),
    )
    async def spend(
        self, request: Request[Any, Any, Any], customer: CustomerPath
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
        try:
            res = await spender(request).spend(who, req.amount, req.idempotency_key, req.reason)
        except InsufficientTokens as exc:
            raise problem(
                409,
                "insufficient-tokens",
                "Not enough tokens",
                f"the balance is {exc.balance} tokens; {exc.amount} were asked for",
                balance=exc.balance,
                amount=exc.amount,
            ) from None
        except IdempotencyConflict as exc:
            raise problem(
                409,
                "idempotency-key-reused",
                "The idempotency key was used for a different spend",
                f"idempotency_key was first used to spend {exc.first.amount} tokens; "
                "use a new key for a new spend",
            ) from None
        except ProjectionLagging as exc:
            raise lagging(exc) from None
        except SpendBusy as exc:
            raise problem(
                503, "spend-busy", "Try again", str(exc), headers={"Retry-After": "1"}
            ) from None
        headers = {"Idempotent-Replayed": "true"} if res.replayed else {}
        return Response(
            SpendAnswer(balance=res.balance, position=res.position, event_id=res.event_id),
            status_code=201,
            headers=headers,
        )
