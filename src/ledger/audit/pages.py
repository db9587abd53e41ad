"""How the audit index reads and writes its pages (ADR 0023), for ``ledger.audit.index``.

``ReadAhead`` reads the next page on a second connection while the current one is
interpreted and written; ``stream_rows`` hands a page's rows to COPY as they are
interpreted; ``write`` COPYs them, or inserts them the old way (``index_insert``, ``ON
CONFLICT DO NOTHING``) when a position is already indexed.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncGenerator, AsyncIterable, Callable, Sequence
from typing import Any

import asyncpg

from ledger.audit.rows import COLUMNS, Row
from ledger.readmodels.contract import Conn
from ledger.sql import package_sql

SQL = package_sql("audit")
STREAM_CHUNK = 256  # rows COPY sends between two turns of the event loop

# index_row's signature: (position, event id, version, topic, state, chain hash) -> row.
RowOf = Callable[[int, uuid.UUID, int, str, bytes, "bytes | None"], Row]


def _columns(rows: Sequence[Row]) -> list[list[Any]]:
    return [list(column) for column in zip(*rows, strict=True)]


async def write(
    conn: Conn, records: Sequence[Row] | AsyncIterable[Row], again: Callable[[], Sequence[Row]]
) -> None:
    """Insert ``records`` with COPY (binary: no per-cell array encoding, no SQL to parse).

    COPY cannot skip a position already indexed, which ``index_insert`` (``ON CONFLICT DO
    NOTHING``) does: such a row only exists when the index was reset by hand without being
    emptied, so the COPY runs under a savepoint and that rare page (``again()``) is
    inserted the old way."""
    try:
        async with conn.transaction():
            await conn.copy_records_to_table("audit_index", records=records, columns=COLUMNS)
    except asyncpg.UniqueViolationError:
        await conn.execute(SQL["index_insert"], *_columns(again()))


def all_rows(rows: Sequence[asyncpg.Record], row: RowOf) -> list[Row]:
    return [row(r[0], r[1], r[2], r[3], r[4], r[5]) for r in rows]


async def stream_rows(rows: Sequence[asyncpg.Record], row: RowOf) -> AsyncGenerator[Row, None]:
    """The rows of a page as COPY sends them: PostgreSQL writes the first ones while the
    next are interpreted, and every ``STREAM_CHUNK`` the loop runs (the read-ahead page
    keeps arriving)."""
    for i, r in enumerate(rows):
        if i % STREAM_CHUNK == 0 and i:
            await asyncio.sleep(0)
        yield row(r[0], r[1], r[2], r[3], r[4], r[5])


class ReadAhead:
    """The next page, read on a second connection while this one is interpreted and
    written, so PostgreSQL reads while Python works (a long catch-up only).

    It reads what the locked transaction would read next, in a snapshot taken after the
    catch-up began (appends commit in position order, ADR 0002): a prefix of what a
    later read returns, so everything committed before the call is still indexed. It is
    used only when the position it read after is still the index's position."""

    def __init__(self, reader: Conn, page: int) -> None:
        self.reader = reader
        self.page = page
        self.after = -1
        self.task: asyncio.Future[list[asyncpg.Record]] | None = None

    def start(self, after: int) -> None:
        self.after = after
        self.task = asyncio.ensure_future(self.reader.fetch(SQL["index_source"], after, self.page))

    async def take(self, position: int) -> list[asyncpg.Record] | None:
        task, self.task = self.task, None
        if task is None:
            return None
        rows = await task
        return rows if self.after == position else None

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            # A read nobody will use: its outcome (cancelled, or a failure the catch-up
            # already met on its own connection) does not matter.
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
