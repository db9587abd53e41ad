"""``ledger serve``'s background process rule and supervisor (ADR 0030), without a database:
the supervised command here is a tiny Python program."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

from ledger.cli.lifecycle import BackgroundProcess, auto_background


@pytest.mark.parametrize(("cpus", "mode"), [(1, "inline"), (2, "process"), (16, "process")])
def test_auto_background_is_a_process_from_two_cpus(cpus: int, mode: str) -> None:
    assert auto_background(cpus) == mode


# Reads the URL line from the descriptor after --parent-pipe, echoes it to the file named
# first, then exits with the status named second.
CHILD = """
import os, sys
fd = int(sys.argv[sys.argv.index("--parent-pipe") + 1])
line = b""
while not line.endswith(b"\\n"):
    line += os.read(fd, 1)
open(sys.argv[1], "ab").write(line)
sys.exit(int(sys.argv[2]))
"""


class Recorded(BackgroundProcess):
    """``give_up`` records instead of signalling the test process."""

    gave_up: threading.Event

    def give_up(self) -> None:
        self.gave_up.set()


def test_a_child_that_keeps_dying_is_restarted_then_given_up(tmp_path: Path) -> None:
    out = tmp_path / "urls"
    bg = Recorded(
        "postgresql://u:secret@h/db",
        command=[sys.executable, "-c", CHILD, str(out), "3"],
        backoff=(0, 0),
    )
    bg.gave_up = threading.Event()
    bg.start()
    assert bg.gave_up.wait(60), "the supervisor never gave up"
    bg.stop()
    # Started three times (the first, then once per backoff step), each given the URL on
    # its pipe; then serve is told to stop, with the reason (no URL in it).
    assert bg.starts == 3
    assert out.read_bytes().splitlines() == [b"postgresql://u:secret@h/db"] * 3
    assert bg.failed is not None
    assert "exited with status 3" in bg.failed
    assert "secret" not in bg.failed


def test_stop_ends_a_running_child_and_starts_no_other(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    # Signals readiness, then waits for SIGTERM (default disposition: it ends the process).
    wait = f"import pathlib, time\npathlib.Path({str(ready)!r}).touch()\ntime.sleep(600)"
    bg = BackgroundProcess("postgresql://h/db", command=[sys.executable, "-c", wait])
    bg.start()
    pause = threading.Event()  # never set: a bounded pause between looks
    for _ in range(6000):
        if ready.exists():
            break
        pause.wait(0.01)
    assert ready.exists()
    bg.stop()
    assert bg.starts == 1
    assert bg.failed is None


@pytest.mark.parametrize(
    ("background", "cpus", "env", "apart", "logged"),
    [
        ("auto", 2, {}, True, "their own process (--background auto: 2 usable CPUs)"),
        ("auto", 1, {}, False, "the server process(es) (--background auto: 1 usable CPU)"),
        ("inline", 8, {}, False, "the server process(es) (--background inline)"),
        ("process", 1, {}, True, "their own process (--background process)"),
        (
            "process",
            8,
            {"LEDGER_RUN_PROJECTIONS": "false", "LEDGER_RUN_OUTBOX": "false"},
            False,
            "LEDGER_RUN_OUTBOX are off",
        ),
    ],
)
def test_serve_decides_where_the_background_runs_and_says_why(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    background: str,
    cpus: int,
    env: dict[str, str],
    apart: bool,
    logged: str,
) -> None:
    import logging

    from ledger.cli import _background_apart
    from tests.support import test_settings

    monkeypatch.setattr("ledger.cli.lifecycle.usable_cpus", lambda: cpus)
    log = logging.getLogger("ledger.serve")
    with caplog.at_level(logging.INFO, logger="ledger.serve"):
        assert _background_apart(test_settings(**env), background, log) is apart
    assert logged in caplog.text
