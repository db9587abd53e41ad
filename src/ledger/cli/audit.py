"""Audit commands: ``ledger verify``, ``ledger keys list|revoke``, and the key-create trail.

Registered on the ``ledger`` group at the bottom of ``ledger.cli``. Operator actions from the
command line are recorded as ``OperatorAction.Recorded`` events whose actor is
``cli:<os user>`` (no API key is involved; whoever can reach the database URL acts).
"""

from __future__ import annotations

import getpass
import sys
import time

import asyncpg
import click
from click._termui_impl import ProgressBar

from ledger.audit import chain
from ledger.audit.keys import KeyInfo, create_key, list_keys, revoke_key
from ledger.audit.trail import ReasonRequired, append_in, check_reason, operator_event
from ledger.cli.common import cli_settings, connect, ledger_url, run, session_login

CLI_SCOPE = "local"


def cli_actor() -> str:
    try:
        user = getpass.getuser()
    except (OSError, KeyError):
        user = "unknown"
    return f"cli:{user}"


def require_reason(reason: str) -> str:
    try:
        return check_reason(reason)
    except ReasonRequired as exc:
        raise click.BadParameter(str(exc), param_hint="--reason") from None


@click.command()
@click.option(
    "--from",
    "start",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="first position to check (the stored hash before it is the anchor)",
)
@click.option("--page", default=chain.PAGE, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--jobs",
    default=None,
    type=click.IntRange(min=1),
    help="processes hashing ranges of the log side by side  [default: the usable CPUs]",
)
@click.option(
    "--range",
    "size",
    default=chain.RANGE,
    show_default=True,
    type=click.IntRange(min=1),
    help="positions per range with --jobs > 1",
)
def verify(start: int, page: int, jobs: int | None, size: int) -> None:
    """Recompute the log's hash chain; exit 1 naming the first altered or missing position."""
    from ledger.cli.lifecycle import usable_cpus

    url = ledger_url(cli_settings())
    jobs = jobs or usable_cpus()

    async def go() -> chain.Report:
        login, settings = await session_login(url)
        conn = await asyncpg.connect(login, server_settings=settings)
        try:
            top, _ = await chain.head(conn)
            total = max(top - start + 1, 0)
            err = sys.stderr
            bar: ProgressBar[int]
            with click.progressbar(length=total, label="verifying", file=err) as bar:
                done = start - 1

                def progress(_rows: int, position: int) -> None:
                    nonlocal done
                    bar.update(position - done)
                    done = position

                if jobs > 1 and total >= 2 * size:
                    return await chain.verify_ranges(
                        login,
                        settings,
                        start,
                        top,
                        jobs=jobs,
                        size=size,
                        page=page,
                        progress=progress,
                    )
                return await chain.verify(conn, start, page=page, progress=progress)
        finally:
            await conn.close()

    t0 = time.perf_counter()
    report = run(go())
    took = time.perf_counter() - t0
    rate = report.checked / took if took > 0 else 0.0
    if report.mismatch is not None:
        click.echo(f"TAMPERED: {report.mismatch.describe()}")
        click.echo(f"{report.checked} events before it verified ({rate:,.0f} events/s)")
        raise SystemExit(1)
    head = report.head_hash.hex() if report.head_hash else "-"
    click.echo(
        f"intact: {report.checked} events, positions {report.first_position or '-'}.."
        f"{report.last_position or '-'}, head hash {head} ({took:.2f} s, {rate:,.0f} events/s)"
    )
    if report.first_position is not None and report.last_position is not None:
        unused = report.last_position - report.first_position + 1 - report.checked
        if unused > 0:
            click.echo(gaps_explained(unused))


def gaps_explained(unused: int) -> str:
    """Why ``verify`` may report fewer events than its position range spans."""
    values = "value was" if unused == 1 else "values were"
    return (
        f"positions are not contiguous: {unused} sequence {values} taken by duplicate "
        "deliveries and rolled-back appends, which store no event. Nothing in between is "
        "missing: each event's hash covers the one stored before it, so removing one breaks "
        "the chain (that none were removed after the head shows only against a head kept "
        "elsewhere: GET /v1/audit/head)."
    )


def _show(k: KeyInfo) -> str:
    revoked = k.revoked_at.isoformat(timespec="seconds") if k.revoked_at else "-"
    return (
        f"{k.key_id}\t{k.name}\t{','.join(k.scopes)}\t"
        f"{k.created_at.isoformat(timespec='seconds')}\t{revoked}"
    )


@click.command("list")
def keys_list() -> None:
    """Key ids, names, scopes, created and revoked times (never secrets)."""
    url = ledger_url(cli_settings())

    async def go() -> list[KeyInfo]:
        conn = await connect(url)
        try:
            return await list_keys(conn)
        finally:
            await conn.close()

    click.echo("key_id\tname\tscopes\tcreated_at\trevoked_at")
    for k in run(go()):
        click.echo(_show(k))


@click.command("revoke")
@click.argument("key_id")
@click.option("--reason", required=True, help="why (recorded in the operator trail)")
def keys_revoke(key_id: str, reason: str) -> None:
    """Revoke a key (every running process refuses it within a second) and record why in the log."""
    why = require_reason(reason)
    url = ledger_url(cli_settings())

    async def go() -> tuple[KeyInfo | None, bool, int | None]:
        conn = await connect(url)
        try:
            async with conn.transaction():
                info, revoked = await revoke_key(conn, key_id)
                position = None
                if revoked:
                    event = operator_event(
                        cli_actor(), CLI_SCOPE, "key.revoke", f"api_key:{key_id}", why
                    )
                    position = await append_in(conn, event)
            return info, revoked, position
        finally:
            await conn.close()

    info, revoked, position = run(go())
    if info is None:
        raise click.ClickException(f"no key {key_id!r} (see `ledger keys list`)")
    if not revoked:
        click.echo(f"{key_id} was already revoked at {info.revoked_at}")
        return
    click.echo(f"revoked {key_id}; recorded at position {position}")


async def create_key_with_trail(
    url: str, name: str, scopes: list[str], reason: str
) -> tuple[str, int | None]:
    """Create a key and its ``key.create`` operator event in one transaction."""
    conn = await connect(url)
    try:
        async with conn.transaction():
            api_key, key = await create_key(conn, name, scopes)
            event = operator_event(
                cli_actor(),
                CLI_SCOPE,
                "key.create",
                f"api_key:{api_key.key_id}",
                f"{reason} (name={name}, scopes={','.join(scopes)})",
            )
            position = await append_in(conn, event)
    finally:
        await conn.close()
    return key, position


def register(main: click.Group, keys: click.Group) -> None:
    """Attach these commands to the ``ledger`` group and its ``keys`` subgroup."""
    main.add_command(verify)
    keys.add_command(keys_list)
    keys.add_command(keys_revoke)
