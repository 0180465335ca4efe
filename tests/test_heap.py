"""The collector settings each long-running process applies (sluicegate/heap.py)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from sluicegate.heap import freeze_startup_heap, tune_collector
from sluicegate.settings import RuntimeSettings


@pytest.fixture
def collector() -> Iterator[None]:
    """The test process's collector as it was, afterwards: thresholds and no frozen objects."""
    thresholds = gc.get_threshold()
    frozen_before = gc.get_freeze_count()
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        if gc.get_freeze_count() and not frozen_before:
            gc.unfreeze()


def test_the_young_generation_threshold_is_set_and_the_older_ones_kept(collector: None) -> None:
    gc.set_threshold(700, 11, 12)
    tune_collector(RuntimeSettings(gc_gen0_threshold=25_000))
    assert gc.get_threshold() == (25_000, 11, 12)


def test_zero_keeps_the_interpreters_thresholds(collector: None) -> None:
    gc.set_threshold(700, 11, 12)
    tune_collector(RuntimeSettings(gc_gen0_threshold=0))
    assert gc.get_threshold() == (700, 11, 12)


def test_freezing_hides_start_up_objects_from_later_collections(collector: None) -> None:
    survivors = [[n] for n in range(1000)]  # tracked containers alive at the "end of start-up"
    freeze_startup_heap(RuntimeSettings())
    assert gc.get_freeze_count() >= len(survivors)
    tracked_after = sum(len(gc.get_objects(generation)) for generation in range(3))
    assert all(not any(o is s for o in gc.get_objects(2)) for s in survivors[:3])
    assert tracked_after < gc.get_freeze_count()


def test_freezing_can_be_turned_off(collector: None) -> None:
    freeze_startup_heap(RuntimeSettings(gc_freeze=False))
    assert gc.get_freeze_count() == 0
