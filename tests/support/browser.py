"""Headless Chromium driven over the DevTools protocol, for the admin page's tests."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import websockets

from tests.support.polling import PATIENCE, until

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class Page:
    """Just enough of the DevTools protocol: evaluate JavaScript, navigate."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.ids = itertools.count(1)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        mid = next(self.ids)
        await self.ws.send(json.dumps({"id": mid, "method": method, "params": params}))
        while True:
            msg = json.loads(await asyncio.wait_for(self.ws.recv(), 10))
            if msg.get("id") == mid:
                assert "error" not in msg, msg
                result: dict[str, Any] = msg["result"]
                return result

    async def js(self, expression: str) -> Any:
        r = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in r, r
        return r["result"].get("value")

    async def until(self, expression: str) -> None:
        """Wait until ``expression`` is true in the page (a guard against a hang, not a
        speed bound)."""
        await until(lambda: self.js(expression), what=expression)


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Page]:
    assert CHROMIUM is not None
    # Chromium's helpers (crashpad, utility processes) may still be writing into the profile
    # for a moment after the browser exits: the whole process group is stopped and waited
    # for, and a file written meanwhile must not fail the test that used the page.
    with tempfile.TemporaryDirectory(
        prefix="ledger-chromium-", ignore_cleanup_errors=True
    ) as profile:
        proc = subprocess.Popen(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--disable-dev-shm-usage",
                f"--user-data-dir={profile}",
                "--remote-debugging-port=0",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own process group: stopped as a whole below
        )
        try:
            assert proc.stderr is not None
            port = None
            deadline = time.monotonic() + PATIENCE  # a guard against a hang
            while port is None:
                assert time.monotonic() < deadline, "chromium did not start"
                line = (await asyncio.to_thread(proc.stderr.readline)).decode()
                m = re.search(r"DevTools listening on ws://127\.0\.0\.1:(\d+)/", line)
                if m:
                    port = int(m.group(1))
            async with httpx.AsyncClient() as http:
                targets = (await http.get(f"http://127.0.0.1:{port}/json/list")).json()
            url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
            async with websockets.connect(url, max_size=None) as ws:
                yield Page(ws)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                await asyncio.to_thread(proc.wait, 10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await asyncio.to_thread(proc.wait, 10)
            if proc.stderr:
                proc.stderr.close()
