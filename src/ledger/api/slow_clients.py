"""Bounds on how long a client may take to send a request (ADR 0012).

uvicorn reads headers and bodies for as long as a client keeps the connection open: a body
trickled at one byte a second (or headers, "slowloris") holds a connection, a task and, at
shutdown, the whole process. Two bounds, both ``LEDGER_REQUEST_READ_TIMEOUT`` seconds:

- the header phase, in the HTTP protocol (:class:`HeaderDeadlineProtocol`): from the
  connection's start, or the end of its previous response, to the end of the headers;
- the body, in ASGI (:class:`BodyReadDeadline`): from the headers to the body's last byte.

Either way the client gets a 408 problem+json and the connection is closed (an idle
connection that never sent a byte is just closed). Nothing is recorded: a webhook is only
read, verified and appended once its whole body is there.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import msgspec
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Receive, ReceiveMessage, Scope, Send
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from ledger.api.problems import problem
from ledger.config import load_settings

SLUG = "request-timeout"
TITLE = "The request was not received in time"


def _detail(seconds: float, part: str) -> str:
    return f"the request {part} did not arrive within {seconds:g} s; nothing was recorded"


class BodyReadDeadline:
    """ASGI middleware: a request's whole body must arrive within ``timeout`` seconds.

    It wraps ``receive``: a read that would end past the deadline raises a 408 problem
    (``Connection: close``) inside the app, which answers it like any other problem. Reads
    after the last body chunk (waiting for ``http.disconnect``, as streams do) are unbounded.
    """

    def __init__(self, app: ASGIApp, timeout: float) -> None:
        self.app = app
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        body_done = False

        async def bounded_receive() -> ReceiveMessage:
            nonlocal body_done
            if body_done or _arrived(receive):
                message = await receive()  # returns without waiting: nothing to bound
            else:
                try:
                    # asyncio.timeout_at: one timer on this task (wait_for would wrap the read
                    # in a new task per call, a measurable cost on every webhook).
                    async with asyncio.timeout_at(deadline):
                        message = await receive()
                except TimeoutError:
                    raise problem(
                        408,
                        SLUG,
                        TITLE,
                        _detail(self.timeout, "body"),
                        headers={"connection": "close"},
                    ) from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        await self.app(scope, bounded_receive, send)


def _arrived(receive: Receive) -> bool:
    """Whether ``receive`` is uvicorn's and has a message waiting (a webhook's whole body
    usually comes in the packet with its headers): then the read returns without waiting and
    needs no timer (``asyncio.timeout_at`` per read was ~2 % of a webhook's CPU, issue 11).
    Any other ``receive`` (another server, a test transport) is bounded as before."""
    event = getattr(getattr(receive, "__self__", None), "message_event", None)
    return isinstance(event, asyncio.Event) and event.is_set()


@functools.cache
def header_timeout() -> float:
    """The bound, from the environment: uvicorn builds the protocol from its class alone
    (and ``--workers`` children import it afresh), so the class cannot be handed a value."""
    return load_settings().request_read_timeout


class HeaderDeadlineProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with a deadline on each request's header phase.

    A timer runs while the connection waits for a request's headers: armed when the
    connection opens and when a response completes, disarmed when the headers are complete.
    If it fires first: a 408 when part of a request came in, then the connection is closed.
    (uvicorn's own keep-alive timer only covers a connection that sends nothing at all.)
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        self._began = False  # a byte of the awaited request has arrived

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._began = True

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()

    def _arm(self) -> None:
        self._disarm()
        self._began = False
        self._header_timer = self.loop.call_later(header_timeout(), self._headers_overdue)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _waiting_for_headers(self) -> bool:
        if self.transport.is_closing() or self.transport.get_protocol() is not self:
            return False  # closed, or handed over (a WebSocket upgrade)
        return self.cycle is None or self.cycle.response_complete

    def _headers_overdue(self) -> None:
        self._header_timer = None
        if not self._waiting_for_headers():
            return
        if self._began:
            self.transport.write(self._timeout_response())
        self.transport.close()

    def _timeout_response(self) -> bytes:
        body = msgspec.json.encode(
            {
                "type": f"/problems/{SLUG}",
                "title": TITLE,
                "status": 408,
                "detail": _detail(header_timeout(), "headers"),
            }
        )
        head = [STATUS_LINE[408]]
        for name, value in self.server_state.default_headers:
            head.extend([name, b": ", value, b"\r\n"])
        head.extend(
            [
                b"content-type: application/problem+json\r\n",
                b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
                b"connection: close\r\n\r\n",
            ]
        )
        return b"".join(head) + body
