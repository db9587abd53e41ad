"""Audit routes name a customer with the service's one rule (``ledger.payments.customers``):
the key ingest and the read models use, and a 400 for text that is no address."""

from __future__ import annotations

from urllib.parse import quote

import pytest

from ledger.config import Settings
from tests.support import signed
from tests.support import test_settings as make_settings

# U+1E9E (capital sharp s): casefold gives "ss", str.lower() gives U+00DF.
SHARP = "\u1e9eudi@Example.com"
KEY = "ssudi@example.com"


@pytest.fixture
def settings() -> Settings:
    # Audit reads the log itself: no projection runner or outbox competing for the CPU.
    return make_settings(LEDGER_RUN_PROJECTIONS="false", LEDGER_RUN_OUTBOX="false")


async def test_a_customer_is_found_by_any_spelling_of_its_address(client, reader):
    d = signed("mayar", "payment.success", customer=SHARP, package="silver")
    r = await client.post(d.path, content=d.body, headers=d.headers)
    assert r.status_code == 200, r.text
    position = r.json()["position"]

    for spelling in (SHARP, KEY, "SSUDI@EXAMPLE.COM"):
        r = await client.get(f"/v1/audit/customers/{quote(spelling)}", headers=reader)
        assert r.status_code == 200, r.text
        assert [e["position"] for e in r.json()["entries"]] == [position], spelling
        assert {e["customer"] for e in r.json()["entries"]} == {KEY}

        r = await client.get("/v1/audit/events", params={"customer": spelling}, headers=reader)
        assert r.status_code == 200, r.text
        assert [e["position"] for e in r.json()["items"]] == [position], spelling

        r = await client.get(f"/v1/audit/customers/{quote(spelling)}/balance", headers=reader)
        assert r.status_code == 200, r.text
        assert (r.json()["customer"], r.json()["credited"]) == (KEY, 5), spelling


@pytest.mark.parametrize("path", ["", "/balance", "/subscriptions"])
async def test_a_customer_that_is_no_address_is_a_problem(client, reader, path):
    lookalike = quote("budi@ex\u0430mple.com")  # Cyrillic a: never budi@example.com
    for who in ("not-an-address", lookalike):
        r = await client.get(f"/v1/audit/customers/{who}{path}", headers=reader)
        assert r.status_code == 400, r.text
        assert r.headers["content-type"].startswith("application/problem+json")
        assert r.json()["type"].endswith("invalid-customer")


async def test_searching_by_text_that_is_no_address_finds_nothing(client, reader):
    d = signed("mayar", "payment.success", customer="budi@example.com")
    assert (await client.post(d.path, content=d.body, headers=d.headers)).status_code == 200
    for who in ("not-an-address", "budi@ex\u0430mple.com", "  "):
        r = await client.get("/v1/audit/events", params={"customer": who}, headers=reader)
        assert r.status_code == 200, r.text
        assert r.json()["items"] == [], who
