"""The CSV export formatted by PostgreSQL is byte for byte what ``csv.writer`` wrote.

``queries.export_csv`` (ADR 0024) replaced formatting ``export_values`` rows with Python's
csv module; this compares both over index rows with the values that need care: commas,
quotes, line feeds, carriage returns, unicode, empty strings, NULLs, registered amounts,
gaps in positions and rows outside the time range.
"""

from __future__ import annotations

import csv
import io
import random
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
import pytest

from ledger.audit import queries
from ledger.database import create_pool

START = datetime(2026, 3, 1, tzinfo=UTC)
AWKWARD = [
    "",
    "plain",
    "a,b",
    'say "hi"',
    '"',
    ",",
    "line\nbreak",
    "carriage\rreturn",
    "crlf\r\n",
    "tab\there",
    "  spaced  ",
    "caf\u00e9 \u65e5\u672c \U0001f600",
    "\\.",
    "back\\slash",
    "#;'",
    "\u2028sep",
]


def awkward(rng: random.Random) -> str | None:
    if rng.random() < 0.6:
        return rng.choice(["midtrans", "xendit", "INV-7", "paid", "IDR", "c@example.com"])
    if rng.random() < 0.15:
        return None
    return "".join(rng.choice(AWKWARD) for _ in range(rng.randint(1, 3)))


async def fill(owner: asyncpg.Connection, n: int, seed: int) -> None:
    rng = random.Random(seed)
    rows = []
    position = 0
    for i in range(n):
        position += rng.choice([1, 1, 1, 2, 5])  # gaps, as rolled-back appends leave
        registration = rng.random() < 0.1
        order = rng.choice(["INV-1", "INV-2", "a,b", 'q"q', None, awkward(rng)])
        rows.append(
            (
                position,
                uuid.UUID(int=rng.getrandbits(128)),
                "ledger.domain:Delivery.Received",
                START + timedelta(seconds=i * 7, microseconds=rng.randrange(1_000_000)),
                "registration" if registration else rng.choice(["received", "quarantined", "x,y"]),
                rng.choice(["midtrans", "xendit", None, "pro,vider"]),
                "registered" if registration else awkward(rng),
                awkward(rng),
                awkward(rng),
                order,
                awkward(rng),
                rng.choice(
                    [
                        None,
                        Decimal("0"),
                        Decimal("1000.50"),
                        Decimal("-3.000"),
                        Decimal(rng.randrange(10**12)) / 100,
                    ]
                ),
                rng.choice([None, Decimal("999.99"), Decimal("1e-3")]),
                awkward(rng),
                rng.choice([None, "ab" * 32, awkward(rng)]),
                None,
                None,
                rng.choice([None, rng.randbytes(32), b""]),
            )
        )
    await owner.copy_records_to_table("audit_index", records=rows)


async def python_csv(pool: asyncpg.Pool, since: datetime, until: datetime) -> bytes:
    """How the export was written before ADR 0024 (``ledger.api.audit._csv``)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    out = bytearray()
    async for rows in queries.export_pages(pool, since, until, page=37):
        buf.seek(0)
        buf.truncate()
        writer.writerows(queries.export_values(r) for r in rows)
        out += buf.getvalue().encode()
    return bytes(out)


async def sql_csv(pool: asyncpg.Pool, since: datetime, until: datetime, page: int) -> bytes:
    return b"".join([chunk async for chunk in queries.export_csv(pool, since, until, page=page)])


@pytest.mark.parametrize("seed", [1, 2])
async def test_sql_csv_is_byte_for_byte_the_python_csv(owner, database_url, seed):
    await fill(owner, 600, seed)
    pool = await create_pool(database_url, max_size=4)
    try:
        windows = [
            (datetime(1970, 1, 1, tzinfo=UTC), datetime(9999, 1, 1, tzinfo=UTC)),
            (START + timedelta(seconds=700), START + timedelta(seconds=2100, microseconds=1)),
            (START + timedelta(days=9), START + timedelta(days=10)),  # nothing
        ]
        for since, until in windows:
            expected = await python_csv(pool, since, until)
            for page in (1, 7, 50, 10_000):
                assert await sql_csv(pool, since, until, page) == expected, (since, page)
        # Registered amounts replace the stated ones for the rest of the order (ADR 0016).
        assert await owner.fetchval(
            "SELECT count(*) FROM audit_index r JOIN audit_index i USING (provider, order_id) "
            "WHERE r.category = 'registration' AND i.category <> 'registration' "
            "AND r.amount IS DISTINCT FROM i.amount"
        )
        everything = await python_csv(pool, *windows[0])
        assert everything.count(b"\n") >= 600  # and quoted line breaks on top
        for needle in (b'"a,b"', b'""', b"\r", "\u00e9".encode()):
            assert needle in everything
    finally:
        await pool.close()


def test_the_quoted_characters_are_csvs_own():
    # Python 3.11's csv.writer quotes line feeds, quotes and commas but not carriage returns.
    for code in range(1, 128):
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow(["a" + chr(code) + "b", "c"])
        assert (f"\\x{code:02x}" in queries.CSV_QUOTED) == buf.getvalue().startswith('"')
