"""``GET /v1/stream`` over real HTTP: two uvicorn servers (two apps, two LISTEN connections,
as two processes would have) on loopback, an SSE client that disconnects and resumes with
``Last-Event-ID``."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from tests.support import PATIENCE, bearer, make_key, signed
from tests.support.servers import serve


class Sse:
    """A minimal EventSource: parses id/event/data blocks from a streaming response."""

    def __init__(self, response: httpx.Response) -> None:
        self.lines = response.aiter_lines()

    async def next(self, timeout: float = PATIENCE) -> dict[str, str]:  # a guard, not a bound
        async def read() -> dict[str, str]:
            msg: dict[str, str] = {}
            async for line in self.lines:
                if line == "":
                    if "data" in msg:
                        return msg
                    msg = {}
                    continue
                name, _, value = line.partition(":")
                if name:  # comments (": ...") are keepalives
                    msg[name] = value.removeprefix(" ")
            raise AssertionError("stream ended")

        return await asyncio.wait_for(read(), timeout)


async def post(http: httpx.AsyncClient, base: str, order: str) -> int:
    d = signed("xendit", "PAID", order_id=order)
    r = await http.post(base + d.path, content=d.body, headers=d.headers)
    assert r.status_code == 200, r.text
    return int(r.json()["position"])


async def test_live_then_resume_without_gaps_across_processes(database_url):
    key = await make_key(database_url, "audit:read")
    async with (
        serve(database_url) as a,
        serve(database_url) as b,
        httpx.AsyncClient(timeout=10) as http,
    ):
        # Live: a webhook posted to server B reaches a client of server A.
        async with http.stream("GET", a + "/v1/stream", headers=bearer(key)) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            sse = Sse(r)
            pos = await post(http, b, "order-live")
            msg = await sse.next()
        assert msg["id"] == str(pos)
        assert msg["event"] == "payment"
        fact = json.loads(msg["data"])
        assert (fact["order_id"], fact["provider"], fact["status"]) == (
            "order-live",
            "xendit",
            "paid",
        )

        # Disconnected: three payments happen meanwhile (on both servers).
        missed = [await post(http, srv, f"order-missed-{i}") for i, srv in enumerate((a, b, a))]

        # Resume with Last-Event-ID via the query token (what a browser's EventSource does).
        async with http.stream(
            "GET",
            a + "/v1/stream",
            params={"access_token": key},
            headers={"last-event-id": msg["id"]},
        ) as r:
            assert r.status_code == 200
            sse = Sse(r)
            got = [await sse.next() for _ in missed]
            assert [int(m["id"]) for m in got] == missed
            assert [json.loads(m["data"])["order_id"] for m in got] == [
                "order-missed-0",
                "order-missed-1",
                "order-missed-2",
            ]
            later = await post(http, b, "order-later")
            nxt = await sse.next()
            assert int(nxt["id"]) == later  # then live again, nothing twice, nothing skipped
            # Nothing else arrives: a later payment's message is the very next one.
            sentinel = await post(http, a, "order-sentinel")
            assert int((await sse.next())["id"]) == sentinel


async def test_stream_auth_and_bad_resume_point(database_url):
    reader = await make_key(database_url, "audit:read")
    other = await make_key(database_url, "tokens:write")
    async with serve(database_url) as a, httpx.AsyncClient(timeout=5) as http:
        r = await http.get(a + "/v1/stream")
        assert r.status_code == 401
        assert r.headers["content-type"].startswith("application/problem+json")
        r = await http.get(a + "/v1/stream", params={"access_token": "lk_nope_nope"})
        assert r.status_code == 401
        assert "access_token" in r.json()["detail"]
        r = await http.get(a + "/v1/stream", params={"access_token": other})
        assert r.status_code == 403
        r = await http.get(a + "/v1/stream", headers={**bearer(reader), "last-event-id": "abc"})
        assert r.status_code == 400
        assert "Last-Event-ID" in r.json()["detail"]


async def test_a_stream_ends_after_its_maximum_and_resumes(database_url, monkeypatch):
    """Streams are bounded (so shutdowns never wait on them); the resume point makes the
    reconnect seamless."""
    import ledger.api.stream

    monkeypatch.setattr(ledger.api.stream, "MAX_STREAM_SECONDS", 1.0)
    key = await make_key(database_url, "audit:read")
    async with serve(database_url) as a, httpx.AsyncClient(timeout=10) as http:
        first = await post(http, a, "order-before")
        async with http.stream(
            "GET", a + "/v1/stream", params={"after": first - 1}, headers=bearer(key)
        ) as r:
            sse = Sse(r)
            assert int((await sse.next())["id"]) == first
            with pytest.raises(AssertionError, match="stream ended"):
                await sse.next()
        second = await post(http, a, "order-after")
        async with http.stream(
            "GET", a + "/v1/stream", headers={**bearer(key), "last-event-id": str(first)}
        ) as r:
            assert int((await Sse(r).next())["id"]) == second
