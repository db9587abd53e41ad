"""Prometheus counters for the ingest path (labels carry no secrets, no keys, no bodies).

The webhook routes are left out of litestar's per-request Prometheus middleware (its
bookkeeping cost ~5 % of a webhook's CPU, issue 11); they are counted and timed here
instead, with the label children looked up once per provider and outcome.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Histogram

_RECORDED = Counter(
    "ledger_webhooks_recorded_total", "Webhook deliveries recorded", ["provider", "outcome"]
)
_REFUSED = Counter(
    "ledger_webhooks_refused_total",
    "Webhook deliveries refused (401, nothing recorded)",
    ["provider"],
)
_SECONDS = Histogram(
    "ledger_webhook_seconds",
    "Time from a webhook's body read to its answer (verify, record, commit)",
    ["provider"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
_children: dict[tuple[Any, ...], Any] = {}


def _child(metric: Any, *labels: str) -> Any:
    key = (metric, *labels)
    found = _children.get(key)
    if found is None:
        found = _children[key] = metric.labels(*labels)
    return found


class Metrics:
    def recorded(self, provider: str, outcome: str) -> None:
        _child(_RECORDED, provider, outcome).inc()

    def refused(self, provider: str) -> None:
        _child(_REFUSED, provider).inc()

    def timed(self, provider: str, seconds: float) -> None:
        _child(_SECONDS, provider).observe(seconds)
