"""Who the replica pool logs in as (ADR 0019, like ADR 0011 for the primary), and a replica
that is down when the service starts.

Any server stands in for the replica here: what is checked is the login, not replication
(``tests/e2e/test_replica.py`` runs against a real replica).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ledger.app import prepare_database, running_services
from ledger.database import APP_ROLE, PrivilegeError
from ledger.readmodels.replica import ReplicaUnavailable, replica_pool
from tests.support import test_settings as make_settings

QUIET = {"LEDGER_RUN_PROJECTIONS": "false", "LEDGER_RUN_OUTBOX": "false"}


async def test_development_reads_as_ledger_app_when_given_a_superuser(database_url: str) -> None:
    settings = make_settings(**QUIET, LEDGER_READ_DATABASE_URL=database_url)
    async with running_services(settings, database_url) as services:
        reads = services.replica_models
        assert reads is not None
        assert reads.on_replica
        async with reads.pool.acquire() as conn:
            assert await conn.fetchval("SELECT session_user") == APP_ROLE
            assert await conn.fetchval("SELECT current_user") == APP_ROLE


async def test_production_refuses_a_privileged_replica_login(database_url: str) -> None:
    logins = await prepare_database(database_url)  # development: the app logs in as ledger_app
    with pytest.raises(PrivilegeError, match="LEDGER_READ_DATABASE_URL"):
        await replica_pool(database_url, logins, production=True)
    pool = await replica_pool(logins.app, logins, production=True)  # a plain login passes
    try:
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT session_user") == APP_ROLE
    finally:
        await pool.close()


async def test_a_replica_down_at_start_costs_reads_a_503_not_the_service(
    database_url: str, tmp_path: Path
) -> None:
    nowhere = f"postgresql://postgres@/ledger?host={tmp_path}"  # no server listens there
    settings = make_settings(**QUIET, LEDGER_READ_DATABASE_URL=nowhere)
    async with running_services(settings, database_url) as services:
        reads = services.replica_models
        assert reads is not None
        with pytest.raises(ReplicaUnavailable):
            await reads.position("token_balances")
        # The primary is untouched: its read models answer.
        assert await services.read_models.position("token_balances") == 0
