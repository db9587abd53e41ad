"""Hostile and out-of-range parameters answer 400 problem+json naming the parameter, never 500.

Positions are PostgreSQL ``bigint`` (at most 2^63 - 1); times must stay inside the calendar
once their offset is applied; NUL, other control characters and unpaired surrogates cannot
be stored or compared, so they are refused at the edge on every route.
"""

from __future__ import annotations

import pytest

from ledger.config import Settings
from tests.support import bearer, make_key, signed
from tests.support import test_settings as make_settings

BIG = str(2**63)
HUGE = "9" * 40
CUSTOMER = "a%40example.com"

# (path and query, the parameter the answer must name)
OUT_OF_RANGE = [
    (f"/v1/events?after={BIG}", "after"),
    ("/v1/events?after=-1", "after"),
    ("/v1/events?limit=-5", "limit"),
    (f"/v1/events?limit={HUGE}", "limit"),
    (f"/v1/audit/events?after={BIG}", "after"),
    (f"/v1/audit/events?limit={BIG}", "limit"),
    (f"/v1/audit/orders/midtrans/X-1?after={BIG}", "after"),
    (f"/v1/audit/orders/midtrans/X-1?at_position={BIG}", "at_position"),
    (f"/v1/audit/customers/{CUSTOMER}?at_position={BIG}", "at_position"),
    (f"/v1/audit/customers/{CUSTOMER}?after={BIG}", "after"),
    (f"/v1/audit/customers/{CUSTOMER}/balance?at_position={BIG}", "at_position"),
    (f"/v1/audit/customers/{CUSTOMER}/subscriptions?at_position={BIG}", "at_position"),
    (f"/v1/review?after={BIG}", "after"),
    (f"/v1/review?min_position={BIG}", "min_position"),
    (f"/v1/accounts/{CUSTOMER}?min_position={BIG}", "min_position"),
    (f"/v1/accounts/{CUSTOMER}?min_position=-1", "min_position"),
    (f"/v1/orders/midtrans/X-1?min_position={BIG}", "min_position"),
    (f"/v1/subscriptions/{CUSTOMER}?min_position={BIG}", "min_position"),
    (f"/v1/stream?after={BIG}", "after"),
    (f"/v1/outbox?limit={HUGE}", "limit"),
    # Calendar edges: the offset pushes the instant out of the representable range.
    (
        f"/v1/audit/customers/{CUSTOMER}/balance?as_of=9999-12-31T23:59:59-23:59",
        "as_of",
    ),
    (
        f"/v1/audit/customers/{CUSTOMER}/balance?as_of=0001-01-01T00:00:00%2B23:59",
        "as_of",
    ),
    (
        f"/v1/audit/customers/{CUSTOMER}/subscriptions?as_of=9999-12-31T23:59:59-23:59",
        "as_of",
    ),
    ("/v1/audit/orders/midtrans/X-1?as_of=0001-01-01T00:00:00%2B23:59", "as_of"),
    (f"/v1/audit/customers/{CUSTOMER}?as_of=9999-12-31T23:59:59-23:59", "as_of"),
    ("/v1/audit/events?from=0001-01-01T00:00:00%2B23:59", "from"),
    ("/v1/audit/events?to=9999-12-31T23:59:59-23:59", "to"),
    ("/v1/audit/export?from=0001-01-01T00:00:00%2B23:59", "from"),
    ("/v1/audit/export?to=9999-12-31T23:59:59-23:59", "to"),
    ("/v1/audit/summary?date=9999-12-31&tz=Pacific/Kiritimati", "date"),
    ("/v1/audit/summary?date=0001-01-01&tz=Asia/Tokyo", "date"),
    ("/v1/audit/summary?date=9999-12-31&tz=Etc/GMT%2B12", "date"),
    (f"/v1/audit/summary?date=2026-01-01&tz={'A' * 5000}", "tz"),
    # Path parameters are bounded too.
    (f"/v1/accounts/{'a' * 400}%40example.com", "customer"),
    (f"/v1/orders/midtrans/{'X' * 300}", "order_id"),
    (f"/v1/audit/orders/{'p' * 40}/X-1", "provider"),
    (f"/v1/events/{'0' * 65}", "event_id"),
]

# Characters PostgreSQL text cannot hold (NUL), control characters and unpaired surrogates
# (as UTF-8 bytes: invalid UTF-8), in query and path parameters.
UNSTORABLE = [
    "/v1/audit/events?customer=a%00b",
    "/v1/audit/events?order_id=%00",
    "/v1/audit/events?provider=mid%00trans",
    "/v1/audit/events?type=%01x",
    "/v1/audit/events?customer=%ED%A0%80",
    "/v1/audit/orders/midtrans/X%00Y",
    "/v1/audit/orders/mid%00trans/X",
    "/v1/audit/customers/a%00b%40example.com",
    "/v1/audit/customers/a%00b%40example.com/balance",
    "/v1/audit/customers/a%00b%40example.com/subscriptions",
    "/v1/audit/customers/%ED%A0%80/balance",
    "/v1/audit/summary?date=2026-01-01&tz=UTC%00",
    "/v1/orders/midtrans/X%00Y",
    "/v1/orders/midtrans/%ED%B0%80",
    "/v1/accounts/a%00b%40example.com",
    "/v1/subscriptions/a%00b%40example.com",
    "/v1/review?reason=x%00",
    "/v1/outbox?q=%00",
    "/v1/outbox?q=a%1Fb",
    "/v1/outbox/%00",
    "/v1/events/%00",
    "/v1/projections/x%00",
    "/v1/stream?access_token=%00",
]


@pytest.fixture
def settings() -> Settings:
    return make_settings(LEDGER_RUN_OUTBOX="false")


@pytest.fixture
async def keys(database_url: str) -> dict[str, str]:
    return bearer(await make_key(database_url, "audit:read", "ops:admin", "tokens:write"))


def assert_bad_request(r, name: str | None = None) -> None:  # type: ignore[no-untyped-def]
    assert r.status_code == 400, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/problem+json"), r.headers
    if name is not None:
        assert name in r.text, r.text


@pytest.mark.parametrize(("url", "name"), OUT_OF_RANGE)
async def test_out_of_range_parameters_are_400_naming_the_parameter(client, keys, url, name):
    r = await client.get(url, headers=keys)
    assert_bad_request(r, name)


@pytest.mark.parametrize("url", UNSTORABLE)
async def test_unstorable_characters_in_parameters_are_400(client, keys, url):
    r = await client.get(url, headers=keys)
    assert_bad_request(r)


async def test_unstorable_characters_on_post_routes_and_webhooks_are_400(client, keys):
    for url in ("/v1/keys/k%00/revoke", "/v1/accounts/a%00b%40example.com/spend"):
        r = await client.post(url, headers={**keys, "x-ledger-reason": "test"}, content=b"{}")
        assert_bad_request(r)
    d = signed("xendit", "PAID")
    r = await client.post(d.path + "?x=%00", content=d.body, headers=d.headers)
    assert_bad_request(r)


@pytest.mark.parametrize(
    "route",
    [
        f"/v1/accounts/{CUSTOMER}",
        "/v1/orders/xendit/X-1",
        f"/v1/subscriptions/{CUSTOMER}",
        "/v1/review",
    ],
)
async def test_min_position_beyond_the_head_is_a_client_error(client, keys, route):
    d = signed("xendit", "PAID")
    r = await client.post(d.path, content=d.body, headers=d.headers)
    assert r.status_code == 200, r.text
    head = r.json()["position"]
    r = await client.get(f"{route}?min_position={head + 1000}", headers=keys)
    assert_bad_request(r, "min_position")
    assert r.json()["head"] == head
    # At the head it is an ordinary read-your-writes wait.
    r = await client.get(f"/v1/review?min_position={head}", headers=keys)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    "url",
    [
        f"/v1/events?after={2**63 - 1}",
        f"/v1/audit/events?after={2**63 - 1}",
        f"/v1/audit/customers/{CUSTOMER}/balance?at_position={2**63 - 1}",
        f"/v1/review?after={2**63 - 1}",
    ],
)
async def test_the_largest_position_is_still_accepted(client, keys, url):
    r = await client.get(url, headers=keys)
    assert r.status_code == 200, (url, r.text)


async def test_spend_text_that_cannot_be_stored_is_400_and_never_reaches_the_log(client, keys):
    d = signed("mayar", "payment.success", customer="nul@example.com", package="silver")
    r = await client.post(d.path, content=d.body, headers=d.headers)
    assert r.status_code == 200, r.text
    head = r.json()["position"]
    url = "/v1/accounts/nul%40example.com/spend"
    for body in (
        {"amount": 1, "idempotency_key": "k\u0000"},
        {"amount": 1, "idempotency_key": "k1", "reason": "bought\u0000"},
        {"amount": 1, "idempotency_key": "k2", "reason": "two\nlines"},
    ):
        r = await client.post(url, json=body, headers=keys)
        assert_bad_request(r)
    # An unpaired surrogate (legal-looking JSON escape, not storable text).
    raw = b'{"amount": 1, "idempotency_key": "k\\ud800"}'
    r = await client.post(url, content=raw, headers={**keys, "content-type": "application/json"})
    assert_bad_request(r)
    r = await client.get("/v1/events?after=0", headers=keys)
    assert [e["position"] for e in r.json()["items"]] == [head]
