"""``ledger.heap.settle``: start-up objects frozen, young collections rarer, once a process."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from ledger import heap


@pytest.fixture
def fresh_process(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    threshold, frozen = gc.get_threshold(), gc.get_freeze_count()
    monkeypatch.setattr(heap, "_settled", False)
    if frozen:
        gc.unfreeze()
    try:
        yield
    finally:
        gc.set_threshold(*threshold)
        if not frozen:
            gc.unfreeze()


def test_settle_freezes_start_up_and_raises_the_young_threshold(fresh_process: None) -> None:
    gc.set_threshold(700, 10, 10)
    heap.settle()
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == (heap.YOUNG_THRESHOLD, 10, 10)
    assert gc.isenabled()


def test_settle_acts_once_a_process(fresh_process: None) -> None:
    heap.settle()
    frozen = gc.get_freeze_count()
    made_since = [[i] for i in range(1000)]  # container objects the collector tracks
    heap.settle()
    assert gc.get_freeze_count() == frozen
    assert made_since


def test_a_higher_threshold_is_kept(fresh_process: None) -> None:
    gc.set_threshold(50_000, 20, 30)
    heap.settle()
    assert gc.get_threshold() == (50_000, 20, 30)
