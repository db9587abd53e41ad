"""The hash chain against the real database: computed on append, checked by ``verify``.

Tampering is done the way a database administrator could: as the superuser, with the
log's triggers switched off for the statement (``session_replication_role = replica``).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import struct
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from ledger.audit import chain
from ledger.database import create_pool
from ledger.store.eventstore import EventStore, NewEvent

ZERO = bytes(32)


def independent_hash(
    previous: bytes, pos: int, oid: uuid.UUID, ver: int, topic: str, state: bytes
) -> bytes:
    """The ADR's definition written out again, without ledger.audit.chain."""
    t = topic.encode()
    msg = (
        struct.pack(">q", pos)
        + oid.bytes
        + struct.pack(">q", ver)
        + struct.pack(">i", len(t))
        + t
        + struct.pack(">i", len(state))
        + state
    )
    return hashlib.sha256(previous + msg).digest()


def ev(i: int, topic: str = "test:Thing.Happened") -> NewEvent:
    return NewEvent(uuid.uuid4(), topic, b'{"n":%d,"pad":"%s"}' % (i, b"x" * (i % 50)))


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[EventStore]:
    pool = await create_pool(database_url, max_size=6)  # as ledger_app, like the service
    try:
        yield EventStore(pool)
    finally:
        await pool.close()


async def owner(url: str) -> asyncpg.Connection:
    return await asyncpg.connect(url)


async def verify(url: str, start: int = 1, page: int = 7) -> chain.Report:
    conn = await owner(url)
    try:
        return await chain.verify(conn, start, page=page)
    finally:
        await conn.close()


async def test_multi_row_append_chains_each_row_to_the_previous(store, database_url):
    await store.append_many([ev(i) for i in range(40)])
    await store.append_many([ev(i) for i in range(40, 45)])
    conn = await owner(database_url)
    try:
        rows = await conn.fetch(
            "SELECT notification_id, originator_id, originator_version, topic, state, hash "
            "FROM stored_events ORDER BY notification_id"
        )
    finally:
        await conn.close()
    assert len(rows) == 45
    prev = ZERO
    for r in rows:
        expected = independent_hash(prev, r[0], r[1], r[2], r[3], bytes(r[4]))
        assert bytes(r[5]) == expected, f"position {r[0]}"
        prev = expected
    report = await verify(database_url)
    assert report.ok
    assert report.checked == 45
    assert report.head_hash == prev
    assert report.last_position == rows[-1][0]


async def test_concurrent_writers_do_not_fork_and_gaps_are_fine(store, database_url):
    dup = ev(999)

    async def writer(k: int) -> None:
        for j in range(5):
            # duplicates (ON CONFLICT skips) burn positions: legitimate gaps
            await store.append_many([ev(k * 100 + j), dup, ev(k * 100 + j + 50)])

    await asyncio.gather(*(writer(k) for k in range(6)))
    conn = await owner(database_url)
    try:
        n = await conn.fetchval("SELECT count(*) FROM stored_events")
        top = await conn.fetchval("SELECT max(notification_id) FROM stored_events")
        distinct = await conn.fetchval("SELECT count(DISTINCT hash) FROM stored_events")
    finally:
        await conn.close()
    assert n == 61
    assert top > n
    assert distinct == n
    report = await verify(database_url)
    assert report.ok, report.mismatch and report.mismatch.describe()
    assert report.checked == n


async def test_the_service_role_cannot_choose_or_change_the_hash(store, database_url):
    await store.append_many([ev(1)])
    async with store.pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO stored_events (originator_id, originator_version, topic, state, hash) "
            "VALUES ($1, 1, 't', 'x'::bytea, '\\xdeadbeef'::bytea)",
            uuid.uuid4(),
        )
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("UPDATE stored_events SET hash = NULL")
    assert (await verify(database_url)).ok


async def test_repeatable_read_appends_are_refused(store, database_url):
    async with store.pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
        with pytest.raises(asyncpg.ObjectNotInPrerequisiteStateError):
            await conn.execute(
                "INSERT INTO stored_events (originator_id, originator_version, topic, state) "
                "VALUES ($1, 1, 't', 'x'::bytea)",
                uuid.uuid4(),
            )


async def tamper(url: str, sql: str, *args: object) -> None:
    conn = await owner(url)
    try:
        async with conn.transaction():
            await conn.execute("SET LOCAL session_replication_role = replica")
            await conn.execute(sql, *args)
    finally:
        await conn.close()


async def positions(url: str) -> list[int]:
    conn = await owner(url)
    try:
        return [
            r[0] for r in await conn.fetch("SELECT notification_id FROM stored_events ORDER BY 1")
        ]
    finally:
        await conn.close()


@pytest.mark.parametrize("k", [0, 17, 29])
async def test_one_edited_byte_is_found_at_its_position(store, database_url, k):
    await store.append_many([ev(i) for i in range(30)])
    target = (await positions(database_url))[k]
    assert (await verify(database_url)).ok
    await tamper(
        database_url,
        "UPDATE stored_events SET state = overlay(state placing '9'::bytea from 6 for 1) "
        "WHERE notification_id = $1",
        target,
    )
    report = await verify(database_url)
    assert report.mismatch is not None
    assert report.mismatch.position == target
    assert report.checked == k


async def test_an_edited_hash_is_found(store, database_url):
    await store.append_many([ev(i) for i in range(10)])
    target = (await positions(database_url))[4]
    await tamper(
        database_url,
        "UPDATE stored_events SET hash = sha256(hash) WHERE notification_id = $1",
        target,
    )
    report = await verify(database_url)
    assert report.mismatch is not None
    assert report.mismatch.position == target


@pytest.mark.parametrize("k", [0, 12, 28])
async def test_a_deleted_row_is_found_at_the_next_position(store, database_url, k):
    await store.append_many([ev(i) for i in range(30)])
    pos = await positions(database_url)
    await tamper(database_url, "DELETE FROM stored_events WHERE notification_id = $1", pos[k])
    report = await verify(database_url)
    assert report.mismatch is not None
    assert report.mismatch.position == pos[k + 1]
    assert f"{pos[k]}..{pos[k]}" in report.mismatch.describe()


async def test_swapped_states_are_found_at_the_first_swapped_position(store, database_url):
    await store.append_many([ev(i) for i in range(30)])
    pos = await positions(database_url)
    a, b = pos[8], pos[21]
    await tamper(
        database_url,
        "UPDATE stored_events t SET state = s.state FROM stored_events s "
        "WHERE (t.notification_id, s.notification_id) IN (($1, $2), ($2, $1))",
        a,
        b,
    )
    report = await verify(database_url)
    assert report.mismatch is not None
    assert report.mismatch.position == a


async def test_verify_from_a_position_uses_the_stored_hash_before_it(store, database_url):
    await store.append_many([ev(i) for i in range(20)])
    pos = await positions(database_url)
    await tamper(database_url, "DELETE FROM stored_events WHERE notification_id = $1", pos[3])
    assert not (await verify(database_url)).ok
    later = await verify(database_url, start=pos[10])
    assert later.ok
    assert later.checked == 10
    assert later.first_position == pos[10]


async def test_cli_verify_reports_clean_then_the_tampered_position(store, database_url):
    await store.append_many([ev(i) for i in range(25)])
    env = {
        **os.environ,
        "LEDGER_DATABASE_URL": database_url,
        "LEDGER_HOME": "/tmp/ledger-test-home",
    }

    async def run(*args: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).parent / "ledger"),
            "verify",
            *args,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await proc.communicate()
        assert proc.returncode is not None
        return proc.returncode, out.decode()

    code, out = await run()
    assert code == 0, out
    assert "25 events" in out
    assert "intact" in out
    target = (await positions(database_url))[11]
    await tamper(
        database_url,
        "UPDATE stored_events SET topic = topic || 'x' WHERE notification_id = $1",
        target,
    )
    code, out = await run()
    assert code == 1
    assert f"position {target}" in out
    code, out = await run("--from", str(target + 1))
    assert code == 0, out
    # Several processes, each a range of 5 positions (ADR 0029): the same verdicts.
    code, out = await run("--jobs", "2", "--range", "5")
    assert code == 1
    assert f"position {target}" in out
    assert "11 events before it verified" in out
    code, out = await run("--jobs", "2", "--range", "5", "--from", str(target + 1))
    assert code == 0, out
    assert f"{25 - 12} events" in out


@pytest.mark.parametrize(
    ("sql", "stored"),
    [
        ("UPDATE stored_events SET hash = hash || hash WHERE notification_id = $1", "long"),
        ("UPDATE stored_events SET hash = substr(hash, 1, 31) WHERE notification_id = $1", "short"),
        ("UPDATE stored_events SET hash = NULL WHERE notification_id = $1", None),
        ("UPDATE stored_events SET topic = NULL, state = NULL WHERE notification_id = $1", "same"),
    ],
)
async def test_a_malformed_row_is_reported_as_the_row_walk_reports_it(
    store, database_url, sql, stored
):
    # The COPY walk (ADR 0024) reads hashes by their length words: a stored hash that is not
    # 32 bytes, or none, must not shift what it reads next; the report names the row.
    await store.append_many([ev(i) for i in range(30)])
    pos = await positions(database_url)
    await tamper(database_url, sql, pos[13])
    for page in (7, 10_000):
        report = await verify(database_url, page=page)
        assert report.mismatch is not None
        assert report.mismatch.position == pos[13]
        assert report.checked == 13
        assert report.last_position == pos[12]
        if stored is None:
            assert report.mismatch.stored is None
            assert "no hash stored" in report.mismatch.describe()
        elif stored != "same":
            assert len(report.mismatch.stored or b"") == (64 if stored == "long" else 31)


async def test_the_copy_walk_does_not_depend_on_how_the_bytes_are_split(store, database_url):
    await store.append_many([ev(i, topic="t\u00e9:Thing" if i % 3 else "t") for i in range(40)])
    conn = await owner(database_url)
    try:
        chunks: list[bytes] = []

        async def keep(chunk: bytes) -> None:
            chunks.append(chunk)

        await conn.copy_from_query(
            chain.SQL["chain_copy"], 0, 1000, chain.END, output=keep, format="binary"
        )
        whole = b"".join(chunks)
        report = await chain.verify(conn)
    finally:
        await conn.close()
    assert report.ok
    for size in (1, 5, 31, 32, 33, 46, 100, 4096, len(whole)):
        walk = chain._Walk(chain.GENESIS)
        for k in range(0, len(whole), size):
            await walk(whole[k : k + size])
        assert walk.complete(), size
        assert (walk.rows, walk.first, walk.last, walk.prev) == (
            40,
            report.first_position,
            report.last_position,
            report.head_hash,
        )
    broken = chain._Walk(chain.GENESIS)
    await broken(whole[:-40] + bytes([whole[-40] ^ 1]) + whole[-39:])
    assert not broken.complete()
    assert broken.rows == 39


def test_ranges_cover_every_position_once_and_leave_the_end_open():
    assert chain.ranges(1, 10, 4) == [(1, 4), (5, 8), (9, None)]
    assert chain.ranges(1, 8, 4) == [(1, 4), (5, None)]
    assert chain.ranges(5, 3, 4) == [(5, None)]
    assert chain.ranges(1, 1_000_000, 250_000)[-1] == (750_001, None)


TAMPERS = {
    "intact": None,
    "state at the end of a range": (
        "UPDATE stored_events SET state = state || 'x' WHERE notification_id = $1",
        6,
    ),
    "state at the start of a range": (
        "UPDATE stored_events SET state = state || 'x' WHERE notification_id = $1",
        7,
    ),
    # The next range is anchored on this very hash: it fails too, but later.
    "hash at the end of a range": (
        "UPDATE stored_events SET hash = sha256(hash) WHERE notification_id = $1",
        13,
    ),
    "row deleted at the end of a range": (
        "DELETE FROM stored_events WHERE notification_id = $1",
        20,
    ),
    "row deleted at the start of a range": (
        "DELETE FROM stored_events WHERE notification_id = $1",
        21,
    ),
    "last row edited": (
        "UPDATE stored_events SET topic = topic || 'x' WHERE notification_id = $1",
        29,
    ),
}


@pytest.mark.parametrize("case", list(TAMPERS))
async def test_ranges_in_processes_report_exactly_what_one_walk_reports(store, database_url, case):
    await store.append_many([ev(i) for i in range(30)])
    pos = await positions(database_url)
    tamper_with = TAMPERS[case]
    if tamper_with is not None:
        sql, k = tamper_with
        await tamper(database_url, sql, pos[k])
    one = await verify(database_url)
    assert one.ok == (tamper_with is None)
    parallel = await chain.verify_ranges(database_url, {}, pos[0], pos[-1], jobs=2, size=7, page=3)
    assert parallel == one
    later = await chain.verify_ranges(database_url, {}, pos[3], pos[-1], jobs=3, size=4)
    assert later == await verify(database_url, start=pos[3])
