"""``ledger serve``'s background process's Prometheus metrics in ``GET /metrics`` (ADR 0030).

The outbox dispatcher and the reconciler count in the process that runs them. When that is
serve's background process, it writes their families (text exposition) to a file in
``$LEDGER_HOME`` every few seconds; each HTTP process drops its own idle copies of those
collectors and serves the file's families instead, so ``/metrics`` shows them as it did
when everything ran in one process (at most ``EVERY`` seconds old).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from prometheus_client import REGISTRY, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

log = logging.getLogger(__name__)

FILE_NAME = "background-metrics.prom"
PREFIXES = ("ledger_outbox_", "ledger_reconcile_")  # the background components' families
EVERY = 2.0  # seconds between writes


def _background_families() -> Iterator[Metric]:
    for family in REGISTRY.collect():
        if family.name.startswith(PREFIXES):
            yield family


class _Families:
    """What ``generate_latest`` needs: something with ``collect()``."""

    def collect(self) -> Iterator[Metric]:
        return _background_families()


def write(path: Path) -> None:
    """This process's background families to ``path``, replaced atomically."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(generate_latest(_Families()))
    os.replace(tmp, path)


async def publish(path: Path) -> None:
    """Write ``path`` every ``EVERY`` seconds until cancelled, then once more."""
    try:
        while True:
            await asyncio.to_thread(write, path)
            await asyncio.sleep(EVERY)
    finally:
        with contextlib.suppress(OSError):
            write(path)


class _Relayed:
    """A collector yielding the families the background process wrote last."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def collect(self) -> Iterator[Metric]:
        try:
            text = self.path.read_text()
        except OSError:  # not written yet (or no background process): nothing to show
            return
        try:
            families = list(text_string_to_metric_families(text))
        except ValueError as exc:  # never fail /metrics over it
            log.warning("background metrics in %s unreadable: %s", self.path, exc)
            return
        yield from (f for f in families if f.name.startswith(PREFIXES))


_relaying: list[Path] = []


def relay(path: Path) -> None:
    """In an HTTP process whose background runs elsewhere: serve ``path``'s families in
    place of this process's own (idle) ones. Once per process."""
    if _relaying:
        return
    # Their modules register them on import: first, so that none is registered after this.
    import ledger.outbox.dispatcher
    import ledger.reconcile.background  # noqa: F401

    # prometheus_client offers no public lookup of a registry's collectors by name.
    own = [
        collector
        for collector, names in list(REGISTRY._collector_to_names.items())
        if any(n.startswith(PREFIXES) for n in names)
    ]
    for collector in own:
        REGISTRY.unregister(collector)
    REGISTRY.register(_Relayed(path))
    _relaying.append(path)
