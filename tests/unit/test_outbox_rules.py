"""Outbox rules without a server: the partner signature matches the documented openssl
recipe, and the retry schedule (jitter, Retry-After, which statuses retry)."""

from __future__ import annotations

import subprocess
import uuid

import pytest

from tests.support.db import SECRETS

SECRET = SECRETS["LEDGER_PARTNER_SYNC_SECRET"]


def test_signature_matches_the_openssl_recipe():
    body = b'{"event":"booking.paid","booking_id":"test-id","status":"LUNAS","paid_amount":50000}'
    out = subprocess.run(
        ["openssl", "dgst", "-sha256", "-hmac", SECRET],
        input=body,
        capture_output=True,
        check=True,
    ).stdout.decode()
    from ledger.outbox.senders import HttpSender

    sig = HttpSender(None, secret=SECRET).headers(uuid.uuid4(), body, 1)["x-pwa-signature"]  # type: ignore[arg-type]
    assert out.strip().split()[-1] == sig


def test_retry_schedule_spans_about_a_day_with_jitter_and_retry_after():
    import random

    from ledger.outbox.dispatcher import DEFAULT_SCHEDULE, next_delay, parse_schedule
    from ledger.outbox.senders import classify_http, retry_after_seconds

    assert 23 * 3600 < sum(DEFAULT_SCHEDULE) < 25 * 3600
    rng = random.Random(7)
    delays = [next_delay(1, DEFAULT_SCHEDULE, None, rng) for _ in range(200)]
    assert all(7.5 <= d <= 12.5 for d in delays)
    assert len(set(delays)) > 100, "jittered"
    assert next_delay(3, DEFAULT_SCHEDULE, 42.0, rng) == 42.0
    assert next_delay(len(DEFAULT_SCHEDULE) + 1, DEFAULT_SCHEDULE, None, rng) is None
    assert parse_schedule("0.5, 2") == (0.5, 2.0)
    with pytest.raises(ValueError, match="non-negative"):
        parse_schedule("1,-1")
    assert retry_after_seconds("120") == 120.0
    assert retry_after_seconds("999999") == 86400.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert retry_after_seconds("soon") is None
    assert classify_http(503, "busy", "7", 3).retry_after == 7.0
    assert [classify_http(s, "", None, 1).outcome for s in (200, 204, 301, 400, 401, 404)] == [
        "delivered",
        "delivered",
        "dead",
        "dead",
        "dead",
        "dead",
    ]
    assert [classify_http(s, "", None, 1).outcome for s in (408, 425, 429, 500, 502)] == [
        "retry"
    ] * 5
