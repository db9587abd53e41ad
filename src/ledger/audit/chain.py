"""Recompute the log's hash chain (``migrations/0003_hash_chain.sql``, ADR 0006).

The database computes ``hash`` when a row is appended; this module recomputes it from the
stored columns, independently of the database's functions, so an operator (or finance, on a
copy of the data) can tell whether the log was altered after it was written:

- an edited byte (topic, state, id, version or the hash itself) makes that row mismatch;
- a deleted row makes the next existing row mismatch (its hash links to the deleted one);
- reordered content makes the first moved row mismatch.

Positions may have legitimate gaps (rolled-back appends, ``ON CONFLICT`` skips): the chain
links each row to the previous *existing* row, so a gap is only suspicious when the row
after it mismatches. The chain cannot show that the newest rows were removed: compare the
head (``GET /v1/audit/head``) with a digest kept elsewhere for that.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import struct
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import asyncpg

from ledger.database import Conn
from ledger.sql import package_sql

SQL = package_sql("audit")
GENESIS = bytes(32)
_HEAD = struct.Struct(">q16sqi")
_LEN = struct.Struct(">i")
PAGE = 10_000


def message(
    position: int, originator_id: uuid.UUID, version: int, topic: str | None, state: bytes | None
) -> bytes:
    """The bytes hashed after the previous hash (the layout the ADR documents)."""
    t = (topic or "").encode("utf-8")
    s = state or b""
    return _HEAD.pack(position, originator_id.bytes, version, len(t)) + t + _LEN.pack(len(s)) + s


def link(previous: bytes, msg: bytes) -> bytes:
    return hashlib.sha256(previous + msg).digest()


@dataclass(frozen=True, slots=True)
class Mismatch:
    """The first row whose stored hash is not the recomputed one."""

    position: int
    previous_position: int | None
    stored: bytes | None
    expected: bytes

    def describe(self) -> str:
        prev = self.previous_position
        text = f"position {self.position}: "
        if self.stored is None:
            text += "no hash stored"
        else:
            stored, expected = self.stored.hex()[:16], self.expected.hex()[:16]
            text += f"stored hash {stored}... != recomputed {expected}..."
        lo = (prev or 0) + 1
        if self.position > lo:
            text += (
                f"; positions {lo}..{self.position - 1} are absent (a deleted row, or a"
                " legitimate gap if this row was edited instead)"
            )
        text += "; the row was edited, a row before it was deleted, or rows were reordered"
        return text


@dataclass(frozen=True, slots=True)
class Report:
    checked: int
    first_position: int | None
    last_position: int | None
    head_hash: bytes | None
    mismatch: Mismatch | None

    @property
    def ok(self) -> bool:
        return self.mismatch is None


async def anchor(conn: Conn, start: int) -> tuple[int | None, bytes]:
    """The stored hash of the last row before ``start`` (trusted as the starting point)."""
    if start <= 1:
        return None, GENESIS
    row = await conn.fetchrow(SQL["chain_before"], start)
    if row is None:
        return None, GENESIS
    return row["notification_id"], bytes(row["hash"]) if row["hash"] is not None else GENESIS


async def pages(conn: Conn, after: int, page: int = PAGE) -> AsyncIterator[list[asyncpg.Record]]:
    """Keyset pages of the log, position order: memory stays bounded by two pages. The next
    page is requested before this one is handed out, so the server reads it while the
    caller hashes."""
    pending = asyncio.ensure_future(conn.fetch(SQL["chain_page"], after, page))
    try:
        while True:
            rows = await pending
            if not rows:
                return
            if len(rows) == page:
                pending = asyncio.ensure_future(conn.fetch(SQL["chain_page"], rows[-1][0], page))
            else:
                pending = asyncio.ensure_future(_empty())
            yield rows
    finally:
        if not pending.done():
            pending.cancel()
            try:
                with contextlib.suppress(asyncpg.InterfaceError):
                    await pending
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # we were cancelled ourselves, not just the prefetch


async def _empty() -> list[asyncpg.Record]:
    return []


async def verify(
    conn: Conn,
    start: int = 1,
    *,
    page: int = PAGE,
    progress: Callable[[int, int], None] | None = None,
) -> Report:
    """Recompute the chain from ``start``; stop at the first mismatch.

    ``progress(rows_in_page, last_position)`` is called once per page.
    """
    prev_pos, prev = await anchor(conn, start)
    checked = 0
    first: int | None = None
    sha = hashlib.sha256
    pack = _HEAD.pack
    plen = _LEN.pack
    async for rows in pages(conn, start - 1, page):
        for pos, oid, ver, topic, state, stored in rows:
            h = sha(
                prev + pack(pos, oid, ver, len(topic)) + topic + plen(len(state)) + state
            ).digest()
            if stored != h:
                return Report(
                    checked,
                    first,
                    prev_pos,
                    prev,
                    Mismatch(pos, prev_pos, None if stored is None else bytes(stored), h),
                )
            if first is None:
                first = pos
            checked += 1
            prev, prev_pos = h, pos
        if progress is not None:
            progress(len(rows), prev_pos or 0)
    return Report(checked, first, prev_pos, prev if prev_pos is not None else None, None)


async def head(conn: Conn) -> tuple[int, bytes | None]:
    """The latest position and its hash ((0, None) for an empty log)."""
    row = await conn.fetchrow(SQL["chain_head"])
    if row is None:
        return 0, None
    return row["notification_id"], None if row["hash"] is None else bytes(row["hash"])
