"""Effects (e-mail, partner sync, revalidation) from registered orders and reconciliation
(issue 10, ADR 0016 "Effects"), end to end: signed webhooks through the real app, the
outbox projection and dispatcher, a real SMTP sink (aiosmtpd), a loopback partner that
verifies signatures, a loopback revalidation endpoint, and ``ledger reconcile`` against the
loopback stand-in of the providers' status APIs."""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import pytest
from aiosmtpd.controller import Controller
from litestar.testing import AsyncTestClient

from ledger.app import create_app
from ledger.domain.events import CHECKED_TOPIC
from tests.support import bearer, make_key, signed, until
from tests.support.db import SECRETS
from tests.support.db import test_settings as known_settings
from tests.support.providerapis import (
    StandIn,
    midtrans_status_body,
    provider_apis,
    xendit_invoice,
)
from tests.support.readmodels import read_log
from tests.support.servers import LEDGER, Partner, free_port, ledger_env, read_request

MIDTRANS_KEY = SECRETS["LEDGER_MIDTRANS_SERVER_KEY"]
XENDIT_KEY = "xnd_development_test_secret"


class Inbox:
    """aiosmtpd handler: keeps every message it is given."""

    def __init__(self) -> None:
        self.messages: list[tuple[list[str], email.message.EmailMessage]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.messages.append((list(envelope.rcpt_tos), msg))  # type: ignore[arg-type]
        return "250 OK"

    def about(self, order_id: str) -> list[list[str]]:
        """The recipients of every e-mail about ``order_id``."""
        return [rcpt for rcpt, msg in self.messages if order_id in str(msg["Subject"])]


@dataclass
class Revalidations:
    """A loopback revalidation endpoint: the order ids it was asked about."""

    orders: list[str] = field(default_factory=list)
    url: str = ""
    server: asyncio.Server | None = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _, _, body = await read_request(reader)
        order_id = json.loads(body)["order_id"]
        if not order_id.startswith("BARRIER-"):  # World.settle's own orders
            self.orders.append(order_id)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}")
        await writer.drain()
        writer.close()


@dataclass
class World:
    client: Any
    database_url: str
    inbox: Inbox
    pages: Revalidations
    partner: Partner
    apis: StandIn
    home: Any
    barriers: int = 0

    async def register(self, provider: str, order_id: str, **terms: str) -> dict[str, Any]:
        key = await make_key(self.database_url, "orders:write")
        body = {"currency": "IDR", **terms}
        r = await self.client.put(
            f"/v1/orders/{provider}/{order_id}",
            content=json.dumps(body).encode(),
            headers={**bearer(key), "content-type": "application/json"},
        )
        assert r.status_code in (200, 201), r.text
        answer: dict[str, Any] = r.json()
        return answer

    async def post(self, provider: str, event: str, **kw: str) -> int:
        d = signed(provider, event, **kw)
        r = await self.client.post(d.path, content=d.body, headers=d.headers)
        assert r.status_code == 200, r.text
        position: int = r.json()["position"]
        return position

    async def settle(self) -> list[asyncpg.Record]:
        """Every message derived so far, each delivered or dead. A barrier order is paid
        last: the outbox projection folds the log in order, so once the barrier's e-mail
        exists, everything before it has made its messages (right or wrong)."""
        self.barriers += 1
        tag = f"BARRIER-{self.barriers}"
        await self.post(
            "midtrans", "settlement", order_id=tag, customer=f"{tag}@barrier.example.com"
        )
        conn = await asyncpg.connect(self.database_url)
        try:

            async def done() -> list[asyncpg.Record] | None:
                rows = await conn.fetch("SELECT * FROM outbox ORDER BY created_at, kind")
                barrier = any(r["order_ref"] == f"midtrans:{tag}" for r in rows)
                return rows if barrier and all(r["state"] != "pending" for r in rows) else None

            rows = await until(done, what=f"{tag} and everything before it settled")
        finally:
            await conn.close()
        return [r for r in rows if "BARRIER-" not in (r["order_ref"] or "")]

    def partner_bodies(self, booking_id: str) -> list[dict[str, Any]]:
        sent = [json.loads(s.bodies[0]) for s in self.partner.seen.values()]
        return [b for b in sent if b["booking_id"] == booking_id]

    async def reconcile(self, provider: str, order_id: str) -> str:
        """``ledger reconcile --order-id`` as an operator runs it (an async subprocess: the
        stand-in shares this event loop). Its answer goes out through this app's outbox."""
        env = {
            "LEDGER_MIDTRANS_API_URL": self.apis.url,
            "LEDGER_XENDIT_API_URL": self.apis.url,
            "LEDGER_XENDIT_SECRET_KEY": XENDIT_KEY,
        }
        proc = await asyncio.create_subprocess_exec(
            LEDGER,
            "reconcile",
            "--provider",
            provider,
            "--order-id",
            order_id,
            "--reason",
            "customer says they paid",
            env=ledger_env(self.database_url, self.home, **env),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
        assert proc.returncode == 0, err.decode()
        return out.decode()


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, int]]:
    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    yield inbox, port
    controller.stop()


@pytest.fixture
async def world(smtp: tuple[Inbox, int], database_url: str, tmp_path: Any) -> AsyncIterator[World]:
    inbox, port = smtp
    pages = Revalidations()
    pages.server = await asyncio.start_server(pages._handle, "127.0.0.1", 0)
    pages.url = f"http://127.0.0.1:{pages.server.sockets[0].getsockname()[1]}/api/revalidate"
    partner = Partner()
    await partner.start()
    settings = known_settings(
        LEDGER_SMTP_URL=f"smtp://127.0.0.1:{port}",
        LEDGER_REVALIDATE_URL=pages.url,
        LEDGER_PARTNER_SYNC_URL=partner.url,
        LEDGER_OUTBOX_RETRY_SCHEDULE="0.05,0.1,0.2,0.3",
        LEDGER_OUTBOX_TIMEOUT="2",
    )
    try:
        async with (
            provider_apis(MIDTRANS_KEY, XENDIT_KEY) as apis,
            AsyncTestClient(create_app(settings, database_url=database_url)) as client,
        ):
            yield World(client, database_url, inbox, pages, partner, apis, tmp_path)
    finally:
        await partner.stop()
        pages.server.close()
        await pages.server.wait_closed()


async def test_registered_customer_is_emailed_from_a_notification_without_an_address(world):
    await world.register("midtrans", "ORD-M1", customer="Rina@Example.com", amount="299000")
    # Real Midtrans notifications carry no address: the registration gives it.
    await world.post("midtrans", "settlement", order_id="ORD-M1")
    # The registered address wins over one a notification carries.
    await world.register("midtrans", "ORD-M2", customer="owner@example.com", amount="299000")
    await world.post("midtrans", "settlement", order_id="ORD-M2", customer="payer@example.com")
    rows = await world.settle()

    assert world.inbox.about("ORD-M1") == [["rina@example.com"]]
    assert world.inbox.about("ORD-M2") == [["owner@example.com"]]
    assert sorted(world.pages.orders) == ["ORD-M1", "ORD-M2"]
    assert {(r["order_ref"], r["kind"], r["state"]) for r in rows} == {
        (ref, kind, "delivered")
        for ref in ("midtrans:ORD-M1", "midtrans:ORD-M2")
        for kind in ("email", "revalidate")
    }
    assert not world.partner.seen  # Midtrans orders are not partner bookings by default


async def test_a_registration_after_the_payment_sends_the_owed_email_once(world):
    await world.post("midtrans", "settlement", order_id="ORD-L1")
    rows = await world.settle()
    assert world.inbox.about("ORD-L1") == []  # no address anywhere yet
    assert [r["kind"] for r in rows] == ["revalidate"]

    reg = await world.register("midtrans", "ORD-L1", customer="late@example.com", amount="299000")
    again = await world.register("midtrans", "ORD-L1", customer="late@example.com", amount="299000")
    assert again["position"] == reg["position"]  # the same registration, nothing new
    # Another settlement of the same order (a new transaction) is not a first payment.
    await world.post("midtrans", "settlement", order_id="ORD-L1")
    rows = await world.settle()

    assert world.inbox.about("ORD-L1") == [["late@example.com"]]
    mails = [r for r in rows if r["kind"] == "email"]
    assert [(r["customer"], r["source_position"]) for r in mails] == [
        ("late@example.com", reg["position"])
    ]
    assert world.pages.orders == ["ORD-L1"]


async def test_partner_gets_the_registered_booking_id_and_the_amount_rule(world):
    # Paid in full: the registered booking id, LUNAS.
    await world.register(
        "xendit", "ORD-X1", customer="a@example.com", amount="100000", booking_id="BK-77"
    )
    await world.post("xendit", "PAID", order_id="ORD-X1", amount="100000")
    # Short (60000 of the 100000 registered, though the invoice states 60000): DP.
    await world.register(
        "xendit", "ORD-X2", customer="b@example.com", amount="100000", booking_id="BK-78"
    )
    await world.post("xendit", "PAID", order_id="ORD-X2", amount="60000")
    # More than registered: amount_mismatch, no e-mail, no revalidation, no partner sync.
    await world.register(
        "xendit", "ORD-X3", customer="c@example.com", amount="100000", booking_id="BK-79"
    )
    await world.post("xendit", "PAID", order_id="ORD-X3", amount="150000")
    await world.settle()

    [full] = world.partner_bodies("BK-77")
    assert (full["event"], full["status"], full["paid_amount"]) == ("booking.paid", "LUNAS", 100000)
    [short] = world.partner_bodies("BK-78")
    assert (short["event"], short["status"], short["paid_amount"]) == ("booking.paid", "DP", 60000)
    assert world.partner_bodies("ORD-X1") == world.partner_bodies("ORD-X2") == []
    assert world.partner_bodies("BK-79") == world.partner_bodies("ORD-X3") == []
    assert world.partner.bad_signatures == 0
    # A down payment is money received: the customer hears of it (the registered address).
    assert world.inbox.about("ORD-X2") == [["b@example.com"]]
    assert world.inbox.about("ORD-X3") == []
    assert "ORD-X3" not in world.pages.orders
    # The outbox keeps why it withheld the effects, for operators.
    admin = bearer(await make_key(world.database_url, "ops:admin"))
    r = await world.client.get("/v1/projections/outbox", headers=admin)
    schema = f"p_outbox_g{r.json()['live_generation']}"
    conn = await asyncpg.connect(world.database_url)
    try:
        withheld = await conn.fetch(
            f"SELECT order_ref, withheld FROM {schema}.orders WHERE withheld IS NOT NULL"
        )
    finally:
        await conn.close()
    assert [tuple(r) for r in withheld] == [("xendit:ORD-X3", "over")]


async def test_a_mayar_payment_that_credits_nothing_has_no_effects(world):
    await world.post("mayar", "payment.success", customer="ani@example.com", package="platinum")
    rows = await world.settle()
    assert rows == []
    assert [m[0] for m in world.inbox.messages if "barrier" not in str(m[0])] == []
    # A credited one e-mails its customer, and never revalidates shop order pages.
    await world.post("mayar", "payment.success", customer="ani@example.com", package="gold")
    rows = await world.settle()
    assert [(r["kind"], r["customer"]) for r in rows] == [("email", "ani@example.com")]
    assert [m[0] for m in world.inbox.messages if "barrier" not in str(m[0])] == [
        ["ani@example.com"]
    ]
    assert world.pages.orders == []


async def test_missed_midtrans_settlement_recovered_is_emailed_once(world):
    await world.register("midtrans", "INV-RC1", customer="Dewi@Example.com", amount="299000")
    await world.post("midtrans", "pending", order_id="INV-RC1", transaction_id="t1")
    world.apis.midtrans["INV-RC1"] = midtrans_status_body("INV-RC1", "settlement", MIDTRANS_KEY)

    out = await world.reconcile("midtrans", "INV-RC1")
    assert "applied: the order becomes paid" in out
    rows = await world.settle()
    assert world.inbox.about("INV-RC1") == [["dewi@example.com"]]
    assert world.pages.orders == ["INV-RC1"]
    checks = await _positions(world.database_url, CHECKED_TOPIC)
    assert {r["source_position"] for r in rows} == set(checks)  # made by the answer

    # The webhook arrives after all: the order was already paid, nothing goes out again.
    await world.post("midtrans", "settlement", order_id="INV-RC1", transaction_id="t1")
    # Nor for a second check that still says paid.
    await world.reconcile("midtrans", "INV-RC1")
    later = await world.settle()
    assert [r["id"] for r in later] == [r["id"] for r in rows]
    assert world.inbox.about("INV-RC1") == [["dewi@example.com"]]
    assert world.pages.orders == ["INV-RC1"]


async def test_missed_xendit_invoice_recovered_reaches_the_partner_signed(world):
    await world.register(
        "xendit", "BK-RC1", customer="eka@example.com", amount="45000", booking_id="BOOK-RC1"
    )
    await world.post("xendit", "PENDING", order_id="BK-RC1", amount="45000")
    world.apis.xendit["BK-RC1"] = [xendit_invoice("BK-RC1", "PAID")]

    await world.reconcile("xendit", "BK-RC1")
    rows = await world.settle()
    [sent] = world.partner_bodies("BOOK-RC1")
    assert (sent["event"], sent["status"], sent["paid_amount"]) == ("booking.paid", "LUNAS", 45000)
    assert sent["payment_details"]["invoice_id"] == xendit_invoice("BK-RC1", "PAID")["id"]
    assert world.partner.bad_signatures == 0  # the partner verified x-pwa-signature
    assert world.inbox.about("BK-RC1") == [["eka@example.com"]]  # registered, not the payer's
    assert {r["kind"] for r in rows} == {"email", "partner", "revalidate"}

    # The late webhook (same amount) makes nothing new.
    await world.post("xendit", "PAID", order_id="BK-RC1", amount="45000")
    later = await world.settle()
    assert [r["id"] for r in later] == [r["id"] for r in rows]
    assert len(world.partner_bodies("BOOK-RC1")) == 1


async def _positions(database_url: str, topic: str) -> list[int]:
    return [r.position for r in await read_log(database_url) if r.topic == topic]
