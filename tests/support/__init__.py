"""Helpers shared by the tests (no test module imports another; what two share lives here).

- ``db``: known secrets and settings, signed deliveries, API keys, scratch databases.
- ``servers``: the app behind uvicorn, ``ledger serve`` subprocesses, loopback HTTP sinks
  (the partner).
- ``browser``: headless Chromium over the DevTools protocol.
- ``polling``: ``until`` and ``PATIENCE``, the one way a test waits.
- ``readmodels``: a counting test projection, a seeded log, folding into a scratch schema.
- ``replica``: a dedicated primary and its ``pg_basebackup -R`` streaming replica.

The names most tests use are re-exported here.
"""

from __future__ import annotations

from tests.support.db import SECRETS, make_key, scratch_database, signed, test_settings
from tests.support.polling import PATIENCE, until
from tests.support.servers import bearer, live_server

__all__ = [
    "PATIENCE",
    "SECRETS",
    "bearer",
    "live_server",
    "make_key",
    "scratch_database",
    "signed",
    "test_settings",
    "until",
]
