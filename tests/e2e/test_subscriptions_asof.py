"""Subscriptions as of a past position or instant: the log prefix folded with the
subscriptions projection's own rule, compared with the live read model at each point."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from tests.support import bearer, make_key
from tests.support.readmodels import MAYAR, mayar_body


async def post_mayar(client: Any, event: str, **data: Any) -> int:
    r = await client.post("/webhooks/mayar", content=mayar_body(event, **data), headers=MAYAR)
    assert r.status_code == 200, r.text
    position: int = r.json()["position"]
    return position


def statuses(answer: dict[str, Any]) -> list[tuple[str, str]]:
    return [(i["license_code"], i["status"]) for i in answer["items"]]


async def test_subscription_status_as_of_each_position_matches_the_live_model(client, database_url):
    key = await make_key(database_url, "audit:read", "tokens:write")
    who = {"customerEmail": "Member@Example.com"}
    later = (datetime.now(UTC) + timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%S.000Z")

    async def live(position: int) -> dict[str, Any]:
        url = f"/v1/subscriptions/member@example.com?min_position={position}"
        answer: dict[str, Any] = (await client.get(url, headers=bearer(key))).json()
        return answer

    p1 = await post_mayar(
        client, "subscription.activated", id="a", licenseCode="L-1", expiredAt=later, **who
    )
    live_1 = await live(p1)
    p2 = await post_mayar(
        client, "subscription.cancelled", id="b", licenseCode="L-1", expiredAt=later, **who
    )
    live_2 = await live(p2)
    assert statuses(live_1) == [("L-1", "active")]
    assert statuses(live_2) == [("L-1", "cancelled")]

    async def asof(**q: Any) -> dict[str, Any]:
        r = await client.get(
            "/v1/audit/customers/member@example.com/subscriptions", params=q, headers=bearer(key)
        )
        assert r.status_code == 200, r.text
        answer: dict[str, Any] = r.json()
        return answer

    assert statuses(await asof(at_position=p1 - 1)) == []
    assert statuses(await asof(at_position=p1)) == statuses(live_1)
    assert statuses(await asof(at_position=p2)) == statuses(live_2)
    assert statuses(await asof()) == statuses(live_2)
    # The same prefix judged at an instant after the period's end reads expired.
    after_end = (datetime.now(UTC) + timedelta(days=31)).isoformat()
    assert statuses(await asof(at_position=p1, as_of=after_end)) == [("L-1", "expired")]
    one = await asof(at_position=p1)
    assert one["items"][0]["expiry"].startswith(later[:19])
    assert one["at_position"] == p1


async def test_subscriptions_as_of_needs_audit_scope_and_a_valid_time(client, database_url):
    wrong = await make_key(database_url, "tokens:write")
    r = await client.get("/v1/audit/customers/x@y.z/subscriptions", headers=bearer(wrong))
    assert r.status_code == 403
    key = await make_key(database_url, "audit:read")
    r = await client.get(
        "/v1/audit/customers/x@y.z/subscriptions?as_of=yesterday", headers=bearer(key)
    )
    assert r.status_code == 400
    assert "as_of" in r.json()["detail"]
