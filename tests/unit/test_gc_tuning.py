"""settle_heap: start-up objects frozen, young generation collected less often."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from mesh.gc_tuning import settle_heap


@pytest.fixture
def restored_gc() -> Iterator[None]:
    saved = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*saved)


@pytest.mark.usefixtures("restored_gc")
def test_freezes_the_heap_and_raises_the_young_threshold() -> None:
    older = gc.get_threshold()[1:]
    settle_heap(1234)
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == (1234, *older)


@pytest.mark.usefixtures("restored_gc")
def test_cycles_made_later_are_still_collected() -> None:
    settle_heap()

    class Node:
        pass

    node = Node()
    node.self = node  # type: ignore[attr-defined]
    del node
    assert gc.collect() >= 1


def test_refuses_a_threshold_below_one() -> None:
    with pytest.raises(ValueError, match="young_threshold"):
        settle_heap(0)
