"""The log formatter's fast path renders exactly the line structlog's full path renders.

``ledger.logs._Formatter`` renders a plain stdlib record (every webhook's INFO line) without
structlog's processors; each record here is formatted both ways, by the fast path
(``format``) and by ``ProcessorFormatter.format`` on the same formatter, in the console and
the JSON formats, and the two lines must be equal byte for byte, secrets masked alike.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import logs

SECRET = "sk-live-0123456789"


def full_path(fmt: logs._Formatter, record: logging.LogRecord) -> str:
    return structlog.stdlib.ProcessorFormatter.format(fmt, record)


@pytest.fixture(params=logs.FORMATS)
def formatter(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> logs._Formatter:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)  # plain console: no colors
    monkeypatch.setattr(logs, "_masked", {SECRET, "hunter2-again"})
    fmt = logs.formatter(request.param)
    assert isinstance(fmt, logs._Formatter)
    assert fmt._fast == request.param
    return fmt


def record(
    msg: object,
    args: Any = (),
    *,
    level: int = logging.INFO,
    name: str = "ledger.ingest.service",
    extra: dict[str, Any] | None = None,
    exc_info: Any = None,
    stack_info: str | None = None,
) -> logging.LogRecord:
    rec = logging.getLogger(name).makeRecord(
        name, level, "f.py", 1, msg, args, exc_info, func=None, extra=extra, sinfo=stack_info
    )
    rec.created = 1_764_287_400.1234  # a fixed time: both paths read the record's
    return rec


def same_line(fmt: logs._Formatter, rec: logging.LogRecord) -> str:
    fast = fmt.format(rec)
    assert fast == full_path(fmt, rec)
    return fast


def test_the_webhook_line(formatter: logs._Formatter) -> None:
    rec = record(
        "webhook provider=%s dedup_key=%s outcome=%s position=%d%s",
        ("midtrans", "midtrans:order-1:settlement", "accepted", 42, ""),
    )
    line = same_line(formatter, rec)
    assert "dedup_key=midtrans:order-1:settlement" in line
    assert "2025-11-27T23:50:00.123Z" in line


@pytest.mark.parametrize(
    "extra",
    [
        {"attempt": 3},
        {"url": "https://example.test/a b", "status": None, "zeta": "plain", "alpha": 1.5},
        {"detail": {"nested": ["x", 2]}, "quote": "it's", "eq": "a=b", "tab": "a\tb"},
        {"message": "set by an earlier handler", "asctime": "then"},
    ],
)
def test_extras(formatter: logs._Formatter, extra: dict[str, Any]) -> None:
    rec = record("delivered %s", ("x",), level=logging.WARNING, name="ledger.outbox")
    rec.__dict__.update(extra)  # "message"/"asctime" cannot be passed as extra=
    same_line(formatter, rec)


def test_secrets_are_masked_alike(formatter: logs._Formatter) -> None:
    rec = record(
        "login with %s failed",
        (SECRET,),
        level=logging.ERROR,
        extra={"token": f"Bearer {SECRET}", "other": "hunter2-again!"},
    )
    line = same_line(formatter, rec)
    assert SECRET not in line
    assert "hunter2-again" not in line
    assert logs.MASK in line


@pytest.mark.parametrize("level", [logging.DEBUG, logging.CRITICAL, 5, 25])
def test_levels(formatter: logs._Formatter, level: int) -> None:
    same_line(formatter, record("level %d", (level,), level=level, name="uvicorn.error"))


def test_not_a_string_message(formatter: logs._Formatter) -> None:
    same_line(formatter, record(ValueError("boom it's"), name="asyncio"))


def test_reserved_extras_take_the_full_path(formatter: logs._Formatter) -> None:
    same_line(formatter, record("x", extra={"event": "shadowed", "logger_name": "n"}))


def test_exc_info_takes_the_full_path(formatter: logs._Formatter) -> None:
    try:
        raise RuntimeError(f"key {SECRET} rejected")
    except RuntimeError:
        rec = record("append failed", exc_info=sys.exc_info(), name="ledger.store.eventstore")
    line = same_line(formatter, rec)
    assert "RuntimeError" in line
    assert SECRET not in line


def test_stack_info_takes_the_full_path(formatter: logs._Formatter) -> None:
    same_line(formatter, record("here", stack_info="Stack (most recent call last):\n  x"))


def test_a_structlog_logger_takes_the_full_path(
    formatter: logs._Formatter, capsys: pytest.CaptureFixture[str]
) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    std = logging.getLogger("ledger.test.structlog")
    std.addHandler(handler)
    std.setLevel(logging.INFO)
    std.propagate = False
    try:
        structlog.get_logger("ledger.test.structlog").info("hello", token=SECRET, n=1)
    finally:
        std.removeHandler(handler)
    err = capsys.readouterr().err
    assert "hello" in err
    assert SECRET not in err


names = st.from_regex(r"[a-z][a-z0-9_]{0,12}", fullmatch=True).filter(
    lambda k: k not in logs._RESERVED and k not in logs._RECORD_KEYS
)
values = st.one_of(
    st.text(max_size=20),
    st.integers(),
    st.none(),
    st.floats(allow_nan=False),
    st.sampled_from([SECRET, f"a {SECRET} b", "x=y"]),
)


@settings(max_examples=200, deadline=None)
@given(
    msg=st.text(max_size=60),
    extra=st.dictionaries(names, values, max_size=4),
    name=st.text(min_size=1, max_size=20),
    level=st.sampled_from([logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR]),
)
def test_any_plain_record(msg: str, extra: dict[str, Any], name: str, level: int) -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(logs, "_masked", {SECRET})
        for fmt_name in logs.FORMATS:
            mp.setattr(sys.stderr, "isatty", lambda: False)
            fmt = logs.formatter(fmt_name)
            rec = logging.LogRecord(name, level, "f.py", 1, msg, (), None)
            rec.__dict__.update(extra)
            same_line(fmt, rec)
