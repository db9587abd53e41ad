"""``ledger projections rebuild --all``: every projection rebuilt blue/green at once, folded
by a pool of processes (ADR 0026), through the real CLI on the real database."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator

import asyncpg
import msgspec
import pytest
from litestar.testing import AsyncTestClient

from ledger.app import create_app, installed_projections
from ledger.config import Settings
from ledger.database import create_pool
from ledger.readmodels.access import ReadModels
from ledger.readmodels.runner import ProjectionRunner
from tests.support import PATIENCE, SECRETS, signed

DELIVERIES = [
    ("mayar", "payment.success", {"customer": "a@b.c", "package": "silver"}),
    ("mayar", "payment.success", {"customer": "a@b.c", "package": "gold"}),
    ("mayar", "payment.success", {"customer": "b@b.c", "package": "platinum"}),
    ("mayar", "subscription.activated", {"customer": "a@b.c"}),
    ("midtrans", "pending", {"order_id": "INV-7"}),
    ("midtrans", "settlement", {"order_id": "INV-7"}),
    ("midtrans", "expire", {"order_id": "INV-8"}),
    ("xendit", "PENDING", {}),
    ("xendit", "PAID", {}),
    ("partner", "booking.paid", {}),
]


@pytest.fixture
async def ingest_only(settings: Settings, database_url: str) -> AsyncIterator[AsyncTestClient]:  # type: ignore[type-arg]
    """The real app with no projection runner: only the CLI's rebuilds fold."""
    quiet = msgspec.structs.replace(settings, run_projections=False, run_outbox=False)
    app = create_app(quiet, database_url=database_url)
    async with AsyncTestClient(app) as c:
        yield c


def _run(database_url: str, *args: str) -> tuple[int, str, str]:
    env = {**os.environ, **SECRETS, "LEDGER_DATABASE_URL": database_url}
    env.pop("LEDGER_HOME", None)
    p = subprocess.run(
        [sys.executable, "-m", "ledger", "projections", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    return p.returncode, p.stdout, p.stderr


def _live_digests(out: str) -> dict[str, tuple[int, str]]:
    found = re.findall(r"^generation (\d+) of (\S+) is live; digest (\S+)$", out, re.MULTILINE)
    return {name: (int(generation), digest) for generation, name, digest in found}


async def test_rebuild_all_folds_every_projection_to_the_single_rebuild_digests(
    ingest_only: AsyncTestClient,  # type: ignore[type-arg]
    database_url: str,
) -> None:
    for provider, event, opts in DELIVERIES:
        d = signed(provider, event, **opts)
        ack = await ingest_only.post(d.path, content=d.body, headers=d.headers)
        assert ack.status_code == 200, ack.text
    names = sorted(installed_projections())
    assert {"orders", "outbox", "review", "subscriptions", "token_balances"} <= set(names)

    code, out, err = await asyncio.to_thread(
        _run, database_url, "rebuild", "--all", "--jobs", "2", "--reason", "test full rebuild"
    )
    assert code == 0, err
    for name in names:
        assert f"rebuild of {name} started generation 2" in out, out
    assert re.search(rf"{len(names)}/{len(names)} live  \[#+\] 100% ", err), err
    together = _live_digests(out)
    assert set(together) == set(names)
    assert {g for g, _ in together.values()} == {2}

    conn = await asyncpg.connect(database_url)
    try:
        trail = [
            json.loads(r["state"])
            for r in await conn.fetch(
                "SELECT state FROM stored_events "
                "WHERE topic = 'ledger.domain:OperatorAction.Recorded' ORDER BY notification_id"
            )
        ]
        head = await conn.fetchval("SELECT max(notification_id) FROM stored_events")
    finally:
        await conn.close()
    assert sorted((t["action"], t["target"], t["reason"]) for t in trail) == [
        ("projection.rebuild", name, "test full rebuild") for name in names
    ]
    pool = await create_pool(database_url, min_size=1, max_size=2)
    try:
        status = {s.name: s for s in await ReadModels(pool).status()}
    finally:
        await pool.close()
    for name in names:
        st = status[name]
        # Folded to the head, the rebuilds' own operator events included, and switched.
        assert (st.live_generation, st.building_generation, st.state) == (2, None, "running")
        assert st.position == head

    # The same projections rebuilt one at a time (the path every other test covers).
    for name in names:
        code, out, err = await asyncio.to_thread(
            _run, database_url, "rebuild", name, "--reason", "test single rebuild"
        )
        assert code == 0, err
        [(generation, digest)] = _live_digests(out).values()
        assert generation == 3
        assert digest == together[name][1], name


def test_rebuild_needs_names_or_all(database_url: str) -> None:
    code, _, err = _run(database_url, "rebuild", "--reason", "x")
    assert code == 2
    assert "--all" in err
    code, _, err = _run(database_url, "rebuild", "orders", "--all", "--reason", "x")
    assert code == 2
    code, _, err = _run(database_url, "rebuild", "orders", "nope", "--reason", "x")
    assert code == 1
    assert "no projection named 'nope'" in err


async def test_rebuild_all_folds_in_its_own_processes_while_another_runner_runs(
    ingest_only: AsyncTestClient,  # type: ignore[type-arg]
    database_url: str,
) -> None:
    """A runner elsewhere (``serve``'s, a worker's) runs every building generation too and
    hears the rebuilds start at once; the command still folds them in its own processes:
    it holds the new generations' locks until they queue for them (ADR 0026)."""
    for provider, event, opts in DELIVERIES:
        d = signed(provider, event, **opts)
        ack = await ingest_only.post(d.path, content=d.body, headers=d.headers)
        assert ack.status_code == 200, ack.text
    projections = installed_projections()
    elsewhere = ProjectionRunner(database_url, projections, poll_interval=0.2, lock_retry=0.02)
    pool = await create_pool(database_url, min_size=1, max_size=2)
    await elsewhere.start()
    try:
        rm = ReadModels(pool)
        for name in projections:
            assert await rm.wait_for(name, len(DELIVERIES), timeout=PATIENCE)
        folded_here = elsewhere.applied
        code, out, err = await asyncio.to_thread(
            _run, database_url, "rebuild", "--all", "--reason", "test full rebuild"
        )
        assert code == 0, err
        assert set(_live_digests(out)) == set(projections)
        # The other runner applied nothing of the new generations (each would have meant
        # every delivery of at least one projection again).
        assert elsewhere.applied == folded_here
    finally:
        await elsewhere.stop()
        await pool.close()
