"""Operator papercuts (issue 9), each found by following the README as a new user would,
each through the real ``ledger`` command:

- ``serve`` logs every line in one format (JSON with ``LEDGER_LOG_FORMAT=json``), no secrets;
- its banner shows only generated secrets that are in effect, never one the operator set;
- CLI commands are quiet unless ``-v``;
- commands other than ``serve``/``migrate`` never create a ledger of their own: they find
  the server's or fail naming where they looked;
- ``ledger verify`` explains gaps in positions.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import httpx
import pytest

from ledger.ingest.samples import build
from tests.support import SECRETS, signed
from tests.support import test_settings as env_settings
from tests.support.servers import LEDGER, free_port, ledger_env, wait_ready

EXIT_WAIT = 120.0  # generous bounds: a loaded 2-core machine is slow, never a failure
READY_WAIT = 180.0


def ledger(
    env: dict[str, str], *args: str, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [LEDGER, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=180, check=False
    )


def bare_env(**extra: str) -> dict[str, str]:
    """No LEDGER_* at all: a new user's shell."""
    return {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")} | extra


class Serve:
    """``ledger serve`` with stdout and stderr kept apart, stopped with SIGTERM."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.stdout = logs / "serve.stdout"
        self.stderr = logs / "serve.stderr"
        self.proc: subprocess.Popen[bytes] | None = None

    def output(self) -> str:
        return "".join(p.read_text(errors="replace") for p in (self.stdout, self.stderr))

    def lines(self) -> list[str]:
        return [
            line
            for p in (self.stdout, self.stderr)
            for line in p.read_text(errors="replace").splitlines()
            if line.strip()
        ]

    async def stop(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + EXIT_WAIT
        while self.proc.poll() is None:
            assert time.monotonic() < deadline, f"serve did not stop:\n{self.output()[-3000:]}"
            await asyncio.sleep(0.05)


@asynccontextmanager
async def serving(env: dict[str, str], logs: Path, *args: str) -> AsyncIterator[Serve]:
    server = Serve(env, logs)
    with server.stdout.open("wb") as out, server.stderr.open("wb") as err:
        server.proc = subprocess.Popen(
            [LEDGER, "serve", "--port", str(server.port), *args],
            env=env,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
    try:
        await wait_ready(server.proc, server.url, server.output, timeout=READY_WAIT, who="serve")
        yield server
    finally:
        if server.proc.poll() is None:
            os.killpg(server.proc.pid, signal.SIGKILL)
            server.proc.wait(timeout=30)


# -- one log format ------------------------------------------------------------------------


@pytest.mark.parametrize("args", [(), ("--workers", "2")], ids=["one-process", "two-workers"])
async def test_serve_with_json_logs_writes_only_json_lines_and_no_secret(
    database_url: str, tmp_path: Path, args: tuple[str, ...]
) -> None:
    # With --workers, each child process logs too (uvicorn replays the config in it).
    env = ledger_env(database_url, tmp_path / "home", LEDGER_LOG_FORMAT="json")
    async with serving(env, tmp_path, *args) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            d = signed("midtrans", "settlement")
            r = await http.post(d.path, content=d.body, headers=d.headers)
            assert r.status_code == 200, r.text
            forged = build(
                env_settings(LEDGER_MIDTRANS_SERVER_KEY="a-guess"), "midtrans", "settlement"
            )
            r = await http.post(forged.path, content=forged.body, headers=forged.headers)
            assert r.status_code == 401, r.text
        await server.stop()

    lines = server.lines()
    events = []
    for line in lines:
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            raise AssertionError(f"not a JSON log line: {line!r}") from None
        assert isinstance(event, dict), line
        assert {"event", "level", "timestamp"} <= event.keys(), line
        events.append(event)
    names = {e["event"] for e in events}
    assert "listening" in names  # the banner is log lines too
    assert any(e.get("logger", "").startswith("ledger.ingest") for e in events), names
    # Every secret came from the environment: nothing generated, nothing to show.
    assert not any("development secrets" in e["event"] for e in events), names
    text = server.output()
    for value in SECRETS.values():
        assert value not in text


async def test_banner_shows_only_generated_secrets_in_effect(
    database_url: str, tmp_path: Path
) -> None:
    env = ledger_env(database_url, tmp_path / "home")
    del env["LEDGER_XENDIT_TOKEN"], env["LEDGER_MAYAR_TOKEN"]  # these two get generated
    async with serving(env, tmp_path) as server:
        text = server.output()
        shown = dict(
            line.strip().split("=", 1)
            for line in text.splitlines()
            if line.strip().startswith("LEDGER_") and "=" in line
        )
        # Generated and in effect: shown once. Supplied by the operator: never shown.
        assert set(shown) == {"LEDGER_XENDIT_TOKEN", "LEDGER_MAYAR_TOKEN"}, text
        for supplied in ("LEDGER_MIDTRANS_SERVER_KEY", "LEDGER_PARTNER_SECRET"):
            assert supplied not in text
            assert env[supplied] not in text
        assert "LEDGER_PARTNER_SYNC_SECRET" not in text  # no partner sync configured

        # A token copied from the banner is the one the server checks.
        copied = env_settings(LEDGER_XENDIT_TOKEN=shown["LEDGER_XENDIT_TOKEN"])
        d = build(copied, "xendit", "PAID")
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            r = await http.post(d.path, content=d.body, headers=d.headers)
        assert r.status_code == 200, r.text
        await server.stop()


# -- a quiet CLI ---------------------------------------------------------------------------


def test_cli_commands_are_quiet_unless_verbose(database_url: str, tmp_path: Path) -> None:
    env = ledger_env(database_url, tmp_path)
    quiet = ledger(env, "keys", "list")
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout.startswith("key_id\t")
    assert quiet.stderr == ""

    verbose = ledger(env, "-v", "keys", "list")
    assert verbose.returncode == 0, verbose.stderr
    assert verbose.stdout == quiet.stdout
    assert verbose.stderr.strip()  # -v: what it did (here: the development login notice)
    assert "Traceback" not in verbose.stderr


# -- the server's ledger or none -----------------------------------------------------------


def test_commands_run_elsewhere_fail_naming_where_they_looked(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    looked = (elsewhere / ".ledger" / "pgdata").resolve()
    for args in (
        ("keys", "create", "--name", "x", "--scope", "audit:read", "--reason", "e2e test"),
        ("keys", "list"),
        ("verify",),
        ("outbox", "list"),
        ("projections", "status"),
    ):
        proc = ledger(bare_env(), *args, cwd=elsewhere)
        assert proc.returncode != 0, (args, proc.stdout)
        assert proc.stdout == ""
        assert str(looked) in proc.stderr, (args, proc.stderr)
        assert "LEDGER_HOME" in proc.stderr
        assert "LEDGER_DATABASE_URL" in proc.stderr
        assert "Traceback" not in proc.stderr
    assert not (elsewhere / ".ledger").exists()  # no new, empty ledger beside the real one

    empty_home = tmp_path / "not-the-server-home"
    proc = ledger(bare_env(LEDGER_HOME=str(empty_home)), "keys", "list", cwd=elsewhere)
    assert proc.returncode != 0
    assert str((empty_home / "pgdata").resolve()) in proc.stderr
    assert not (empty_home / "pgdata").exists()


def test_trigger_without_the_servers_secrets_fails_naming_where_it_looked(
    tmp_path: Path,
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    proc = ledger(bare_env(), "trigger", "midtrans", "settlement", "--url", url, cwd=tmp_path)
    assert proc.returncode != 0
    assert "LEDGER_MIDTRANS_SERVER_KEY" in proc.stderr
    assert str((tmp_path / ".ledger" / "dev-secrets.json").resolve()) in proc.stderr
    assert "LEDGER_HOME" in proc.stderr
    assert not (tmp_path / ".ledger").exists()  # no freshly generated secrets to sign with


# -- verify explains gaps ------------------------------------------------------------------


async def test_verify_explains_gaps_in_positions(client, database_url: str, tmp_path: Path) -> None:
    env = ledger_env(database_url, tmp_path)
    for event in ("settlement", "pending"):
        d = signed("midtrans", event)
        r = await client.post(d.path, content=d.body, headers=d.headers)
        assert r.status_code == 200, r.text

    contiguous = ledger(env, "verify")
    assert contiguous.returncode == 0, contiguous.stderr
    assert "intact: 2 events, positions 1..2" in contiguous.stdout
    assert "not contiguous" not in contiguous.stdout

    # What a rolled-back append (or a duplicate's skipped insert) leaves: used sequence values.
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "SELECT nextval(pg_get_serial_sequence('stored_events', 'notification_id')) "
            "FROM generate_series(1, 3)"
        )
    finally:
        await conn.close()
    d = signed("midtrans", "settlement")
    r = await client.post(d.path, content=d.body, headers=d.headers)
    assert r.status_code == 200, r.text

    gapped = ledger(env, "verify")
    assert gapped.returncode == 0, gapped.stderr
    assert "intact: 3 events, positions 1..6" in gapped.stdout
    assert "positions are not contiguous: 3 sequence values" in gapped.stdout
    assert "duplicate" in gapped.stdout
    assert "rolled-back" in gapped.stdout
    assert "Nothing in between is missing" in gapped.stdout
