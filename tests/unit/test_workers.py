"""``ledger serve --workers auto`` (ADR 0018): the process count from the usable CPUs."""

from __future__ import annotations

import pytest

from ledger.cli.lifecycle import MAX_AUTO_WORKERS, auto_workers, database_is_local


@pytest.mark.parametrize(
    ("cpus", "local", "expected"),
    [
        (1, True, 1),
        (1, False, 1),
        (2, True, 1),  # PostgreSQL on the same 2 cores: one server process
        (2, False, 2),
        (3, True, 2),
        (8, True, MAX_AUTO_WORKERS),  # the connection budget caps it
        (64, False, MAX_AUTO_WORKERS),
    ],
)
def test_auto_workers(cpus: int, local: bool, expected: int) -> None:
    assert auto_workers(cpus, local_database=local) == expected


@pytest.mark.parametrize(
    ("url", "local"),
    [
        ("postgresql://u:p@127.0.0.1:5432/ledger", True),
        ("postgresql://u@localhost/ledger", True),
        ("postgresql://u@[::1]:5433/ledger", True),
        ("postgresql://postgres@/ledger?host=/tmp/pgdata", True),  # a Unix socket
        ("postgresql:///ledger", True),
        ("postgresql://u:p@db.internal:5432/ledger", False),
        ("postgresql://u@10.0.0.7/ledger?sslmode=require", False),
    ],
)
def test_database_is_local(url: str, local: bool) -> None:
    assert database_is_local(url) is local
