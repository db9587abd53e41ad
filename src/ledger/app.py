"""The composition root: ``create_app()`` is the only place adapters are wired."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import asyncpg
from litestar import Litestar
from litestar.di import Provide
from litestar.middleware import DefineMiddleware
from litestar.plugins.problem_details import ProblemDetailsPlugin
from litestar.plugins.prometheus import PrometheusConfig

from ledger import __version__, heap
from ledger.accounts.spend import Spender
from ledger.api import problems
from ledger.api.accounts import AccountsController
from ledger.api.admin import admin_page
from ledger.api.audit import AuditController
from ledger.api.audit_timelines import AuditTimelinesController
from ledger.api.docs import asset_router, openapi_config
from ledger.api.events import EventsController
from ledger.api.health import health, ready
from ledger.api.keys import KeysController
from ledger.api.metrics import MetricsController
from ledger.api.orders import OrdersController
from ledger.api.outbox import OutboxController
from ledger.api.params import RejectUnstorable
from ledger.api.projections import ProjectionsController
from ledger.api.reconciliation import ReconciliationController
from ledger.api.review import ReviewController
from ledger.api.slow_clients import BodyReadDeadline
from ledger.api.stream import stream
from ledger.api.subscriptions import SubscriptionsController
from ledger.api.webhooks import WebhookController
from ledger.audit.index import AuditIndexer
from ledger.audit.keys import KeyRing
from ledger.config import Settings, load_settings
from ledger.database import Logins, prepare_logins, resolve_database_url, service_pool
from ledger.ingest.providers import build_providers
from ledger.ingest.service import Ingest
from ledger.live.hub import StreamHub
from ledger.metrics import Metrics
from ledger.outbox.dispatcher import Dispatcher
from ledger.readmodels.access import ReadModels
from ledger.readmodels.contract import Projection, discover
from ledger.readmodels.replica import replica_pool
from ledger.readmodels.runner import ProjectionRunner
from ledger.store.eventstore import EventStore, GroupCommitter

log = logging.getLogger("ledger")


@dataclass
class Services:
    """The running components, typed. Handlers get them one by one through the providers in
    ``dependencies()``; only the guards read this from ``app.state.services``."""

    settings: Settings
    pool: asyncpg.Pool
    store: EventStore
    committer: GroupCommitter
    ingest: Ingest
    keyring: KeyRing
    spender: Spender  # one per process: it holds the per-customer locks
    read_models: ReadModels
    metrics: Metrics = field(default_factory=Metrics)
    # Reads on LEDGER_READ_DATABASE_URL's replica (ADR 0019); None: reads use read_models.
    replica_models: ReadModels | None = None
    database_url: str = ""
    # Keyword arguments for the ProjectionRunner (``ledger worker`` and tests tune them).
    runner_options: dict[str, Any] = field(default_factory=dict)
    # Filled by components (see ``components()``); None when not running in this process
    # (``ledger serve``'s HTTP process when its background process runs them, ADR 0030).
    runner: ProjectionRunner | None = None
    dispatcher: Dispatcher | None = None
    hub: StreamHub | None = None  # the live stream (in every process that serves HTTP)
    # The read models of this code base, configured (see ``installed_projections``).
    projections: dict[str, Projection] = field(default_factory=dict)


class Component(Protocol):
    """A background part of the service, started after Services and stopped in reverse."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def installed_projections(settings: Settings | None = None) -> dict[str, Projection]:
    """Every read model in ``projections/``, by name, configured from ``settings`` (the
    environment's when None). The one place that names the concrete projections: the rest
    of the service depends on ``ledger.readmodels.contract``."""
    import ledger.projections
    from ledger.projections.outbox import PROJECTION as OUTBOX
    from ledger.projections.outbox import Targets

    OUTBOX.configure(Targets.from_settings(settings or load_settings()))
    return discover(ledger.projections)


@dataclass(frozen=True)
class Parts:
    """Which components a process runs (ADR 0030). ``http``: what requests need beside the
    pool and group commit (the key cache, the live-stream hub); ``background``: the log's
    consumers (projection runner, audit index, outbox dispatcher, reconciler), each still
    subject to its setting (``LEDGER_RUN_PROJECTIONS``, ``LEDGER_RUN_OUTBOX``, ...)."""

    http: bool = True
    background: bool = True


EVERYTHING = Parts()  # ``serve --background inline``, one process does it all
HTTP_ONLY = Parts(background=False)  # ``serve``'s HTTP process(es) beside a background one
BACKGROUND_ONLY = Parts(http=False)  # ``ledger worker`` and ``serve``'s background process


def components(services: Services, parts: Parts = EVERYTHING) -> list[Component]:
    """The components this process runs besides group commit (one line per component)."""
    settings = services.settings
    found: list[Component] = []
    if parts.http:
        found.append(services.keyring)
        services.hub = StreamHub(services.database_url, services.store)
        found.append(services.hub)
    if not parts.background:
        return found
    if settings.run_projections:
        services.runner = ProjectionRunner(
            services.database_url, services.projections, **services.runner_options
        )
        found.append(services.runner)
    if settings.run_outbox:
        services.dispatcher = Dispatcher(
            services.pool, settings, database_url=services.database_url
        )
        found.append(services.dispatcher)
    if settings.run_projections:  # derived data, like the projections
        found.append(AuditIndexer(services.pool))
    from ledger.reconcile.background import Reconciler

    # Every LEDGER_RECONCILE_INTERVAL (0: off); one pass at a time across processes.
    found.append(
        Reconciler(settings, services.database_url, services.read_models, services.committer)
    )
    return found


async def prepare_database(
    url: str, *, migrate_url: str | None = None, production: bool = False
) -> Logins:
    """Migrate with the owner's login; return the login the service's sessions use, which is
    never a superuser or the log's owner in production (ADR 0011)."""
    return await prepare_logins(url, migrate_url=migrate_url, production=production)


@asynccontextmanager
async def running_services(
    cfg: Settings,
    database_url: str | None = None,
    *,
    runner_options: dict[str, Any] | None = None,
    parts: Parts = EVERYTHING,
) -> AsyncIterator[Services]:
    """Everything but HTTP: the store, group commit and the components ``parts`` names.

    ``serve`` runs it inside the app's lifespan and ``ledger worker`` (or serve's background
    process) on its own, so all get the same, fully configured components (e.g. the outbox
    projection's targets).
    """
    url = await asyncio.to_thread(
        resolve_database_url, database_url or cfg.database_url, cfg.home_path
    )
    production = cfg.env == "production"
    logins = await prepare_database(
        url, migrate_url=cfg.migrate_database_url, production=production
    )
    # timeout: connecting gives up after 4 s, so a server that does not answer is a 503
    # within 5 s (an unreachable one fails at once: refused or missing socket).
    pool = await service_pool(logins, production=production, max_size=20, timeout=4.0)
    read_pool = None
    if cfg.read_database_url:
        try:
            read_pool = await replica_pool(
                cfg.read_database_url, logins, production=production, max_size=20, timeout=4.0
            )
        except BaseException:
            await pool.close()
            raise
    url = logins.app  # the runner, the listeners and the stream log in like the pool
    store = EventStore(pool)
    committer = GroupCommitter(store, max_batch=cfg.group_commit_max)
    await committer.start()
    projections = installed_projections(cfg)
    read_models = ReadModels(pool, projections=projections)
    services = Services(
        settings=cfg,
        pool=pool,
        store=store,
        committer=committer,
        ingest=Ingest(build_providers(cfg), committer),
        keyring=KeyRing(pool, listen_url=url, ttl=cfg.key_cache_seconds),
        database_url=url,
        read_models=read_models,
        projections=projections,
        spender=Spender(store, committer, read_models),
        replica_models=None
        if read_pool is None
        else ReadModels(read_pool, projections=projections, primary=pool),
        runner_options=runner_options or {},
    )
    started: list[Component] = []
    try:
        for comp in components(services, parts):
            await comp.start()
            started.append(comp)
        yield services
    finally:
        for comp in reversed(started):
            await comp.stop()
        await committer.stop()
        await pool.close()
        if read_pool is not None:
            await read_pool.close()


def route_handlers() -> list[Any]:
    """Every controller and route (add one entry per controller)."""
    return [
        health,
        ready,
        WebhookController,
        EventsController,
        MetricsController,
        ProjectionsController,
        AccountsController,
        OrdersController,
        SubscriptionsController,
        ReviewController,
        ReconciliationController,
        OutboxController,
        stream,
        admin_page,
        AuditController,
        AuditTimelinesController,
        KeysController,
        asset_router(),
    ]


class Running:
    """Where the lifespan puts the running ``Services`` for this app's providers.

    Providers read it from here rather than taking litestar's ``state``: a provider with a
    ``state`` parameter has that parameter parsed, and a ``State`` built, on every request
    (~6 us of a webhook's CPU, issue 11); one with no parameter costs nothing to resolve."""

    def __init__(self) -> None:
        self.services: Services | None = None

    def get(self) -> Services:
        if self.services is None:  # a handler ran outside the lifespan: a bug
            raise RuntimeError("the app's services are not running")
        return self.services


def dependencies(running: Running) -> dict[str, Provide]:
    """What a handler may declare as a parameter, by name (litestar dependency injection):
    handlers declare ``store: EventStore`` (etc.) and litestar hands them the running
    component; nothing below the composition root reaches into ``app.state``. Guards do not
    take dependencies in litestar, so ``api.auth`` reads the keyring from ``app.state`` (the
    one other place that does)."""
    get = running.get

    def settings() -> Settings:
        return get().settings

    def pool() -> asyncpg.Pool:
        return get().pool

    def store() -> EventStore:
        return get().store

    def committer() -> GroupCommitter:
        return get().committer

    def ingest() -> Ingest:
        return get().ingest

    def keyring() -> KeyRing:
        return get().keyring

    def read_models() -> ReadModels:
        return get().read_models

    def replica_models() -> ReadModels:  # routes opt in: ledger.api.reads.ON_REPLICA
        services = get()
        return services.replica_models or services.read_models

    def spender() -> Spender:
        return get().spender

    def metrics() -> Metrics:
        return get().metrics

    def hub() -> StreamHub:
        running_hub = get().hub
        if running_hub is None:  # every HTTP process starts one; a bug if not
            raise RuntimeError("the stream hub is not running")
        return running_hub

    def runner() -> ProjectionRunner | None:
        return get().runner

    def dispatcher() -> Dispatcher | None:
        return get().dispatcher

    providers = [
        settings, pool, store, committer, ingest, keyring, read_models, replica_models,
        spender, metrics, hub, runner, dispatcher,
    ]  # fmt: skip
    return {fn.__name__: Provide(fn, sync_to_thread=False) for fn in providers}


def create_app(
    settings: Settings | None = None,
    *,
    database_url: str | None = None,
    parts: Parts = EVERYTHING,
) -> Litestar:
    """The HTTP app; ``parts=HTTP_ONLY`` when the background components run in another
    process (``ledger serve``, ADR 0030)."""
    cfg: Settings = settings or load_settings()
    running = Running()
    if not parts.background:  # its outbox and reconciler metrics come from that process
        from ledger.metrics_relay import FILE_NAME, relay

        relay(cfg.home_path / FILE_NAME)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        async with running_services(cfg, database_url, parts=parts) as services:
            app.state.services = services  # for the guards (they take no dependencies)
            running.services = services
            heap.settle()  # start-up done: freeze it out of the collector's walks (ADR 0031)
            yield

    # Webhooks are counted and timed by ledger.metrics (cheaper than this middleware's
    # per-request bookkeeping, which cost ~5 % of a webhook's CPU: issue 11).
    prometheus = PrometheusConfig(app_name="ledger", group_path=True, exclude=["^/webhooks/"])
    return Litestar(
        route_handlers=route_handlers(),
        lifespan=[lifespan],
        plugins=[ProblemDetailsPlugin(problems.CONFIG)],
        middleware=[
            prometheus.middleware,
            DefineMiddleware(BodyReadDeadline, timeout=cfg.request_read_timeout),
            RejectUnstorable,  # NUL and controls in path or query: 400, on every route
        ],
        dependencies=dependencies(running),
        openapi_config=openapi_config(__version__),
        # The process's entrypoint owns logging (ledger.logs via `ledger serve`, replayed in
        # --workers children): litestar's default config would replace it with its own format.
        logging_config=None,
        debug=False,
    )


def app_from_env() -> Any:
    """Uvicorn factory target (``ledger.app:app_from_env``; ``ledger serve --workers N
    --background inline``): settings from the environment, development secrets from
    ``$LEDGER_HOME``; every component in each process."""
    from ledger.config import ensure_dev_secrets

    settings, _ = ensure_dev_secrets(load_settings())
    return create_app(settings)


def http_app_from_env() -> Any:
    """Like :func:`app_from_env` with HTTP's components only: ``ledger serve --workers N``
    whose background components run in their own process (ADR 0030)."""
    from ledger.config import ensure_dev_secrets

    settings, _ = ensure_dev_secrets(load_settings())
    return create_app(settings, parts=HTTP_ONLY)
