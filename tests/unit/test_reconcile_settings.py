"""Reconciliation settings and the per-provider rate limit."""

from __future__ import annotations

import asyncio
import base64

import pytest

from ledger.config import ConfigError, load_settings
from ledger.reconcile.clients import InvalidOrderId, NotConfigured, RateLimit, StatusClient


def test_midtrans_api_base_follows_the_environment():
    dev = load_settings({})
    assert dev.midtrans_api_base == "https://api.sandbox.midtrans.com"
    prod = load_settings(
        {
            "LEDGER_ENV": "production",
            "LEDGER_DATABASE_URL": "postgresql://app@db/ledger",
            "LEDGER_PROVIDERS": "midtrans",
            "LEDGER_MIDTRANS_SERVER_KEY": "Mid-server-x",
        }
    )
    assert prod.midtrans_api_base == "https://api.midtrans.com"
    given = load_settings({"LEDGER_MIDTRANS_API_URL": "http://127.0.0.1:9"})
    assert given.midtrans_api_base == "http://127.0.0.1:9"
    assert dev.xendit_api_url == "https://api.xendit.co"


def test_the_xendit_secret_key_is_never_shown():
    s = load_settings({"LEDGER_XENDIT_SECRET_KEY": "xnd_development_very_secret"})
    assert "very_secret" not in repr(s)
    assert "very_secret" not in str(s)


def test_reconcile_settings_are_bounded():
    with pytest.raises(ConfigError):
        load_settings({"LEDGER_RECONCILE_TIMEOUT": "0"})
    with pytest.raises(ConfigError):
        load_settings({"LEDGER_RECONCILE_ATTEMPTS": "0"})


def test_requests_need_credentials_and_a_valid_order_id():
    client = StatusClient(load_settings({"LEDGER_MIDTRANS_SERVER_KEY": "k1,k0"}))
    url, headers = client.request_for("midtrans", "INV-1")
    assert url == "https://api.sandbox.midtrans.com/v2/INV-1/status"
    # The first key of a rotated list, an empty password.
    assert headers["Authorization"] == "Basic " + base64.b64encode(b"k1:").decode()
    with pytest.raises(InvalidOrderId):
        client.request_for("midtrans", "../v1/x")
    with pytest.raises(NotConfigured):
        client.request_for("xendit", "BK-1")
    xendit = StatusClient(load_settings({"LEDGER_XENDIT_SECRET_KEY": "xnd"}))
    url, _ = xendit.request_for("xendit", "BK-1&x")
    assert url == "https://api.xendit.co/v2/invoices?external_id=BK-1%26x"


async def test_rate_limit_spaces_requests(monkeypatch: pytest.MonkeyPatch):
    # A frozen clock and a recording sleep: the spacing is read from what each request was
    # told to wait, not from how long the machine took.
    from types import SimpleNamespace

    from ledger.reconcile import clients

    waits: list[float] = []

    async def sleep(delay: float) -> None:
        waits.append(delay)

    monkeypatch.setattr(clients, "time", SimpleNamespace(monotonic=lambda: 100.0))
    monkeypatch.setattr(clients, "asyncio", SimpleNamespace(Lock=asyncio.Lock, sleep=sleep))
    limit = RateLimit(20.0)
    for _ in range(4):
        await limit.wait()
    # the first is free, then one per 50 ms
    assert waits == pytest.approx([0.05, 0.10, 0.15])
