"""Customer email on the first transition to paid, through a real SMTP server (aiosmtpd on
127.0.0.1), and the cache-revalidation call to a real loopback HTTP server."""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import socket
from collections.abc import Iterator

import asyncpg
import pytest
from aiosmtpd.controller import Controller
from litestar.testing import AsyncTestClient

from ledger.app import create_app
from tests import support
from tests.support import signed, until


class Inbox:
    """aiosmtpd handler: keeps every message it is given."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 OK"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, int]]:
    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    yield inbox, port
    controller.stop()


async def settled(url: str, n: int) -> list[asyncpg.Record]:
    """At least ``n`` outbox messages, none of them pending (ordered by order, then kind)."""
    conn = await asyncpg.connect(url)
    try:

        async def done() -> list[asyncpg.Record] | None:
            rows = await conn.fetch("SELECT * FROM outbox ORDER BY order_ref, kind")
            return rows if len(rows) >= n and all(r["state"] != "pending" for r in rows) else None

        return await until(done, what=f"{n} outbox messages settled")
    finally:
        await conn.close()


async def test_paid_order_emails_the_customer_once_and_revalidates(smtp, database_url):
    inbox, port = smtp
    hits: list[tuple[dict[str, str], bytes]] = []

    async def revalidate(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        headers = {
            k.strip().lower(): v.strip()
            for k, _, v in (x.partition(":") for x in head.decode().split("\r\n")[1:] if x)
        }
        hits.append((headers, await reader.readexactly(int(headers["content-length"]))))
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(revalidate, "127.0.0.1", 0)
    rport = server.sockets[0].getsockname()[1]
    settings = support.test_settings(
        LEDGER_SMTP_URL=f"smtp://127.0.0.1:{port}",
        LEDGER_SMTP_FROM="Toko Contoh <billing@toko.example>",
        LEDGER_REVALIDATE_URL=f"http://127.0.0.1:{rport}/api/revalidate",
    )
    app = create_app(settings, database_url=database_url)
    try:
        async with AsyncTestClient(app) as client:
            for status in ("pending", "settlement", "settlement"):
                # The second settlement is a different notification for the same order
                # (a new transaction id): paid again is not a *first* transition.
                d = signed(
                    "midtrans", status, order_id="ZVR-20260122-ABC123", customer="Siti@Example.com"
                )
                assert (
                    await client.post(d.path, content=d.body, headers=d.headers)
                ).status_code == 200
            # Nothing else may follow: a later order's messages are derived after anything
            # the three deliveries above could have made, so once they have settled, every
            # message of ZVR-20260122-ABC123 (right or wrong) is in the table, settled too.
            later = signed("midtrans", "settlement", order_id="ZVR-LATER", customer="b@x.io")
            r = await client.post(later.path, content=later.body, headers=later.headers)
            assert r.status_code == 200
            every = await settled(database_url, 4)
            assert sorted(r["kind"] for r in every if "ZVR-LATER" in (r["order_ref"] or "")) == [
                "email",
                "revalidate",
            ]
            rows = [r for r in every if "ZVR-LATER" not in (r["order_ref"] or "")]
    finally:
        server.close()
        await server.wait_closed()

    assert [(r["kind"], r["state"]) for r in rows] == [
        ("email", "delivered"),
        ("revalidate", "delivered"),
    ]
    assert [m[1] for m in inbox.messages if m[1] != ["b@x.io"]] == [["siti@example.com"]]
    mail_from, rcpt, raw = next(m for m in inbox.messages if m[1] != ["b@x.io"])
    assert mail_from == "billing@toko.example"
    assert rcpt == ["siti@example.com"]
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg["To"] == "siti@example.com"
    assert "ZVR-20260122-ABC123" in msg["Subject"]
    email_id = str(next(r["id"] for r in rows if r["kind"] == "email"))
    assert msg["Message-ID"] == f"<{email_id}@ledger>"
    plain = msg.get_body(preferencelist=("plain",)).get_content()
    page = msg.get_body(preferencelist=("html",)).get_content()
    for part in (plain, page):
        assert "ZVR-20260122-ABC123" in part
        assert "IDR 299000.00" in part
    assert "<table>" in page
    assert "bank_transfer" in plain

    hits = [h for h in hits if b"ZVR-LATER" not in h[1]]
    assert len(hits) == 1
    headers, body = hits[0]
    revalidate_id = str(next(r["id"] for r in rows if r["kind"] == "revalidate"))
    assert headers["idempotency-key"] == revalidate_id
    assert json.loads(body) == {
        "event": "order.paid",
        "order_id": "ZVR-20260122-ABC123",
        "paths": [
            "/orders/ZVR-20260122-ABC123",
            "/orders",
            "/dashboard/pesanan",
            "/dashboard/pesanan/detail-pesanan/ZVR-20260122-ABC123",
        ],
    }


async def test_smtp_down_is_retried_then_delivered(database_url):
    """Nobody listens at first (connection refused: retry); the server comes up; delivered."""
    port = free_port()
    settings = support.test_settings(
        LEDGER_SMTP_URL=f"smtp://127.0.0.1:{port}",
        LEDGER_OUTBOX_RETRY_SCHEDULE="0.3,0.3,0.3,0.3,0.3,0.3,0.3,0.3",
        LEDGER_OUTBOX_TIMEOUT="1",
    )
    app = create_app(settings, database_url=database_url)
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    async with AsyncTestClient(app) as client:
        # A package the catalogue knows: a Mayar payment that credits nothing e-mails nobody.
        d = signed("mayar", "payment.success", customer="ani@example.com", package="gold")
        assert (await client.post(d.path, content=d.body, headers=d.headers)).status_code == 200
        conn = await asyncpg.connect(database_url)
        try:
            await until(
                lambda: conn.fetchval("SELECT count(*) FROM outbox_attempts"),
                what="a first (failed) attempt",
            )
            controller.start()
            try:
                rows = await settled(database_url, 1)
            finally:
                controller.stop()
            first = await conn.fetchrow("SELECT * FROM outbox_attempts ORDER BY id LIMIT 1")
        finally:
            await conn.close()
    assert rows[0]["state"] == "delivered"
    assert rows[0]["attempts"] >= 2
    assert first["outcome"] == "retry"
    assert first["status"] is None
    assert [m[1] for m in inbox.messages] == [["ani@example.com"]]
