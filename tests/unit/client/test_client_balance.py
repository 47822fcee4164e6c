"""pick_p2c (pure): two distinct candidates drawn in proportion to their weights, the lower
cost per unit of weight wins. Scripted draws, a seeded statistical table, and properties."""

from __future__ import annotations

import doctest
import random
from collections import Counter
from collections.abc import Callable, Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh.client import balance
from mesh.client.balance import pick_p2c


def script(*units: float) -> Callable[[], float]:
    """A random source that answers the given values in order."""
    values: Iterator[float] = iter(units)
    return lambda: next(values)


def test_docstring_example_runs() -> None:
    runner = doctest.DocTestRunner()
    for test in doctest.DocTestFinder().find(balance):
        runner.run(test, out=lambda _text: None)
    assert runner.tries > 0
    assert runner.failures == 0


def test_docstring_example_as_meant() -> None:
    assert pick_p2c(["a", "b"], {"a": 1.0, "b": 2.0}.get, lambda _: 1, lambda: 0.3) == "a"


def test_no_candidates() -> None:
    with pytest.raises(ValueError, match="no candidates"):
        pick_p2c([], cost=lambda _: 1.0, weight=lambda _: 1.0, rand=random.random)


def test_one_candidate_draws_nothing() -> None:
    def no_draws() -> float:
        raise AssertionError("a single candidate needs no random draw")

    assert pick_p2c(["only"], cost=lambda _: 1.0, weight=lambda _: 1.0, rand=no_draws) == "only"


WEIGHTS = {"a": 1.0, "b": 1.0, "c": 2.0}


@pytest.mark.parametrize(
    ("units", "costs", "expected"),
    [
        # first draw over a,b,c (total 4); second over the two left.
        pytest.param((0.1, 0.9), {"a": 1.0, "b": 1.0, "c": 1.0}, "c", id="a-vs-c-c-cheaper"),
        pytest.param((0.1, 0.9), {"a": 1.0, "b": 1.0, "c": 4.0}, "a", id="a-vs-c-a-cheaper"),
        pytest.param((0.1, 0.9), {"a": 1.0, "b": 1.0, "c": 2.0}, "a", id="tie-first-drawn"),
        pytest.param((0.3, 0.1), {"a": 9.0, "b": 1.0, "c": 0.1}, "b", id="b-vs-a-c-not-drawn"),
        pytest.param((0.6, 0.4), {"a": 0.0, "b": 5.0, "c": 9.0}, "a", id="c-vs-a"),
        pytest.param((0.99, 0.99), {"a": 5.0, "b": 0.0, "c": 9.0}, "b", id="c-vs-b"),
    ],
)
def test_scripted_draws(units: tuple[float, float], costs: dict[str, float], expected: str) -> None:
    chosen = pick_p2c(list(WEIGHTS), cost=costs.__getitem__, weight=WEIGHTS.__getitem__,
                      rand=script(*units))  # fmt: skip
    assert chosen == expected


@pytest.mark.parametrize(
    "weights",
    [
        pytest.param({"a": 1.0, "b": 1.0}, id="equal"),
        pytest.param({"a": 1.0, "b": 3.0}, id="one-to-three"),
        pytest.param({"a": 1.0, "b": 2.0, "c": 5.0}, id="one-two-five"),
        pytest.param({"a": 10.0, "b": 10.0, "c": 10.0, "d": 70.0}, id="one-heavy"),
    ],
)
def test_draws_follow_the_weights(weights: dict[str, float]) -> None:
    """With cost equal to weight every comparison ties and the first drawn wins: the share of
    each candidate is then the chance of being drawn first, its share of the total weight."""
    rand = random.Random(20240501).random
    n = 20_000
    counts = Counter(
        pick_p2c(list(weights), cost=weights.__getitem__, weight=weights.__getitem__, rand=rand)
        for _ in range(n)
    )
    total = sum(weights.values())
    for name, weight in weights.items():
        assert counts[name] / n == pytest.approx(weight / total, abs=0.02), counts


def test_equal_cost_goes_to_the_heavier_of_the_pair() -> None:
    weights = {"light": 100.0, "heavy": 300.0}
    rand = random.Random(1).random
    picks = {
        pick_p2c(list(weights), cost=lambda _: 0.03, weight=weights.__getitem__, rand=rand)
        for _ in range(200)
    }
    assert picks == {"heavy"}


candidates = st.dictionaries(
    st.text(alphabet="abcdefgh", min_size=1, max_size=3),
    st.tuples(
        st.floats(min_value=0.0, max_value=1e6, allow_nan=False),  # cost
        st.floats(min_value=1.0, max_value=1e4, allow_nan=False),  # weight
    ),
    min_size=2,
    max_size=8,
)
units = st.floats(min_value=0.0, max_value=1.0, exclude_max=True)


@given(candidates, units, units)
def test_never_the_strictly_worst(
    table: dict[str, tuple[float, float]], first: float, second: float
) -> None:
    chosen = pick_p2c(list(table), cost=lambda c: table[c][0], weight=lambda c: table[c][1],
                      rand=script(first, second))  # fmt: skip
    per_weight = {c: cost / weight for c, (cost, weight) in table.items()}
    worst = max(per_weight.values())
    assert chosen in table
    if sum(v == worst for v in per_weight.values()) == 1:
        assert per_weight[chosen] < worst


@given(
    st.floats(min_value=0.0, max_value=1e6, allow_nan=False),
    st.floats(min_value=0.0, max_value=1e6, allow_nan=False),
    units,
    units,
)
def test_of_two_the_cheaper_always_wins(
    cost_a: float, cost_b: float, first: float, second: float
) -> None:
    costs = {"a": cost_a, "b": cost_b}
    chosen = pick_p2c(["a", "b"], cost=costs.__getitem__, weight=lambda _: 1.0,
                      rand=script(first, second))  # fmt: skip
    assert costs[chosen] == min(cost_a, cost_b)
