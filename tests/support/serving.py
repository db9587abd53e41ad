"""``python -m ledger serve`` as a subprocess on an embedded PostgreSQL of its own
``LEDGER_HOME`` (the e2e lifecycle tests): started in its own process group, waited for,
signalled and always reaped."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.db import SECRETS
from tests.support.servers import free_port, wait_ready


def serve_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment without the caller's LEDGER_* settings: dev secrets, this home."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
    return env | SECRETS | {"LEDGER_HOME": str(home)} | extra


@dataclass
class Serve:
    """``python -m ledger serve`` in its own process group; ``close`` always reaps it."""

    home: Path
    env: dict[str, str] = field(default_factory=dict)
    args: tuple[str, ...] = ()
    port: int = field(default_factory=free_port)
    name: str = "serve"
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.home.parent / f"{self.name}.log"

    def log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def spawn(self) -> subprocess.Popen[bytes]:
        with self.log.open("ab") as out:
            return subprocess.Popen(
                [sys.executable, "-m", "ledger", "serve", "--port", str(self.port), *self.args],
                env=serve_env(self.home, **self.env),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    async def start(self, timeout: float = 180.0) -> None:
        assert self.proc is None or self.proc.poll() is not None
        self.proc = self.spawn()
        await wait_ready(
            self.proc, self.url, self.log_tail, timeout=timeout, who="serve", probe_timeout=2.0
        )

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 120.0) -> int:
        """Send ``sig`` to the serve process alone (as docker or ``kill`` do); its exit code."""
        assert self.proc is not None
        self.proc.send_signal(sig)
        return await wait_exit(self.proc, timeout, self.log_tail)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)


async def wait_exit(proc: subprocess.Popen[bytes], timeout: float, log: Callable[[], str]) -> int:
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        assert time.monotonic() < deadline, f"did not exit within {timeout}s:\n{log()}"
        await asyncio.sleep(0.05)
    return proc.returncode
