"""bench/scale.py's fast loader makes what the ingest path would store: every slot of the
providers' mix through the real ``accept`` (signature verified, same dedup key, id and
state bytes), a valid hash chain continued across loads, and events that the audit index
and every projection apply without setting any aside."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from ledger.audit import chain
from ledger.audit import index as audit
from ledger.database import create_pool
from ledger.readmodels.access import ReadModels
from ledger.readmodels.runner import ProjectionRunner, available
from tests.support import PATIENCE

_PATH = Path(__file__).resolve().parents[2] / "bench" / "scale.py"


@pytest.fixture(scope="module")
def scale() -> Any:
    spec = importlib.util.spec_from_file_location("bench_scale_under_test", _PATH)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await create_pool(database_url, min_size=1, max_size=4)
    yield p
    await p.close()


def test_every_slot_is_what_ingest_would_store(scale: Any) -> None:
    ids, orders = set(), set()
    # 300 cycles: every slot, both Mayar amounts, Midtrans pending/settlement/expire.
    for i in range(scale.CYCLE * 300):
        oid, state, body, key = scale.fast_row(i)
        scale.check_row(i, oid, state, body, key)  # raises SystemExit on any difference
        ids.add(oid)
        provider, _, kw = scale.event(i)
        if "order_id" in kw:
            orders.add((provider, kw["order_id"]))
    assert len(ids) == scale.CYCLE * 300  # distinct dedup keys
    assert len(orders) == 300 * (3 + 2 + 3)  # Midtrans, Xendit, partner orders per cycle


async def test_loaded_events_verify_and_apply(
    scale: Any, database_url: str, pool: asyncpg.Pool
) -> None:
    _, n = await scale.bulk_load(database_url, 0, 1500, chunk=400, workers=1, tune_server=False)
    _, m = await scale.bulk_load(database_url, 1500, 2000, chunk=300, workers=1, tune_server=False)
    assert (n, m) == (1500, 500)
    async with pool.acquire() as conn:
        report = await chain.verify(conn)
        assert report.ok
        assert report.checked == 2000
        assert report.last_position == 2000
        head = await conn.fetchval("SELECT last_value FROM stored_events_notification_id_seq")
        assert head == 2000
    assert await audit.catch_up(pool) == 2000
    projections = available()
    runner = ProjectionRunner(database_url, projections, batch_size=500, poll_interval=0.2)
    read_models = ReadModels(pool)
    await runner.start()
    try:
        for name in projections:
            assert await read_models.wait_for(name, 2000, timeout=PATIENCE)
    finally:
        await runner.stop()
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM poisoned_events") == 0
        assert await conn.fetchval("SELECT count(*) FROM audit_index") == 2000
        kinds = await conn.fetchval("SELECT count(DISTINCT (provider, kind)) FROM audit_index")
        assert kinds == 9
        # the customers of the mix: ~100 per block, reused across events
        customers = await conn.fetchval("SELECT count(DISTINCT customer) FROM audit_index")
        assert 50 <= customers <= 100
