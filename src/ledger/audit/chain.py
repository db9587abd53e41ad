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
import hashlib
import multiprocessing
import struct
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import asyncpg

from ledger.database import Conn
from ledger.sql import package_sql

SQL = package_sql("audit")
GENESIS = bytes(32)
_HEAD = struct.Struct(">q16sqi")
_LEN = struct.Struct(">i")
PAGE = 10_000
END = 2**63 - 1  # the largest position: a range with no end
RANGE = 250_000  # positions per range when several processes verify (``verify_ranges``)


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


# A ``COPY (chain_copy) TO STDOUT (FORMAT binary)`` row: int2 field count (4), then per field
# an int4 length and the bytes. The first field is the message's fixed head (position,
# originator id, version: 32 bytes); COPY's int4 length words before the topic and the state
# are the message's own length fields, so each row's message is one contiguous byte range.
_COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
_COPY_TRAILER = b"\xff\xff"
_ROW = struct.Struct(">hi32xi")  # field count, head length, (head), topic length
_INT = struct.Struct(">i")
_HASH_LENGTH = _INT.pack(32)


class _Walk:
    """The output of one page's binary COPY, hashed as it arrives (no object per row).

    Any doubt (a mismatch, a hash that is not 32 bytes, an unexpected layout) stops the walk
    with ``failed`` set; ``verify`` then recomputes that page row by row for the report."""

    def __init__(self, prev: bytes) -> None:
        self.prev = prev
        self.rows = 0
        self.first: int | None = None
        self.last: int | None = None
        self.failed = False
        self._header = True
        self._rest = b""

    async def __call__(self, chunk: bytes) -> None:
        if self.failed:
            return
        buf = self._rest + chunk if self._rest else chunk
        s = 0
        if self._header:
            if len(buf) < 19:
                self._rest = buf
                return
            ext = _INT.unpack_from(buf, 15)[0]
            if not buf.startswith(_COPY_SIGNATURE) or ext < 0:
                self.failed = True
                return
            s = 19 + ext
            self._header = False
        self._rest = self._hash_rows(buf, s)

    def _hash_rows(self, buf: bytes, s: int) -> bytes:
        n = len(buf)
        view = memoryview(buf)
        sha = hashlib.sha256
        row = _ROW.unpack_from
        int4 = _INT.unpack_from
        prev = self.prev
        rows = 0
        last = begin = s
        while s + 46 <= n:
            fields, head, tlen = row(buf, s)
            if fields != 4 or head != 32 or tlen < 0:
                if fields != -1:  # -1: the trailer
                    self.failed = True
                break
            e = s + 46 + tlen  # the state's length word ends here
            if e > n:
                break
            slen = int4(buf, e - 4)[0]
            if slen < 0:
                self.failed = True
                break
            e += slen  # the message ends here; the stored hash, with its length word, follows
            if e + 36 > n:
                break
            h = sha(prev)
            h.update(view[s + 6 : e])
            prev = h.digest()
            if not buf.startswith(_HASH_LENGTH + prev, e):
                self.failed = True
                break
            last = s
            s = e + 36
            rows += 1
        if rows:
            if self.first is None:
                self.first = int.from_bytes(buf[begin + 6 : begin + 14], "big", signed=True)
            self.last = int.from_bytes(buf[last + 6 : last + 14], "big", signed=True)
            self.prev = prev
        self.rows += rows
        return buf[s:]

    def complete(self) -> bool:
        """Every row was hashed and matched, and the COPY ended where it should."""
        return not self.failed and not self._header and self._rest == _COPY_TRAILER


async def verify(
    conn: Conn,
    start: int = 1,
    *,
    stop: int | None = None,
    page: int = PAGE,
    progress: Callable[[int, int], None] | None = None,
) -> Report:
    """Recompute the chain from ``start`` to ``stop`` (inclusive; None: to the end, rows
    appended meanwhile included); stop at the first mismatch.

    ``progress(rows_in_page, last_position)`` is called once per page.

    Each page is read with a binary ``COPY`` and hashed as its bytes arrive (ADR 0024):
    the same bytes, hashed the same way, as the row by row walk of ``pages``, without a
    Python object per row. A page that does not verify that way is walked again row by
    row, from the same anchor, which names the first mismatch.
    """
    prev_pos, prev = await anchor(conn, start)
    end = END if stop is None else stop
    checked = 0
    first: int | None = None
    after = start - 1
    while True:
        walk = _Walk(prev)
        await conn.copy_from_query(
            SQL["chain_copy"], after, page, end, output=walk, format="binary"
        )
        if not walk.complete():
            rows = await conn.fetch(SQL["chain_page"], after, page, end)
            n, first_here, prev_pos, prev, mismatch = _recompute(rows, prev_pos, prev)
            checked += n
            first = first if first is not None else first_here
            if mismatch is not None:
                return Report(checked, first, prev_pos, prev, mismatch)
            if not rows:
                break
            walk.rows, walk.last = len(rows), prev_pos
        elif walk.rows:
            checked += walk.rows
            first = first if first is not None else walk.first
            prev, prev_pos = walk.prev, walk.last
        if not walk.rows:
            break
        after = prev_pos or 0
        if progress is not None:
            progress(walk.rows, after)
        if walk.rows < page:
            break
    return Report(checked, first, prev_pos, prev if prev_pos is not None else None, None)


def _recompute(
    rows: list[asyncpg.Record], prev_pos: int | None, prev: bytes
) -> tuple[int, int | None, int | None, bytes, Mismatch | None]:
    """Walk ``chain_page`` rows after ``prev``: (rows matched, first position, last matched
    position and hash, the first mismatch or None)."""
    checked = 0
    first: int | None = None
    sha = hashlib.sha256
    pack = _HEAD.pack
    plen = _LEN.pack
    for pos, oid, ver, topic, state, stored in rows:
        h = sha(prev + pack(pos, oid, ver, len(topic)) + topic + plen(len(state)) + state).digest()
        if stored != h:
            mismatch = Mismatch(pos, prev_pos, None if stored is None else bytes(stored), h)
            return checked, first, prev_pos, prev, mismatch
        if first is None:
            first = pos
        checked += 1
        prev, prev_pos = h, pos
    return checked, first, prev_pos, prev, None


def ranges(start: int, top: int, size: int = RANGE) -> list[tuple[int, int | None]]:
    """``start..top`` cut into ranges of ``size`` positions, the last one open-ended (rows
    appended while verifying are checked, as a single walk checks them)."""
    out: list[tuple[int, int | None]] = []
    lo = start
    while lo + size <= top:
        out.append((lo, lo + size - 1))
        lo += size
    out.append((lo, None))
    return out


def combine(reports: Iterable[Report]) -> Report:
    """The reports of consecutive ranges, in position order, as one walk's report: the
    first mismatch, with every row before it counted. Each range was anchored on the stored
    hash before it, which the range before it found equal to the recomputed one; so when
    every range matches, the chain matches end to end, and the first range that does not
    names the same row, with the same previous position and hash, as a single walk."""
    checked = 0
    first: int | None = None
    last: int | None = None
    head_hash: bytes | None = None
    for r in reports:
        checked += r.checked
        if first is None:
            first = r.first_position
        if r.mismatch is not None:
            return Report(checked, first, r.last_position, r.head_hash, r.mismatch)
        if r.checked:
            last, head_hash = r.last_position, r.head_hash
    return Report(checked, first, last, head_hash, None)


def _verify_range(url: str, settings: dict[str, str], lo: int, hi: int | None, page: int) -> Report:
    """One range, in a worker process, on its own session."""

    async def go() -> Report:
        conn = await asyncpg.connect(url, server_settings=settings)
        try:
            return await verify(conn, lo, stop=hi, page=page)
        finally:
            await conn.close()

    return asyncio.run(go())


async def verify_ranges(
    url: str,
    settings: dict[str, str],
    start: int,
    top: int,
    *,
    jobs: int,
    size: int = RANGE,
    page: int = PAGE,
    progress: Callable[[int, int], None] | None = None,
) -> Report:
    """``verify`` from ``start`` in ``jobs`` processes, each checking ranges of ``size``
    positions on its own session (``url`` and ``settings``); the same report (``combine``).

    The walk is one core's work (SHA-256 over every row, in Python: hashlib holds the GIL
    for messages under 2 kB): processes, not threads. ``progress(rows, last_position)`` is
    called once per range, in position order; the first mismatch stops the rest."""
    loop = asyncio.get_running_loop()
    parts = ranges(start, top, size)
    reports: list[Report] = []
    # spawn: a forked child would inherit this process's event loop and sessions.
    pool = ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"))
    futures: list[asyncio.Future[Report]] = []
    try:
        for lo, hi in parts:
            futures.append(loop.run_in_executor(pool, _verify_range, url, settings, lo, hi, page))
        for future, (lo, hi) in zip(futures, parts, strict=True):
            report = await future
            reports.append(report)
            if report.mismatch is not None:
                break
            if progress is not None:
                progress(report.checked, hi if hi is not None else report.last_position or lo)
    finally:
        for future in futures:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
    return combine(reports)


async def head(conn: Conn) -> tuple[int, bytes | None]:
    """The latest position and its hash ((0, None) for an empty log)."""
    row = await conn.fetchrow(SQL["chain_head"])
    if row is None:
        return 0, None
    return row["notification_id"], None if row["hash"] is None else bytes(row["hash"])
