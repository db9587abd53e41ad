"""``ledger reconcile`` against a loopback stand-in of Midtrans' and Xendit's status APIs
(tests.support.providerapis), with the real app folding what it records."""

from __future__ import annotations

import asyncio
import base64
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ledger.domain.events import CHECKED_TOPIC, OPERATOR_ACTION_TOPIC
from tests.support import bearer, make_key, signed, until
from tests.support.db import SECRETS
from tests.support.providerapis import (
    StandIn,
    midtrans_status_body,
    provider_apis,
    xendit_invoice,
)
from tests.support.readmodels import read_log
from tests.support.servers import LEDGER, free_port, ledger_env

MIDTRANS_KEY = SECRETS["LEDGER_MIDTRANS_SERVER_KEY"]
XENDIT_KEY = "xnd_development_test_secret"


@dataclass
class Run:
    code: int
    out: str
    err: str


async def reconcile(
    database_url: str, home: Path, api: str, provider: str, order_id: str, **env: str
) -> Run:
    """The CLI as an operator runs it, as an async subprocess (the stand-in shares this
    event loop and must keep answering)."""
    extra = {
        "LEDGER_MIDTRANS_API_URL": api,
        "LEDGER_XENDIT_API_URL": api,
        "LEDGER_XENDIT_SECRET_KEY": XENDIT_KEY,
    } | env
    proc = await asyncio.create_subprocess_exec(
        LEDGER,
        "reconcile",
        "--provider",
        provider,
        "--order-id",
        order_id,
        "--reason",
        "customer says they paid",
        env=ledger_env(database_url, home, **extra),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), err.decode())


@pytest.fixture
async def apis() -> Any:
    async with provider_apis(MIDTRANS_KEY, XENDIT_KEY) as stand_in:
        yield stand_in


async def post(client: Any, provider: str, event: str, **kw: str) -> int:
    d = signed(provider, event, **kw)
    r = await client.post(d.path, content=d.body, headers=d.headers)
    assert r.status_code == 200, r.text
    position: int = r.json()["position"]
    return position


async def order(client: Any, key: str, provider: str, order_id: str, after: int) -> Any:
    r = await client.get(
        f"/v1/orders/{provider}/{order_id}?min_position={after}", headers=bearer(key)
    )
    assert r.status_code == 200, r.text
    return r.json()


async def checks(database_url: str) -> list[dict[str, Any]]:
    return [json.loads(r.state) for r in await read_log(database_url) if r.topic == CHECKED_TOPIC]


async def test_missed_midtrans_settlement_is_recovered(client, database_url, tmp_path, apis):
    key = await make_key(database_url, "audit:read")
    first = await post(client, "midtrans", "pending", order_id="INV-R1", transaction_id="t1")
    assert (await order(client, key, "midtrans", "INV-R1", first))["status"] == "pending"
    # The settlement webhook never came; the provider's API knows the order is paid.
    apis.midtrans["INV-R1"] = midtrans_status_body("INV-R1", "settlement", MIDTRANS_KEY)

    run = await reconcile(database_url, tmp_path, apis.url, "midtrans", "INV-R1")

    assert run.code == 0, run.err
    assert "ledger    pending" in run.out
    assert "provider  paid (settlement/accept), HTTP 200" in run.out
    assert "applied: the order becomes paid" in run.out
    o = await until(
        lambda: _paid(client, key, "midtrans", "INV-R1"), what="order paid by reconciliation"
    )
    assert [(h["status"], h["source"]) for h in o["history"]] == [
        ("pending", "notification"),
        ("paid", "reconciliation"),
    ]
    # The answer is in the log, raw, with its hash; the run is an operator event.
    [check] = await checks(database_url)
    body = base64.b64decode(check["body_b64"])
    assert json.loads(body)["transaction_status"] == "settlement"
    assert (check["http_status"], check["reading"], check["order_id"]) == (200, "paid", "INV-R1")
    log = await read_log(database_url)
    actions = [json.loads(r.state) for r in log if r.topic == OPERATOR_ACTION_TOPIC]
    assert [(a["action"], a["target"], a["reason"]) for a in actions][-1] == (
        "reconcile",
        "midtrans:INV-R1",
        "customer says they paid",
    )
    assert [s.authorized for s in apis.seen] == [True]
    # Finance's timeline says the fact came from reconciliation, not from a webhook.
    r = await client.get("/v1/audit/orders/midtrans/INV-R1", headers=bearer(key))
    assert r.status_code == 200, r.text
    t = r.json()
    assert t["order_status"] == "paid"
    entries = [(e["category"], e["kind"], e["status"]) for e in t["entries"]]
    assert entries == [("received", "pending", "pending"), ("reconciliation", "paid", "paid")]
    assert t["entries"][-1]["body_sha256"] == check["body_sha256"]


async def _paid(client: Any, key: str, provider: str, order_id: str) -> Any:
    r = await client.get(f"/v1/orders/{provider}/{order_id}", headers=bearer(key))
    return r.json() if r.status_code == 200 and r.json()["status"] == "paid" else None


async def test_missed_xendit_invoice_is_recovered(client, database_url, tmp_path, apis):
    key = await make_key(database_url, "audit:read")
    first = await post(client, "xendit", "PENDING", order_id="BK-R1", amount="45000")
    assert (await order(client, key, "xendit", "BK-R1", first))["status"] == "pending"
    apis.xendit["BK-R1"] = [xendit_invoice("BK-R1", "PAID")]

    run = await reconcile(database_url, tmp_path, apis.url, "xendit", "BK-R1")

    assert run.code == 0, run.err
    assert "provider  paid (PAID), HTTP 200" in run.out
    o = await until(lambda: _paid(client, key, "xendit", "BK-R1"), what="xendit order paid")
    assert o["history"][-1]["source"] == "reconciliation"
    assert o["payment_method"] == "QRIS"


async def assert_not_applied(client: Any, key: str, provider: str, order_id: str) -> None:
    """Nothing from reconciliation in the order: read once the projection has passed a
    notification posted after the check (so the check's event was folded, or not)."""
    kind = "pending" if provider == "midtrans" else "PENDING"
    extra = {"transaction_id": "t-later"} if provider == "midtrans" else {"amount": "45000"}
    later = await post(client, provider, kind, order_id=order_id, **extra)
    o = await order(client, key, provider, order_id, later)
    assert o["status"] == "pending"
    assert {h["source"] for h in o["history"]} == {"notification"}


@pytest.mark.parametrize("provider", ["midtrans", "xendit"])
async def test_wrong_credentials_are_reported_and_nothing_applied(
    client, database_url, tmp_path, apis, provider
):
    key = await make_key(database_url, "audit:read")
    oid = "INV-R2" if provider == "midtrans" else "BK-R2"
    await post(client, provider, "pending" if provider == "midtrans" else "PENDING", order_id=oid)
    apis.midtrans[oid] = midtrans_status_body(oid, "settlement", MIDTRANS_KEY)
    apis.xendit[oid] = [xendit_invoice(oid, "PAID")]

    run = await reconcile(
        database_url,
        tmp_path,
        apis.url,
        provider,
        oid,
        LEDGER_MIDTRANS_SERVER_KEY="SB-Mid-server-wrong",
        LEDGER_XENDIT_SECRET_KEY="xnd_wrong",
    )

    assert run.code == 1, run.out
    assert "the provider refused (HTTP 401), nothing applied" in run.out
    assert "Traceback" not in run.err
    assert "wrong" not in run.out + run.err  # the keys are never shown
    [check] = await checks(database_url)
    assert (check["http_status"], check["reading"]) == (401, "refused")
    assert [s.authorized for s in apis.seen] == [False]  # a 401 is an answer: no retry
    await assert_not_applied(client, key, provider, oid)


async def test_unverified_midtrans_answer_is_recorded_not_applied(
    client, database_url, tmp_path, apis
):
    key = await make_key(database_url, "audit:read")
    await post(client, "midtrans", "pending", order_id="INV-R3", transaction_id="t3")
    apis.midtrans["INV-R3"] = midtrans_status_body(
        "INV-R3", "settlement", MIDTRANS_KEY, forged=True
    )

    run = await reconcile(database_url, tmp_path, apis.url, "midtrans", "INV-R3")

    assert run.code == 1, run.err
    assert "its signature does not verify, nothing applied" in run.out
    [check] = await checks(database_url)
    assert check["reading"] == "unverified"
    assert json.loads(base64.b64decode(check["body_b64"]))["transaction_status"] == "settlement"
    await assert_not_applied(client, key, "midtrans", "INV-R3")
    r = await client.get("/v1/audit/orders/midtrans/INV-R3", headers=bearer(key))
    t = r.json()
    assert t["order_status"] == "pending"
    assert ("reconciliation", "unverified", None) in [
        (e["category"], e["kind"], e["status"]) for e in t["entries"]
    ]


@pytest.mark.parametrize("provider", ["midtrans", "xendit"])
async def test_unknown_order(client, database_url, tmp_path, apis, provider):
    key = await make_key(database_url, "audit:read")

    run = await reconcile(database_url, tmp_path, apis.url, provider, "NOPE-1")

    assert run.code == 0, run.err
    assert "ledger    no notification" in run.out
    assert "the provider knows no such order, nothing applied" in run.out
    [check] = await checks(database_url)
    assert (check["http_status"], check["reading"]) == (200, "unknown_order")
    body = json.loads(base64.b64decode(check["body_b64"]))
    assert body == [] if provider == "xendit" else body["status_code"] == "404"
    r = await client.get(f"/v1/orders/{provider}/NOPE-1", headers=bearer(key))
    assert r.status_code == 404


async def test_429_retry_after_is_honoured(client, database_url, tmp_path, apis):
    apis.midtrans["INV-R4"] = midtrans_status_body("INV-R4", "settlement", MIDTRANS_KEY)
    apis.throttled["INV-R4"] = ["1"]

    run = await reconcile(database_url, tmp_path, apis.url, "midtrans", "INV-R4")

    assert run.code == 0, run.err
    assert "applied: the order becomes paid" in run.out
    first, second = apis.seen
    assert second.at - first.at >= 1.0  # waited as asked, however fast the machine
    assert len(await checks(database_url)) == 1  # the 429 was no answer


async def test_slow_api_means_try_later(client, database_url, tmp_path, apis: StandIn):
    apis.slow.add("INV-R5")

    run = await reconcile(
        database_url,
        tmp_path,
        apis.url,
        "midtrans",
        "INV-R5",
        LEDGER_RECONCILE_TIMEOUT="0.5",
        LEDGER_RECONCILE_ATTEMPTS="2",
    )

    assert run.code == 75, run.out + run.err
    assert "try later: midtrans status API: no answer within 0.5 s after 2 attempt(s)" in run.err
    assert "Traceback" not in run.err
    assert len(apis.seen) == 2
    assert await checks(database_url) == []  # no answer, nothing recorded
    log = await read_log(database_url)
    assert any(r.topic == OPERATOR_ACTION_TOPIC for r in log)  # the attempt is on the trail


async def test_unreachable_api_means_try_later(database_url, tmp_path):
    run = await reconcile(
        database_url,
        tmp_path,
        f"http://127.0.0.1:{free_port()}",
        "xendit",
        "BK-R6",
        LEDGER_RECONCILE_ATTEMPTS="2",
    )

    assert run.code == 75, run.out + run.err
    assert run.err.startswith("try later: xendit status API: ")
    assert "Traceback" not in run.err


async def test_replayed_refund_is_held_then_contradicted_and_listed(
    client, database_url, tmp_path, apis
):
    """Issue 10: a Midtrans signature does not cover ``transaction_status``, so a captured
    settlement replayed as ``refund`` verifies. It is held (ADR 0016); Midtrans' status API
    says settlement, so it is never applied: the order stays paid, the notification is
    marked unconfirmed and listed for review, and the check is judged ``unconfirmed``."""
    key = await make_key(database_url, "audit:read")
    d = signed("midtrans", "settlement", order_id="INV-RR", transaction_id="t-rr")
    r = await client.post(d.path, content=d.body, headers=d.headers)
    assert r.status_code == 200, r.text
    forged = json.loads(d.body) | {"transaction_status": "refund"}
    r = await client.post(d.path, content=json.dumps(forged).encode(), headers=d.headers)
    assert r.status_code == 200, r.text  # it verifies: same order, status code and amount
    replayed = r.json()["position"]
    o = await order(client, key, "midtrans", "INV-RR", replayed)
    assert o["status"] == "paid"
    assert [(h["status"], h["confirmation"]) for h in o["history"]] == [
        ("paid", None),
        ("refunded", "held"),
    ]
    apis.midtrans["INV-RR"] = midtrans_status_body("INV-RR", "settlement", MIDTRANS_KEY)
    run = await reconcile(database_url, tmp_path, apis.url, "midtrans", "INV-RR")
    assert run.code == 0, run.err
    assert "ledger    paid" in run.out
    assert "held      refunded (awaiting the provider's confirmation)" in run.out
    assert "the held refunded notification is contradicted: not applied" in run.out

    async def contradicted() -> Any:
        o = await order(client, key, "midtrans", "INV-RR", replayed)
        return o if o["history"][-1]["source"] == "reconciliation" else None

    o = await until(contradicted, what="the check folded")
    assert o["status"] == "paid"
    assert [(h["status"], h["confirmation"]) for h in o["history"]][1] == (
        "refunded",
        "unconfirmed",
    )
    r = await client.get("/v1/review?reason=unconfirmed", headers=bearer(key))
    assert r.status_code == 200, r.text
    [item] = r.json()["items"]
    assert (item["position"], item["reason"], item["provider"]) == (
        replayed,
        "unconfirmed",
        "midtrans",
    )
    assert "the held refunded notification is not applied" in item["detail"]
    assert item["dedup_key"].startswith("midtrans:INV-RR:t-rr:refund")


async def test_a_genuine_refund_is_confirmed_by_the_api(client, database_url, tmp_path, apis):
    key = await make_key(database_url, "audit:read")
    await post(client, "midtrans", "settlement", order_id="INV-RF", transaction_id="t-rf")
    refund = await post(client, "midtrans", "refund", order_id="INV-RF", transaction_id="t-rf")
    assert (await order(client, key, "midtrans", "INV-RF", refund))["status"] == "paid"
    apis.midtrans["INV-RF"] = midtrans_status_body("INV-RF", "refund", MIDTRANS_KEY)
    run = await reconcile(database_url, tmp_path, apis.url, "midtrans", "INV-RF")
    assert run.code == 0, run.err
    assert "confirmed the held refunded notification" in run.out

    async def refunded() -> Any:
        o = await order(client, key, "midtrans", "INV-RF", refund)
        return o if o["status"] == "refunded" else None

    o = await until(refunded, what="the refund confirmed")
    assert [(h["status"], h["confirmation"], h["source"]) for h in o["history"]] == [
        ("paid", None, "notification"),
        ("refunded", "confirmed", "notification"),
        ("refunded", None, "reconciliation"),
    ]
    r = await client.get("/v1/review?reason=unconfirmed", headers=bearer(key))
    assert r.json()["items"] == []
