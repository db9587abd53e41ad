"""The admin page in real headless Chromium, driven over the DevTools protocol: open
``/admin``, enter a key, post a webhook; its row must appear within 2 s, without reload."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.support import make_key, signed, until
from tests.support.browser import CHROMIUM, chromium
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
