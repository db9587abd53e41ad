"""``python -m ledger``: the same as the ``ledger`` console script."""

from __future__ import annotations

from ledger.cli import main

main()
