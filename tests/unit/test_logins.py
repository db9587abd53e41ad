"""The service's login URL is the owner's server and database with another user (ADR 0011)."""

from __future__ import annotations

from ledger.database import derived_password, with_user


def test_with_user_keeps_the_server_database_and_options() -> None:
    embedded = "postgresql://postgres:@/postgres?host=/tmp/x/pgdata"
    assert (
        with_user(embedded, "ledger_app") == "postgresql://ledger_app@/postgres?host=/tmp/x/pgdata"
    )
    ci = "postgresql://postgres@127.0.0.1:5432/ledger_t_1"
    assert (
        with_user(ci, "ledger_app", "p w")
        == "postgresql://ledger_app:p%20w@127.0.0.1:5432/ledger_t_1"
    )
    assert with_user("postgresql://h/db", "svc") == "postgresql://svc@h/db"
    in_query = "postgresql://h:5433/db?user=postgres&password=s&sslmode=require"
    assert with_user(in_query, "ledger_app") == "postgresql://ledger_app@h:5433/db?sslmode=require"


def test_the_derived_password_is_stable_secret_and_absent_without_one() -> None:
    a = derived_password("postgresql://postgres:owner-secret@h/db")
    assert a == derived_password("postgresql://postgres:owner-secret@h/other")
    assert a is not None
    assert "owner-secret" not in a
    assert a != derived_password("postgresql://postgres:another@h/db")
    assert derived_password("postgresql://postgres:@/postgres?host=/tmp") is None
    assert derived_password("postgresql://postgres@127.0.0.1/postgres") is None
    assert derived_password("postgresql://h/db?password=s") is not None
