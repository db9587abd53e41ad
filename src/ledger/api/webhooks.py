"""``POST /webhooks/{provider}``: verify, record, then (and only then) acknowledge."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec
from litestar import Controller, HttpMethod, Request, get, post, route
from litestar.di import NamedDependency
from litestar.exceptions import ClientException, InternalServerException
from litestar.exceptions.http_exceptions import RequestEntityTooLarge
from litestar.response import Response

from ledger.api.params import ProviderPath
from ledger.api.problems import problem, responses
from ledger.ingest.providers import Unauthorized
from ledger.ingest.providers.partner import DESCRIPTION
from ledger.ingest.service import Ingest, UnknownProvider

WEBHOOK_BODY_LIMIT = 64 * 1024


class Ack(msgspec.Struct, kw_only=True, omit_defaults=True):
    status: str
    event_id: str
    position: int
    flag: str | None = None


class WebhookController(Controller):
    path = "/webhooks"
    tags = ["webhooks"]
    request_max_body_size = WEBHOOK_BODY_LIMIT

    @post(
        "/{provider:str}",
        status_code=200,
        summary="Receive a provider's webhook",
        responses=responses(400, 401, 404, 413, 503),
    )
    async def receive(
        self,
        request: Request[Any, Any, Any],
        ingest: NamedDependency[Ingest],
        provider: ProviderPath,
    ) -> Ack:
        """Verified on raw bytes, recorded durably, acknowledged after commit.

        200 ``accepted`` or ``duplicate``; 401 bad credentials (nothing recorded); 400
        authenticated but unusable (kept in quarantine); 413 too large; 503 store down.
        """
        return await _receive(request, ingest, provider)

    @post(
        "/partner",
        status_code=200,
        summary="Receive a partner booking update",
        responses=responses(400, 401, 413, 503),
    )
    async def receive_partner(
        self,
        request: Request[Any, Any, Any],
        ingest: NamedDependency[Ingest],
    ) -> Ack:
        """``x-pwa-signature`` = hex HMAC-SHA256 of the raw body (see ``GET``)."""
        return await _receive(request, ingest, "partner")

    @route("/partner", http_method=[HttpMethod.OPTIONS], include_in_schema=False)
    async def allow_partner(self) -> Response[None]:
        """``Allow`` for ``/webhooks/partner``. litestar's automatic OPTIONS answer lists only
        the first handler registered on a path (handlers register in name order), so this
        path, with two, names its methods itself; the name sorts first on purpose."""
        return Response(None, status_code=204, headers={"Allow": "GET, OPTIONS, POST"})

    @get("/partner", summary="Describe the partner endpoint (partner health check)")
    async def describe_partner(self) -> Response[dict[str, Any]]:
        return Response(DESCRIPTION)


def header_map(raw: Iterable[tuple[bytes, bytes]]) -> tuple[dict[str, str], set[str]]:
    """The ASGI header list as a dict (names lowercased, values latin-1 as HTTP allows),
    and the names that came more than once: a dict would silently keep only one of them."""
    headers: dict[str, str] = {}
    repeated: set[str] = set()
    for k, v in raw:
        name = k.decode("latin-1").lower()
        if name in headers:
            repeated.add(name)
        headers[name] = v.decode("latin-1")
    return headers, repeated


async def read_body(request: Request[Any, Any, Any], length: str | None) -> bytes:
    """The whole body, read from ASGI ``receive`` with litestar's rules for
    ``Request.body()``: a ``content-length`` (``length``) over the limit is refused before
    reading (413), an invalid one is a 400, more bytes than the limit are a 413 however they
    are announced, and a client gone mid-body is a 500. Read here rather than through
    ``Request.body()``: its async generator, ``Headers`` and ``content_length`` parsing were
    ~5 % of a webhook's CPU (issue 11); the headers are already in ``header_map``'s dict."""
    if length is not None:
        try:
            announced = int(length)
        except ValueError:
            raise ClientException(f"Invalid content-length: {length!r}") from None
        if announced > WEBHOOK_BODY_LIMIT:
            raise RequestEntityTooLarge
    chunks: list[bytes] = []
    total = 0
    receive = request.receive
    while True:
        event = await receive()
        if event["type"] == "http.request":
            chunk = event["body"]
            if chunk:
                total += len(chunk)
                if total > WEBHOOK_BODY_LIMIT:
                    raise RequestEntityTooLarge
                chunks.append(chunk)
            if not event.get("more_body", False):
                break
        elif event["type"] == "http.disconnect":
            raise InternalServerException("client disconnected prematurely")
    request.is_connected = False
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _receive(request: Request[Any, Any, Any], ingest: Ingest, provider: str) -> Ack:
    """One dependency only (``ingest``, which also counts outcomes in ``ledger.metrics``):
    litestar resolves several in an anyio task group, ~10 % of a webhook's CPU."""
    scope = request.scope
    headers, repeated = header_map(scope["headers"])
    body = await read_body(request, headers.get("content-length"))
    client = scope.get("client")
    source = client[0] if client else None
    try:
        out = await ingest.receive(provider, headers, body, source, repeated=repeated)
    except UnknownProvider:
        raise problem(
            404,
            "unknown-provider",
            "No such webhook provider",
            f"no enabled provider named {provider!r}; enabled: {sorted(ingest.providers)}",
        ) from None
    except Unauthorized as exc:
        raise problem(
            401, "webhook-unauthorized", "The webhook could not be authenticated", str(exc)
        ) from None
    if out.status == "quarantined":
        raise problem(
            400,
            "webhook-unusable",
            "The webhook was authenticated but cannot be used",
            out.fault or "unusable payload",
            event_id=out.event_id,
            position=out.position,
            quarantined=True,
        )
    return Ack(status=out.status, event_id=out.event_id, position=out.position, flag=out.flag)
