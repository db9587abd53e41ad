"""A loopback stand-in of Midtrans' status API and Xendit's invoices API.

Written from the documented shapes (shared/reference/providers.md; Midtrans "Get Status",
Xendit "Get invoices"): HTTP Basic auth with the key as user and an empty password; Midtrans
answers an unknown order with HTTP 200 and a body whose ``status_code`` is "404"; Xendit
answers a JSON array (empty when no invoice has the external id). Tests script it: answers
per order, orders that never answer (slow), and 429s with ``Retry-After`` queued before an
answer. Every request is recorded with its arrival time.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from ledger.ingest.providers.midtrans import signature


@dataclass
class Seen:
    at: float  # time.monotonic() when the request arrived
    path: str
    query: str
    authorized: bool


@dataclass
class StandIn:
    midtrans_key: str
    xendit_key: str
    midtrans: dict[str, dict[str, Any]] = field(default_factory=dict)
    xendit: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    slow: set[str] = field(default_factory=set)
    throttled: dict[str, list[str]] = field(default_factory=dict)  # order -> Retry-After values
    seen: list[Seen] = field(default_factory=list)
    url: str = ""

    def _authorized(self, request: web.Request, key: str) -> bool:
        expected = "Basic " + base64.b64encode(f"{key}:".encode()).decode()
        return request.headers.get("Authorization") == expected

    async def _gate(self, request: web.Request, key: str, order_id: str) -> web.Response | None:
        ok = self._authorized(request, key)
        self.seen.append(Seen(time.monotonic(), request.path, request.query_string, ok))
        if order_id in self.slow:
            await asyncio.Event().wait()  # never answers; cancelled when the server stops
        queued = self.throttled.get(order_id)
        if queued:
            return web.json_response(
                {"status_code": "429", "status_message": "Too many requests"},
                status=429,
                headers={"Retry-After": queued.pop(0)},
            )
        return None

    async def midtrans_status(self, request: web.Request) -> web.Response:
        order_id = request.match_info["order_id"]
        if (early := await self._gate(request, self.midtrans_key, order_id)) is not None:
            return early
        if not self._authorized(request, self.midtrans_key):
            return web.json_response(
                {
                    "status_code": "401",
                    "status_message": "Unknown Merchant server_key/id",
                    "id": str(uuid.uuid4()),
                },
                status=401,
            )
        body = self.midtrans.get(order_id) or {
            "status_code": "404",
            "status_message": "Transaction doesn't exist.",
            "id": str(uuid.uuid4()),
        }
        return web.json_response(body)

    async def xendit_invoices(self, request: web.Request) -> web.Response:
        external_id = request.query.get("external_id", "")
        if (early := await self._gate(request, self.xendit_key, external_id)) is not None:
            return early
        if not self._authorized(request, self.xendit_key):
            return web.json_response(
                {"error_code": "INVALID_API_KEY", "message": "API key is invalid"}, status=401
            )
        return web.json_response(self.xendit.get(external_id, []))


def midtrans_status_body(
    order_id: str,
    transaction_status: str,
    key: str,
    *,
    gross_amount: str = "299000.00",
    status_code: str = "200",
    forged: bool = False,
) -> dict[str, Any]:
    """A Get Status answer: the notification's fields, signed like a notification
    (``forged``: signed with another key)."""
    signed_with = "not-the-server-key" if forged else key
    return {
        "status_code": status_code,
        "status_message": "Success, transaction is found",
        "transaction_id": str(uuid.uuid5(uuid.NAMESPACE_URL, order_id)),
        "order_id": order_id,
        "gross_amount": gross_amount,
        "currency": "IDR",
        "payment_type": "bank_transfer",
        "transaction_time": "2026-11-27 10:00:00",
        "transaction_status": transaction_status,
        "fraud_status": "accept",
        "settlement_time": "2026-11-27 10:01:00",
        "merchant_id": "G000000000",
        "signature_key": signature(order_id, status_code, gross_amount, signed_with),
    }


def xendit_invoice(external_id: str, status: str, amount: int = 45000) -> dict[str, Any]:
    """One invoice as ``GET /v2/invoices`` lists it."""
    inv: dict[str, Any] = {
        "id": "inv-" + uuid.uuid5(uuid.NAMESPACE_URL, external_id).hex[:20],
        "external_id": external_id,
        "user_id": "5f0000000000000000000001",
        "status": status,
        "merchant_name": "Test Merchant",
        "merchant_profile_picture_url": "https://example.invalid/logo.png",
        "amount": amount,
        "payer_email": "payer@example.com",
        "description": "booking",
        "invoice_url": "https://checkout.xendit.co/web/x",
        "expiry_date": "2026-11-28T10:00:00.000Z",
        "currency": "IDR",
        "created": "2026-11-27T10:00:00.000Z",
        "updated": "2026-11-27T10:01:00.000Z",
    }
    if status in ("PAID", "SETTLED"):
        inv |= {
            "paid_amount": amount,
            "paid_at": "2026-11-27T10:01:00.000Z",
            "payment_method": "QR_CODE",
            "payment_channel": "QRIS",
        }
    return inv


@contextlib.asynccontextmanager
async def provider_apis(midtrans_key: str, xendit_key: str) -> AsyncIterator[StandIn]:
    """Both APIs on one loopback port, in this event loop (run the CLI as an async
    subprocess so the loop keeps answering)."""
    stand_in = StandIn(midtrans_key, xendit_key)
    app = web.Application()
    app.router.add_get("/v2/invoices", stand_in.xendit_invoices)
    app.router.add_get("/v2/{order_id}/status", stand_in.midtrans_status)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    stand_in.url = f"http://127.0.0.1:{port}"
    try:
        yield stand_in
    finally:
        await runner.cleanup()
