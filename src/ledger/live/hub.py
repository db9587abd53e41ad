"""The live stream of payment facts across processes.

Each delivery in the log is sent as ``ledger.payments.facts.payment_fact`` reads it (the one
mapping from a provider body to a payment fact, shared with the read models). ``StreamHub``
wakes SSE clients when anything is appended, in any process: the log's insert trigger
already runs ``pg_notify('ledger_events', position)``, and the hub LISTENs on that channel
through litestar channels' asyncpg backend. Clients then read the log after their last
position, so the feed is gap-free and resumable by position.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import asyncpg
import msgspec
from litestar.channels.backends.asyncpg import AsyncPgChannelsBackend

from ledger.domain.events import DELIVERY_TOPICS
from ledger.payments.facts import PaymentFact, payment_fact
from ledger.store.eventstore import EventStore, StoredRecord, StoreUnavailable

log = logging.getLogger("ledger.live.hub")

CHANNEL = "ledger_events"  # notified by the log's insert trigger (migration 0001)

# What decoding one odd stored event can raise (binascii.Error is a ValueError).
UNREADABLE = (msgspec.DecodeError, ValueError, TypeError, KeyError, AttributeError, OverflowError)


def _readable_fact(rec: StoredRecord) -> PaymentFact | None:
    """``payment_fact``, or None for an event it fails on (e.g. a body that is not base64):
    one event never ends every client's feed at the same place (ADR 0010). The feed has no
    tracking row to record it in; the audit index sets the same event aside, visibly."""
    try:
        return payment_fact(rec)
    except UNREADABLE as exc:
        log.warning(
            "stream: skipped the event at position %d: %s", rec.position, type(exc).__name__
        )
        return None


class StreamHub:
    """Per process: one LISTEN connection; every SSE client waits on its own wake-up."""

    def __init__(self, dsn: str, store: EventStore) -> None:
        self.store = store
        self._backend = AsyncPgChannelsBackend(dsn=dsn)
        self._waiters: set[asyncio.Event] = set()
        self._task: asyncio.Task[None] | None = None
        self.closed = False

    async def start(self) -> None:
        await self._backend.on_startup()
        await self._backend.subscribe([CHANNEL])
        self._task = asyncio.create_task(self._pump(), name="stream-hub")

    async def stop(self) -> None:
        self.closed = True  # open streams end, so the server can shut down
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(OSError, RuntimeError):
            await self._backend.on_shutdown()
        self.wake_all()

    async def _pump(self) -> None:
        async for _channel, _payload in self._backend.stream_events():
            self.wake_all()

    def wake_all(self) -> None:
        for ev in self._waiters:
            ev.set()

    async def follow(
        self,
        after: int,
        *,
        batch: int = 500,
        keepalive: float = 15.0,
        max_seconds: float | None = None,
        backlog: EventStore | None = None,
    ) -> AsyncIterator[PaymentFact | None]:
        """Facts after position ``after`` in log order; None means "idle, send a ping".

        ``backlog``: a store on a read replica (ADR 0019) the backlog is read from, page by
        page, until a page is not full (the replica's head); then the primary's store goes
        on from there, so nothing is missed (positions commit in order, ADR 0002). A
        replica that fails hands over to the primary at once.

        Ends when the hub stops or after ``max_seconds``: the client reconnects with
        ``Last-Event-ID`` and misses nothing, and a server shutdown never waits on a stream
        for longer than that."""
        wake = asyncio.Event()
        self._waiters.add(wake)
        last = after
        source = backlog or self.store
        loop = asyncio.get_running_loop()
        until = loop.time() + max_seconds if max_seconds else None
        try:
            while not self.closed:
                wake.clear()  # before reading: a notify during the read wakes us again
                try:
                    rows = await source.read_after(last, batch, DELIVERY_TOPICS)
                except (StoreUnavailable, asyncpg.TransactionRollbackError):
                    if source is self.store:
                        raise
                    source = self.store  # the replica failed: the primary has it all
                    continue
                for rec in rows:
                    last = rec.position
                    fact = _readable_fact(rec)
                    if fact is not None:
                        yield fact
                if len(rows) == batch:
                    continue
                if source is not self.store:  # the backlog is read: the tail is the primary's
                    source = self.store
                    continue
                wait = keepalive
                if until is not None:
                    wait = until - loop.time()
                    if wait <= 0:
                        return
                    wait = min(wait, keepalive)
                try:
                    await asyncio.wait_for(wake.wait(), wait)
                except TimeoutError:
                    yield None
        finally:
            self._waiters.discard(wake)
