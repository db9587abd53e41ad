"""Spending tokens: a spend is an event in the log, decided under the customer's lock.

Why it can never overdraw, even with many requests and several processes at once:

1. The spend takes the customer's lock: an in-process ``asyncio.Lock`` (so concurrent
   requests for one customer queue without each holding a pool connection), then a
   session-level PostgreSQL advisory lock keyed by the customer on one dedicated pool
   connection (so other processes queue too). Both are bounded by ``lock_timeout``.
2. Under the lock it reads the log's head and waits (bounded by ``wait_timeout``, else
   ``ProjectionLagging``, a 503) until the ``token_balances`` projection has applied it.
   Every earlier spend of this customer was committed before its lock was released, so it
   is below the head and already folded; a credit whose webhook was acknowledged (2xx after
   commit) before the spend started is too: read-your-writes across requests.
3. It reads the balance from the live projection; if short, ``InsufficientTokens``;
   otherwise it appends ``TokenSpend.Spent`` (balance after the spend included) through the
   group committer and releases the lock only after that commit.

Idempotency: the event id is derived from the customer and the idempotency key
(``ledger.domain.events.spend_id``). A repeated key finds the first event, in the log or as a
duplicate append, and answers what it recorded (same balance and position): the tokens are
spent once. The same key with a different amount is refused (``IdempotencyConflict``).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from ledger.domain.events import (
    SPEND_TOPIC,
    SPENT_TOPIC,
    SpendState,
    decode_spend,
    encode_spend,
    spend_id,
)
from ledger.errors import LedgerError
from ledger.store.eventstore import (
    UNAVAILABLE_ERRORS,
    EventStore,
    GroupCommitter,
    NewEvent,
    StoreUnavailable,
)

PROJECTION = "token_balances"


def spend_event(
    customer: str, amount: int, idempotency_key: str, reason: str, balance_after: int
) -> NewEvent:
    """The ``TokenSpend.Spent`` event, its id derived from the customer and the key."""
    state = SpendState(
        originator_topic=SPEND_TOPIC,
        timestamp=datetime.now(UTC),
        customer=customer,
        amount=amount,
        idempotency_key=idempotency_key,
        reason=reason,
        balance_after=balance_after,
    )
    return NewEvent(spend_id(customer, idempotency_key), SPENT_TOPIC, encode_spend(state))


class InsufficientTokens(LedgerError):
    """The customer's balance is lower than the amount asked for."""

    def __init__(self, customer: str, balance: int, amount: int) -> None:
        super().__init__(f"{customer} has {balance} tokens; {amount} were asked for")
        self.balance = balance
        self.amount = amount


class IdempotencyConflict(LedgerError):
    """The idempotency key was used before for a different spend."""

    def __init__(self, first: SpendState) -> None:
        super().__init__(f"idempotency key already used for a spend of {first.amount} tokens")
        self.first = first


class SpendBusy(LedgerError):
    """The customer's lock could not be taken in time (another spend holds it)."""


@dataclass(frozen=True, slots=True)
class SpendResult:
    balance: int
    position: int
    event_id: str
    replayed: bool


def lock_key(customer: str) -> int:
    """The advisory-lock key of one customer's spends (a stable signed 64-bit int)."""
    digest = hashlib.blake2b(f"ledger.spend:{customer}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class Spender:
    """Appends spends; see the module docstring for the concurrency argument."""

    def __init__(
        self,
        store: EventStore,
        committer: GroupCommitter,
        read_models: Any,
        *,
        wait_timeout: float = 2.0,
        lock_timeout: float = 10.0,
        max_holders: int = 8,
    ) -> None:
        self.store = store
        self.committer = committer
        self.read_models = read_models  # ledger.readmodels.access.ReadModels
        self.wait_timeout = wait_timeout
        self.lock_timeout = lock_timeout
        self._locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}
        # A lock holder keeps one pool connection and needs others (head, position, balance,
        # the append): bounding holders below the pool size means they can never starve
        # each other of connections, however many customers spend at once.
        self._holders = asyncio.Semaphore(max_holders)

    async def spend(
        self, customer: str, amount: int, idempotency_key: str, reason: str
    ) -> SpendResult:
        event_id = spend_id(customer, idempotency_key)
        first = await self._replay(event_id, customer, amount)
        if first is not None:  # fast path for a repeated request: no lock needed
            return first
        async with self._locked(customer):
            first = await self._replay(event_id, customer, amount)
            if first is not None:
                return first
            head = await self.store.head()
            await self.read_models.require(PROJECTION, head, self.wait_timeout)
            async with self.read_models.reading(PROJECTION) as conn:
                balance = int(
                    await conn.fetchval(self.read_models.query(PROJECTION, "balance"), customer)
                )
            if balance < amount:
                raise InsufficientTokens(customer, balance, amount)
            event = spend_event(customer, amount, idempotency_key, reason, balance - amount)
            res = await self.committer.append(event)
            recorded = decode_spend(res.state)
            if res.duplicate:
                _check_same(recorded, customer, amount)
            return SpendResult(recorded.balance_after, res.position, str(event_id), res.duplicate)

    async def _replay(self, event_id: Any, customer: str, amount: int) -> SpendResult | None:
        rec = await self.store.get(event_id)
        if rec is None:
            return None
        first = decode_spend(rec.state)
        _check_same(first, customer, amount)
        return SpendResult(first.balance_after, rec.position, str(event_id), True)

    @asynccontextmanager
    async def _locked(self, customer: str) -> AsyncIterator[None]:
        lock, users = self._locks.setdefault(customer, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            try:
                async with asyncio.timeout(self.lock_timeout):
                    await lock.acquire()
            except TimeoutError:
                raise SpendBusy(f"another spend for {customer} is in progress") from None
            try:
                try:
                    async with asyncio.timeout(self.lock_timeout):
                        await self._holders.acquire()
                except TimeoutError:
                    raise SpendBusy("too many spends in progress") from None
                try:
                    async with self._advisory(customer):
                        yield
                finally:
                    self._holders.release()
            finally:
                lock.release()
        finally:
            users[0] -= 1
            if users[0] == 0:
                self._locks.pop(customer, None)

    @asynccontextmanager
    async def _advisory(self, customer: str) -> AsyncIterator[None]:
        key = lock_key(customer)
        try:
            async with self.store.pool.acquire(timeout=self.store.acquire_timeout) as conn:
                await conn.execute(f"SET lock_timeout = {int(self.lock_timeout * 1000)}")
                try:
                    await conn.execute("SELECT pg_advisory_lock($1)", key)
                except asyncpg.exceptions.LockNotAvailableError:
                    raise SpendBusy(f"another spend for {customer} is in progress") from None
                finally:
                    await conn.execute("RESET lock_timeout")
                try:
                    yield
                finally:
                    # Released only now, after the Spent event's commit. (A broken
                    # connection releases it too: the lock dies with the session.)
                    await conn.execute("SELECT pg_advisory_unlock($1)", key)
        except UNAVAILABLE_ERRORS as exc:
            raise StoreUnavailable(type(exc).__name__) from exc


def _check_same(first: SpendState, customer: str, amount: int) -> None:
    if first.customer != customer or first.amount != amount:
        raise IdempotencyConflict(first)
