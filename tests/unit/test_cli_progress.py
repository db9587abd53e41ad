"""The rebuild progress line of ``ledger projections``."""

from __future__ import annotations


def test_progress_line_shows_share_rate_and_eta():
    from ledger.cli.projections import progress_line

    assert progress_line(250_000, 1_000_000, 25_000.0, width=10) == (
        "[##........]  25%  250,000/1,000,000 events  25,000 ev/s  ETA 00:30"
    )
    assert progress_line(0, 0, 0.0, width=4).startswith("[####] 100%")
    assert "ETA --:--" in progress_line(5, 10, 0.0)
    assert "ETA 1:00:00" in progress_line(0, 3600, 1.0)
