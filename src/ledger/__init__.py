"""Webhook ledger: verified payment webhooks become immutable events in PostgreSQL."""

from __future__ import annotations

__version__ = "0.1.0"
