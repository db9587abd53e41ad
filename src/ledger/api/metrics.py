"""``GET /metrics`` (scope ``ops:admin``): Prometheus text exposition, documented as such."""

from __future__ import annotations

import os

from litestar import get
from litestar.plugins.prometheus import PrometheusController
from litestar.response import Response
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest, multiprocess
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from ledger.api.auth import require_key
from ledger.api.docs import BEARER
from ledger.api.problems import KEYED, responses


class MetricsController(PrometheusController):
    path = "/metrics"
    guards = [require_key]
    opt = {"scopes": ("ops:admin",)}
    security = BEARER

    @get(
        summary="Prometheus metrics (text exposition format)",
        media_type="text/plain",
        responses=responses(*KEYED),
    )
    async def get(self) -> Response[bytes]:
        registry = REGISTRY
        if "PROMETHEUS_MULTIPROC_DIR" in os.environ or "prometheus_multiproc_dir" in os.environ:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        # The exact header (it names the format version and the charset once).
        return Response(generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})
