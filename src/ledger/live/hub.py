"""The live stream of payment facts across processes.

Each delivery in the log is sent as ``ledger.payments.facts.payment_fact`` reads it (the one
mapping from a provider body to a payment fact, shared with the read models). ``StreamHub``
wakes SSE clients when anything is appended, in any process: the log's insert trigger
already runs ``pg_notify('ledger_events', position)``, and the hub LISTENs on that channel
through litestar channels' asyncpg backend. Clients then read the log after their last
position, so the feed is gap-free and resumable by position.

Clients at or near the head share one reader (``_after``): the hub keeps the facts of the
last ``tail`` deliveries, refreshed from the log by one query at a time whoever asks, each
decoded once; a client further behind reads the log itself, as before, until it reaches the
shared tail. With many clients, one query and one decode per new batch instead of one per
client (``bench/fanout.py``: 200 clients each ran their own query per notification and
exhausted the pool the webhooks commit through).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator

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

    def __init__(self, dsn: str, store: EventStore, *, tail: int = 5000) -> None:
        self.store = store
        self._backend = AsyncPgChannelsBackend(dsn=dsn)
        self._waiters: set[asyncio.Event] = set()
        self._task: asyncio.Task[None] | None = None
        self.closed = False
        # The shared tail: every delivery with a position in (_floor, _top], in order, with
        # its fact (None: unreadable, skipped). Empty until the first client asks.
        self._tail = tail
        self._positions: list[int] = []
        self._facts: list[PaymentFact | None] = []
        self._floor: int | None = None
        self._top = 0
        self._full = False  # the last refresh read a whole batch: the log may hold more
        # Notifications received, and how many of them the tail is known to cover (a read
        # that began after the n-th one and was not cut short by the batch holds every
        # delivery it announced). A client woken by a notification must not be served a
        # tail older than it: it has consumed its wake-up and would sleep through what
        # another client has yet to read in (until the next append or keep-alive).
        self._notified = 0
        self._fresh = 0
        self._reading = asyncio.Lock()
        # Each fact's bytes on the wire, rendered once per process for every client
        # (``ledger.api.stream``); bounded, oldest first out.
        self.rendered: dict[int, bytes] = {}

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
            self._notified += 1
            self.wake_all()

    def wake_all(self) -> None:
        for ev in self._waiters:
            ev.set()

    async def _refresh(self, batch: int, last: int, *, poll: bool) -> bool:
        """Read the next deliveries after ``_top`` into the tail (one reader at a time),
        covering every append notified before the call; False when there was nothing new.
        Once a read has covered them, a caller at ``last`` with nothing to send reads again
        only if it ``poll``s (its first read, after a full batch, at the keep-alive: should
        notifications stop, the feed still moves)."""
        top, notified = self._top, self._notified
        async with self._reading:
            if self._fresh >= notified and (self._top != top or last < self._top or not poll):
                return self._top != top  # another client read what we were told of
            notified = self._notified  # every append notified by now is visible to the read
            rows = await self.store.read_after(self._top, batch, DELIVERY_TOPICS)
            self._full = len(rows) == batch
            if not self._full:
                self._fresh = notified
            if not rows:
                return False
            for rec in rows:
                self._positions.append(rec.position)
                self._facts.append(_readable_fact(rec))
            self._top = rows[-1].position
            excess = len(self._positions) - self._tail
            if excess > self._tail:  # trim in chunks: amortised O(1) per fact
                self._floor = self._positions[excess - 1]
                del self._positions[:excess]
                del self._facts[:excess]
            return True

    async def _after(
        self, last: int, batch: int, *, poll: bool = True
    ) -> tuple[list[tuple[int, PaymentFact | None]], bool]:
        """Up to ``batch`` deliveries after ``last`` and whether more may follow at once."""
        if self._floor is None:
            self._floor = self._top = last
        if last >= self._floor:
            stale = self._fresh < self._notified  # the tail may predate what woke us
            while (stale or last >= self._top) and await self._refresh(batch, last, poll=poll):
                stale = False
            if last >= self._floor:  # (a refresh may have trimmed past a slow client)
                i = bisect.bisect_right(self._positions, last)
                out = list(
                    zip(self._positions[i : i + batch], self._facts[i : i + batch], strict=True)
                )
                return out, len(out) == batch or self._full
        rows = await self.store.read_after(last, batch, DELIVERY_TOPICS)
        return [(rec.position, _readable_fact(rec)) for rec in rows], len(rows) == batch

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

        ``backlog``: a store on a read replica (ADR 0019), see ``follow_batches``.

        Ends when the hub stops or after ``max_seconds``: the client reconnects with
        ``Last-Event-ID`` and misses nothing, and a server shutdown never waits on a stream
        for longer than that."""
        feed = self.follow_batches(
            after, batch=batch, keepalive=keepalive, max_seconds=max_seconds, backlog=backlog
        )
        async with contextlib.aclosing(feed) as batches:
            async for facts in batches:
                if facts is None:
                    yield None
                    continue
                for fact in facts:
                    yield fact

    async def follow_batches(
        self,
        after: int,
        *,
        batch: int = 500,
        keepalive: float = 15.0,
        max_seconds: float | None = None,
        backlog: EventStore | None = None,
    ) -> AsyncGenerator[list[PaymentFact] | None, None]:
        """``follow``, a batch at a time (never empty; None: idle): a stream sends one
        chunk per batch instead of one per fact.

        ``backlog``: a store on a read replica (ADR 0019) the backlog is read from, page by
        page, until a page is not full (the replica's head); then the hub's shared tail on
        the primary goes on from there, so nothing is missed (positions commit in order,
        ADR 0002). A replica that fails hands over to the primary at once."""
        wake = asyncio.Event()
        self._waiters.add(wake)
        last = after
        poll = True  # read even if nothing new was notified (see ``_refresh``)
        loop = asyncio.get_running_loop()
        until = loop.time() + max_seconds if max_seconds else None
        try:
            while backlog is not None and not self.closed:
                try:
                    rows = await backlog.read_after(last, batch, DELIVERY_TOPICS)
                except (StoreUnavailable, asyncpg.TransactionRollbackError):
                    break  # the replica failed: the primary has it all
                if rows:
                    last = rows[-1].position
                    facts = [f for rec in rows if (f := _readable_fact(rec)) is not None]
                    if facts:
                        yield facts
                if len(rows) < batch:
                    break  # the replica's head: the tail is the primary's
            while not self.closed:
                wake.clear()  # before reading: a notify during the read wakes us again
                entries, more = await self._after(last, batch, poll=poll)
                poll = more
                if entries:
                    last = entries[-1][0]
                    facts = [fact for _, fact in entries if fact is not None]
                    if facts:
                        yield facts
                if more:
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
                    poll = True
                    yield None
        finally:
            self._waiters.discard(wake)
