"""Power of two choices over peak-EWMA cost, honouring weights (pure).

Two distinct candidates are drawn with probability proportional to their weight, and the one
with the lower cost per unit of weight wins. P2C avoids the herding of "least loaded" (every
client picking the same best instance) at the price of two random draws.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

__all__ = ["pick_p2c"]

T = TypeVar("T")


def _draw(items: Sequence[T], weights: Sequence[float], unit: float) -> int:
    total = sum(weights)
    target = unit * total
    running = 0.0
    for index, weight in enumerate(weights):
        running += weight
        if target < running:
            return index
    return len(items) - 1


def pick_p2c(
    candidates: Sequence[T],
    cost: Callable[[T], float],
    weight: Callable[[T], float],
    rand: Callable[[], float],
) -> T:
    """The better of two weighted random candidates; the only one if there is one.

    >>> pick_p2c(["a", "b"], {"a": 1.0, "b": 2.0}.get, lambda _: 1, lambda: 0.3)
    'a'
    """
    if not candidates:
        raise ValueError("no candidates to pick from")
    if len(candidates) == 1:
        return candidates[0]
    weights = [max(weight(c), 1e-9) for c in candidates]
    first = _draw(candidates, weights, rand())
    rest_weights = [w for i, w in enumerate(weights) if i != first]
    rest = [c for i, c in enumerate(candidates) if i != first]
    a, b = candidates[first], rest[_draw(rest, rest_weights, rand())]
    cost_a = cost(a) / weight(a) if weight(a) > 0 else float("inf")
    cost_b = cost(b) / weight(b) if weight(b) > 0 else float("inf")
    return a if cost_a <= cost_b else b
