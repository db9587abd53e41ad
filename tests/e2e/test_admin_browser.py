"""The admin page in real headless Chromium, driven over the DevTools protocol: open
``/admin``, enter a key, post a webhook; its row must appear within 2 s, without reload."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.support import SECRETS, make_key, signed, until
from tests.support.browser import CHROMIUM, chromium
from tests.support.providerapis import midtrans_status_body, provider_apis
from tests.support.servers import Partner, serve

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (apt-get install chromium; .ci/run does)"
)


async def test_admin_page_shows_a_webhook_live(database_url):
    key = await make_key(database_url, "ops:admin", "audit:read")
    partner = Partner()
    await partner.start()
    partner.scripts = {"BOOK-DEAD": ["404", "ok"]}
    try:
        async with (
            serve(database_url, LEDGER_PARTNER_SYNC_URL=partner.url) as base,
            chromium() as page,
            httpx.AsyncClient() as http,
        ):
            await page.call("Page.navigate", url=base + "/admin")
            await page.until(
                "document.readyState === 'complete' && !!document.getElementById('key')"
            )
            assert await page.js("document.getElementById('login').hidden") is False
            await page.js(
                f"document.getElementById('key').value = {json.dumps(key)};"
                "document.getElementById('login-form').requestSubmit(); true"
            )
            await page.until("document.getElementById('conn').textContent === 'live'")

            d = signed("midtrans", "settlement", order_id="INV-BROWSER-1", customer="x@example.com")
            r = await http.post(base + d.path, content=d.body, headers=d.headers)
            assert r.status_code == 200
            pos = r.json()["position"]
            await page.until(f"!!document.querySelector('#feed tr[data-position=\"{pos}\"]')")
            row = await page.js(
                f"Array.from(document.querySelector('#feed tr[data-position=\"{pos}\"]').cells)"
                ".map(c => c.textContent)"
            )
            assert row[2:6] == ["midtrans", "settlement", "INV-BROWSER-1", "paid"]
            assert "x@example.com" in row

            # The key is kept: a reload goes straight to the feed, which shows the row again.
            await page.call("Page.reload")
            await page.until(f"!!document.querySelector('#feed tr[data-position=\"{pos}\"]')")
            # Search filters the feed by order id.
            await page.js(
                "const s = document.getElementById('search'); s.value = 'no-such-order';"
                "s.dispatchEvent(new Event('input')); true"
            )
            await page.until(
                f"document.querySelector('#feed tr[data-position=\"{pos}\"]').hidden === true"
            )

            # Search by order id finds its deliveries in the log.
            await page.js(
                "const s1 = document.getElementById('search'); s1.value = 'INV-BROWSER-1';"
                "s1.dispatchEvent(new Event('input')); true"
            )
            await page.until("document.querySelectorAll('#log-results tr').length === 1")
            found = await page.js("document.getElementById('log-results').textContent")
            assert "INV-BROWSER-1" in found
            assert "paid" in found
            # Projection lag is shown (from GET /v1/projections).
            await page.until("!!document.querySelector('#lag tr[data-projection=\"outbox\"]')")

            # A partner sync answered 404 is a dead letter; the operator retries it with a reason.
            d = signed("xendit", "PAID", order_id="BOOK-DEAD")
            assert (
                await http.post(base + d.path, content=d.body, headers=d.headers)
            ).status_code == 200
            await page.js(
                "const s2 = document.getElementById('search'); s2.value = '';"
                "s2.dispatchEvent(new Event('input')); loadDead(); true"
            )

            async def dead_shown() -> bool:
                if await page.js("!!document.querySelector('#dead button')"):
                    return True
                await page.js("loadDead(); true")
                return False

            await until(dead_shown, every=0.2, what="a dead letter shown")
            assert "HTTP 404" in await page.js("document.getElementById('dead').textContent")
            await page.js(
                "window.prompt = () => 'partner created the booking';"
                "document.querySelector('#dead button').click(); true"
            )
            await page.until("document.querySelectorAll('#dead tr').length === 0")

            async def delivered() -> list[dict[str, Any]]:
                r = await http.get(
                    base + "/v1/outbox",
                    params={"state": "delivered"},
                    headers={"authorization": f"Bearer {key}"},
                )
                items: list[dict[str, Any]] = r.json()["items"]
                return items

            items = await until(delivered, what="the retried message delivered")
            assert [m["order_ref"] for m in items] == ["xendit:BOOK-DEAD"]
    finally:
        await partner.stop()
    (seen,) = partner.seen.values()
    assert seen.applied == 1


async def test_admin_page_shows_review_reconciliation_and_a_payments_chart(database_url):
    """Issue 10: the review and reconciliation panels list what the read models hold, and
    the payments-per-minute chart starts from the log's last hour and moves with the stream."""
    key = await make_key(database_url, "ops:admin", "audit:read")
    writer = await make_key(database_url, "orders:write")
    async with (
        provider_apis(SECRETS["LEDGER_MIDTRANS_SERVER_KEY"], "xnd_test") as apis,
        serve(
            database_url,
            LEDGER_MIDTRANS_API_URL=apis.url,
            LEDGER_RECONCILE_INTERVAL="0.2",
            LEDGER_RECONCILE_AFTER="0",
            LEDGER_RECONCILE_RATE="100",
        ) as base,
        chromium() as page,
        httpx.AsyncClient() as http,
    ):
        # Before the page opens: one payment (the chart's backlog), one delivery for review
        # (a package nobody sells), one registered order whose webhook never comes.
        for d in (
            signed("midtrans", "settlement", order_id="INV-CHART-1"),
            signed("mayar", "payment.success", customer="a@example.com", package="diamond"),
        ):
            assert (await http.post(base + d.path, content=d.body, headers=d.headers)).is_success
        apis.midtrans["INV-MISSED-1"] = midtrans_status_body(
            "INV-MISSED-1", "settlement", SECRETS["LEDGER_MIDTRANS_SERVER_KEY"]
        )
        r = await http.put(
            base + "/v1/orders/midtrans/INV-MISSED-1",
            json={"customer": "b@example.com", "amount": "299000.00", "currency": "IDR"},
            headers={"authorization": f"Bearer {writer}"},
        )
        assert r.status_code == 201, r.text

        async def recovered() -> bool:
            r = await http.get(
                base + "/v1/reconciliation?state=missed",
                headers={"authorization": f"Bearer {key}"},
            )
            return bool(r.json()["items"])

        await until(recovered, what="the missed webhook recovered")

        await page.call("Page.navigate", url=base + "/admin")
        await page.until("document.readyState === 'complete' && !!document.getElementById('key')")
        await page.js(
            f"document.getElementById('key').value = {json.dumps(key)};"
            "document.getElementById('login-form').requestSubmit(); true"
        )
        await page.until("document.getElementById('conn').textContent === 'live'")
        # Review: the unknown package, linked to its event.
        await page.until("document.querySelectorAll('#review tr').length >= 1")
        assert "diamond" in await page.js("document.getElementById('review').textContent")
        # Reconciliation: the recovered order, with the ledger's and the provider's status.
        await page.until("!!document.querySelector('#recon tr[data-state=\"missed\"]')")
        row = await page.js(
            "Array.from(document.querySelector('#recon tr[data-state=\"missed\"]').cells)"
            ".map(c => c.textContent)"
        )
        assert row[1:4] == ["midtrans INV-MISSED-1", "missed", "-"]
        assert row[4].startswith("paid")
        # The chart: drawn on a canvas from the backlog (the settlement before the page
        # opened), then one more bar's worth from the stream.
        await page.until("Number(document.getElementById('chart').dataset.total) >= 1")
        before = int(await page.js("document.getElementById('chart').dataset.total"))
        d = signed("midtrans", "settlement", order_id="INV-CHART-2")
        assert (await http.post(base + d.path, content=d.body, headers=d.headers)).is_success
        await page.until(f"Number(document.getElementById('chart').dataset.total) === {before + 1}")
        painted = await page.js(
            "(() => { const c = document.getElementById('chart');"
            " const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
            " let n = 0; for (let i = 3; i < px.length; i += 4) if (px[i]) n++; return n; })()"
        )
        assert painted > 0
