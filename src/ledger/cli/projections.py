"""``ledger projections status|rebuild|retry`` and ``ledger worker`` (no HTTP)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator
from concurrent.futures import ProcessPoolExecutor
from typing import TYPE_CHECKING, Any

import click

from ledger import heap
from ledger.cli.common import cli_settings, ledger_url
from ledger.cli.following import follow, follow_all
from ledger.cli.following import progress_line as progress_line  # re-exported
from ledger.database import create_pool, logins_for
from ledger.readmodels.access import ProjectionStatus, ReadModels
from ledger.readmodels.poison import AUDIT_INDEX, PoisonedEvent

if TYPE_CHECKING:
    from ledger.app import Services
    from ledger.config import Settings


def status_table(items: list[ProjectionStatus]) -> str:
    head = ("name", "ver", "live", "building", "position", "lag", "lag s", "state")
    rows = [
        (
            s.name,
            str(s.version),
            f"g{s.live_generation}",
            "-"
            if s.building_generation is None
            else f"g{s.building_generation} @ {s.building_position or 0:,}",
            f"{s.position:,}",
            f"{s.lag_events:,}",
            f"{s.lag_seconds:.1f}",
            s.state,
        )
        for s in items
    ]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in [head, *rows]]
    for s in items:
        if s.digest:
            lines.append(f"{s.name}: digest {s.digest}")
        if s.error:
            lines.append(f"{s.name}: error {s.error}")
        lines.extend(poisoned_lines(s.name, s.poisoned, s.poisoned_events))
    return "\n".join(lines)


def poisoned_lines(name: str, count: int, entries: list[PoisonedEvent]) -> list[str]:
    """``NAME: N poisoned event(s) (retry: ...)`` and one line per listed entry."""
    if not count:
        return []
    lines = [
        f"{name}: {count} poisoned event(s); after a fix: "
        f'ledger projections retry {name} --reason "..."'
    ]
    for e in entries:
        lines.append(
            f"  position {e.position} event {e.event_id} g{e.generation} "
            f"attempts {e.attempts} last {e.last_seen:%Y-%m-%d %H:%M:%S}: {e.error}"
        )
    return lines


@click.group()
def projections() -> None:
    """Projection status and blue/green rebuilds."""


@projections.command("status")
@click.option("--digest", is_flag=True, help="also compute each live content digest")
def status(digest: bool) -> None:
    """Every projection: version, generations, position, lag (events and seconds), state."""
    from ledger.readmodels.poison import annotate
    from ledger.readmodels.runner import available

    url = ledger_url(cli_settings())
    extra: list[str] = []  # the audit index's poisoned events

    async def go() -> list[ProjectionStatus]:
        logins = await logins_for(url, cli_settings())
        pool = await create_pool(logins.app, min_size=1, max_size=2)
        try:
            rm = ReadModels(pool)
            items = await rm.status()
            if digest:
                code = available()
                for st in items:
                    if st.name in code:
                        st.digest = await rm.digest(code[st.name])
            async with pool.acquire() as conn:
                index = await annotate(conn, items)
            extra.extend(poisoned_lines(AUDIT_INDEX, index.count, index.entries))
            return items
        finally:
            await pool.close()

    items = asyncio.run(go())
    click.echo(status_table(items) if items else "no projection has run on this database yet")
    for line in extra:
        click.echo(line)


@projections.command("rebuild")
@click.argument("names", nargs=-1)
@click.option("--all", "every", is_flag=True, help="rebuild every projection")
@click.option(
    "--run/--no-run",
    default=True,
    show_default=True,
    help="also apply it here (if another runner holds the generation, it builds and we watch)",
)
@click.option("--wait/--no-wait", default=True, show_default=True, help="follow until the switch")
@click.option("--batch-size", default=2000, show_default=True, type=int)
@click.option(
    "--jobs",
    type=click.IntRange(min=1),
    default=None,
    help="with several: processes folding at once [default: one per CPU]",
)
@click.option("--reason", required=True, help="why (recorded in the log's operator trail)")
def rebuild(
    names: tuple[str, ...],
    every: bool,
    run: bool,
    wait: bool,
    batch_size: int,
    jobs: int | None,
    reason: str,
) -> None:
    """Rebuild NAMES (or --all) from position 0 beside the live generations, then switch
    each atomically. Several are started together and folded concurrently, one process
    per CPU (ADR 0026)."""
    from ledger.audit.trail import ReasonRequired, append_in, check_reason, operator_event
    from ledger.cli.audit import CLI_SCOPE, cli_actor
    from ledger.readmodels.rebuilds import Handover, fold_all, rebuild_pool
    from ledger.readmodels.runner import ProjectionRunner, available, connect, start_rebuild

    try:
        reason = check_reason(reason)
    except ReasonRequired as exc:
        raise click.ClickException(str(exc)) from None

    code = available()
    if every == bool(names):
        raise click.UsageError("name the projections to rebuild, or give --all (not both)")
    wanted = sorted(code) if every else list(dict.fromkeys(names))
    unknown = [n for n in wanted if n not in code]
    if unknown:
        raise click.ClickException(f"no projection named {unknown[0]!r}; known: {sorted(code)}")
    url = ledger_url(cli_settings())

    async def go() -> None:
        async with contextlib.AsyncExitStack() as stack:
            folders = None
            if run and wait and len(wanted) > 1:  # started first: they take the rebuilds up
                folders = await stack.enter_async_context(rebuild_pool(len(wanted), jobs))
            await rebuild_in(folders)

    async def rebuild_in(folders: ProcessPoolExecutor | None) -> None:
        logins = await logins_for(url, cli_settings())
        pool = await create_pool(logins.app, min_size=1, max_size=2)
        worker: ProjectionRunner | None = None
        # The pool's processes, not another runner, take the new generations (ADR 0026).
        handover = None
        if folders is not None:
            handover = Handover(await connect(logins.app, "ledger-rebuild"))
        try:
            generations: dict[str, int] = {}
            fresh: dict[str, bool] = {}
            # Every rebuild and its operator event commit together (the trail never lies).
            async with pool.acquire() as conn, conn.transaction():
                for name in wanted:
                    generation, started = await start_rebuild(conn, code[name])
                    event = operator_event(
                        cli_actor(), CLI_SCOPE, "projection.rebuild", name, reason
                    )
                    await append_in(conn, event)
                    generations[name], fresh[name] = generation, started
                    if handover is not None and started:
                        await handover.hold(name, generation)
            for name, generation in generations.items():  # once committed
                verb = "started" if fresh[name] else "already in progress:"
                click.echo(f"rebuild of {name} {verb} generation {generation}")
            if not wait:
                return
            rm = ReadModels(pool)
            if len(generations) == 1:
                [(name, generation)] = generations.items()
                if run:
                    worker = ProjectionRunner(
                        logins.app,
                        {name: code[name]},
                        batch_size=batch_size,
                        app_name="ledger-rebuild",
                    )
                    await worker.start()
                await follow(rm, name, generation)
            else:
                following = asyncio.create_task(follow_all(rm, generations))
                hand = None if handover is None else asyncio.create_task(handover.run())
                try:
                    if folders is not None:
                        await fold_all(folders, logins.app, generations, batch_size=batch_size)
                    await following
                finally:
                    following.cancel()
                    if hand is not None:
                        hand.cancel()
            for name, generation in generations.items():
                digest = await rm.digest(code[name])
                click.echo(f"generation {generation} of {name} is live; digest {digest}")
        finally:
            if worker is not None:
                await worker.stop()
            if handover is not None:
                await handover.conn.close()  # releases whatever it still holds
            await pool.close()

    asyncio.run(go())


@projections.command("retry")
@click.argument("name")
@click.option("--reason", required=True, help="why (recorded in the log's operator trail)")
def retry(name: str, reason: str) -> None:
    """Re-apply the events NAME (a projection, or audit_index) set aside as poisoned, after
    a fix: each one that now applies is marked resolved; one that still fails stays."""
    from ledger.audit.index import retry_poisoned as retry_index
    from ledger.audit.trail import ReasonRequired, append_in, check_reason, operator_event
    from ledger.cli.audit import CLI_SCOPE, cli_actor
    from ledger.readmodels.runner import available, retry_poisoned

    try:
        reason = check_reason(reason)
    except ReasonRequired as exc:
        raise click.ClickException(str(exc)) from None
    code = available()
    if name != AUDIT_INDEX and name not in code:
        known = sorted([*code, AUDIT_INDEX])
        raise click.ClickException(f"no projection named {name!r}; known: {known}")
    url = ledger_url(cli_settings())

    async def go() -> tuple[list[int], list[int]]:
        logins = await logins_for(url, cli_settings())
        pool = await create_pool(logins.app, min_size=1, max_size=2)
        try:
            async with pool.acquire() as conn, conn.transaction():
                if name == AUDIT_INDEX:
                    outcomes = [await retry_index(conn)]
                else:
                    outcomes = await retry_poisoned(conn, code[name])
                event = operator_event(cli_actor(), CLI_SCOPE, "projection.retry", name, reason)
                await append_in(conn, event)
        finally:
            await pool.close()
        resolved = [p for o in outcomes for p in o.resolved]
        still = [p for o in outcomes for p in o.still_poisoned]
        return resolved, still

    resolved, still = asyncio.run(go())
    click.echo(f"{name}: {len(resolved)} resolved {resolved}, {len(still)} still poisoned {still}")
    if still:
        raise SystemExit(1)


@click.command()
@click.option("--batch-size", default=2000, show_default=True, type=int)
@click.option(
    "--parent-pipe",
    type=int,
    default=None,
    hidden=True,
    help="ledger serve's background process (ADR 0030): the database URL is read from this "
    "descriptor, whose end of file means serve has gone",
)
def worker(batch_size: int, parent_pipe: int | None) -> None:
    """Run the background components without HTTP until SIGTERM or SIGINT: the projection
    runner, the audit index, the outbox dispatcher (unless LEDGER_RUN_OUTBOX=false) and the
    reconciler.

    Any number of workers (and ``serve`` processes) may run at once: each projection
    generation is applied by exactly one of them; the others take over if it dies; outbox
    messages are leased, so no two processes send one message at a time.
    """
    import msgspec

    from ledger.config import read_dev_secrets

    # The secrets serve uses (e.g. the partner sync's, which the outbox projection's
    # targets depend on), from $LEDGER_HOME/dev-secrets.json in development.
    settings = read_dev_secrets(cli_settings())
    if parent_pipe is not None:  # serve's background process: serve's settings, as they are
        _serve_background(settings, parent_pipe, batch_size)
        return
    settings = msgspec.structs.replace(settings, run_projections=True)
    url = ledger_url(settings)  # an existing ledger only; started once, here
    options = {"batch_size": batch_size, "app_name": f"ledger-worker-{os.getpid()}"}

    async def go() -> None:
        async with _background(settings, url, options) as (services, stop):
            runner = services.runner
            if runner is None:  # run_projections is forced on above; a bug if it did not start
                raise click.ClickException("the projection runner did not start")
            click.echo(f"worker running projections: {', '.join(sorted(runner.projections))}")
            await stop.wait()
        click.echo("worker stopped")

    asyncio.run(go())


@contextlib.asynccontextmanager
async def _background(
    settings: Settings, url: str, options: dict[str, Any]
) -> AsyncIterator[tuple[Services, asyncio.Event]]:
    """The background components running, and the event SIGTERM or SIGINT sets."""
    from ledger.app import BACKGROUND_ONLY, running_services

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with running_services(
        settings, url, runner_options=options, parts=BACKGROUND_ONLY
    ) as services:
        heap.settle()  # start-up done: freeze it out of the collector's walks (ADR 0031)
        yield services, stop


def _serve_background(settings: Settings, pipe: int, batch_size: int) -> None:
    """``ledger serve``'s background process (ADR 0030): the URL comes on ``pipe`` (never in
    argv or the environment); serve holds the other end, so end of file means serve has gone,
    however it went, and this process stops rather than outlive it. It runs in its own
    session, so a terminal's Ctrl+C reaches serve alone, which stops this process in turn."""
    import logging

    from ledger import logs
    from ledger.config import secrets_in_effect
    from ledger.metrics_relay import FILE_NAME, publish

    log = logging.getLogger("ledger.serve.background")
    logs.mask_values(secrets_in_effect(settings).values())
    # Unbuffered: nothing past the line is read, so the loop's reader below sees the rest.
    with os.fdopen(pipe, "rb", buffering=0, closefd=False) as stream:
        line = stream.readline()
    if not line.endswith(b"\n"):  # serve went away before sending it
        raise SystemExit(1)
    url = line.decode().strip()
    options = {"batch_size": batch_size, "app_name": f"ledger-background-{os.getpid()}"}

    async def go() -> None:
        async with _background(settings, url, options) as (services, stop):
            loop = asyncio.get_running_loop()

            def parent_gone() -> None:
                if not os.read(pipe, 64):
                    loop.remove_reader(pipe)
                    log.warning("background process: serve has gone; stopping")
                    stop.set()

            loop.add_reader(pipe, parent_gone)
            # The outbox's and reconciler's counters, for serve's GET /metrics.
            relay = asyncio.create_task(publish(settings.home_path / FILE_NAME))
            running = [
                name
                for name, on in (
                    ("projections", services.runner is not None),
                    ("audit index", services.runner is not None),
                    ("outbox dispatcher", services.dispatcher is not None),
                )
                if on
            ]
            log.info(
                "background process %d running: %s; LEDGER_RECONCILE_INTERVAL %g s",
                os.getpid(),
                ", ".join(running) or "nothing but the reconciler",
                settings.reconcile_interval,
            )
            await stop.wait()
            relay.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await relay
        log.info("background process %d stopped", os.getpid())

    asyncio.run(go())


def register(main: click.Group) -> None:
    """Add these commands to the ``ledger`` group."""
    main.add_command(projections)
    main.add_command(worker)
