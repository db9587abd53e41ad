"""Prometheus counters for the ingest path (labels carry no secrets, no keys, no bodies)."""

from __future__ import annotations

from prometheus_client import Counter

_RECORDED = Counter(
    "ledger_webhooks_recorded_total", "Webhook deliveries recorded", ["provider", "outcome"]
)
_REFUSED = Counter(
    "ledger_webhooks_refused_total",
    "Webhook deliveries refused (401, nothing recorded)",
    ["provider"],
)


class Metrics:
    def recorded(self, provider: str, outcome: str) -> None:
        _RECORDED.labels(provider, outcome).inc()

    def refused(self, provider: str) -> None:
        _REFUSED.labels(provider).inc()
