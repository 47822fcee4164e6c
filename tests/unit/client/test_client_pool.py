"""ServicePool on a virtual clock, fed registry changes: membership, the warm-up of a fresh
instance, retries that avoid instances already tried, ejection and the single probe after it,
draining, what an UNAVAILABLE says, and weights under load. No channel is ever opened."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from mesh.client.endpoint import Endpoint
from mesh.client.pool import ServicePool
from mesh.registry.keys import Instance
from mesh.registry.watch import Change, ChangeKind
from mesh.resilience.outlier import HealthState, OutlierConfig
from mesh.testing import DummyChannel, VirtualClock

SERVICE = "hms.test.v1.Echo"
EJECT_AT_ONCE = OutlierConfig(
    consecutive_failures=1, base_ejection=30.0, max_ejection_percent=100.0, probe_timeout=5.0
)


def instance(n: int, weight: int = 100, address: str | None = None) -> Instance:
    return Instance(SERVICE, f"i-{n}", address or f"10.0.0.{n}:50051", "echo", weight=weight)


def added(*instances: Instance) -> list[Change]:
    return [Change(ChangeKind.ADDED, i) for i in instances]


class Harness:
    """A pool, its clock and its random source, and helpers to drive them."""

    def __init__(self, outlier: OutlierConfig = EJECT_AT_ONCE, seed: int = 7) -> None:
        self.clock = VirtualClock()
        self.random = random.Random(seed)
        self.channels: list[DummyChannel] = []
        self.pool = ServicePool(
            SERVICE,
            self._make_channel,
            outlier=outlier,
            clock=self.clock,
            rand=self.random.random,
            watch_health=False,
        )

    def _make_channel(self, _instance: Instance) -> Any:
        channel = DummyChannel()
        self.channels.append(channel)
        return channel

    def add(self, *instances: Instance, observed: bool = False) -> None:
        for change in added(*instances):
            self.pool.apply(change)
        for i in instances:
            self.pool.endpoints[i.instance_id].observed = observed

    def endpoint(self, n: int) -> Endpoint:
        return self.pool.endpoints[f"i-{n}"]

    def eject(self, *numbers: int) -> None:
        for n in numbers:
            assert self.pool.detector.on_failure(f"i-{n}", self.clock(), connection=True)

    def picks(self, count: int, tried: set[str] | None = None) -> list[str | None]:
        chosen = [self.pool.pick(tried or set()) for _ in range(count)]
        return [None if e is None else e.key for e in chosen]


@pytest.fixture
async def make() -> AsyncIterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def factory(**kwargs: Any) -> Harness:
        made.append(Harness(**kwargs))
        return made[-1]

    yield factory
    for harness in made:
        await harness.pool.close()


# -- membership ----------------------------------------------------------------------------


async def test_membership_follows_changes(make: Callable[..., Harness]) -> None:
    h = make()
    h.add(instance(1), instance(2))
    h.endpoint(1).channel()  # opened, so that removal has something to close

    h.pool.apply(Change(ChangeKind.REMOVED, instance(1)))
    h.pool.apply(Change(ChangeKind.REMOVED, instance(9)))  # unknown: ignored
    await h.pool.close()

    assert list(h.pool.endpoints) == []
    assert [c.closed for c in h.channels] == [True]


async def test_update_with_a_new_address_replaces_the_endpoint(
    make: Callable[..., Harness],
) -> None:
    h = make()
    h.add(instance(1), instance(2))
    old = h.endpoint(1)
    h.eject(1)  # history of the old address must not follow the new one

    h.pool.apply(Change(ChangeKind.UPDATED, instance(1, address="10.9.9.9:50051")))

    assert h.endpoint(1) is not old
    assert h.endpoint(1).instance.address == "10.9.9.9:50051"
    assert h.pool.detector.health("i-1").state is HealthState.ACTIVE


async def test_update_with_the_same_instance_keeps_the_endpoint(
    make: Callable[..., Harness],
) -> None:
    h = make()
    h.add(instance(1))
    old = h.endpoint(1)
    old.outstanding = 3

    h.pool.apply(Change(ChangeKind.UPDATED, instance(1)))

    assert h.endpoint(1) is old


# -- warm-up -------------------------------------------------------------------------------


async def test_a_fresh_instance_is_picked_first(make: Callable[..., Harness]) -> None:
    h = make()
    h.add(instance(1), instance(2), observed=True)
    h.add(instance(3))

    assert h.picks(5) == ["i-3"] * 5, "fresh and idle: it takes the warm-up"

    h.endpoint(3).outstanding = 1  # its warm-up call is in flight: back to P2C, where
    assert set(h.picks(50)) == {"i-1", "i-2"}  # its one call in flight costs it every draw


async def test_warm_up_spreads_over_several_fresh_instances(make: Callable[..., Harness]) -> None:
    h = make()
    h.add(instance(1), observed=True)
    h.add(instance(2), instance(3))

    first = h.pool.pick(set())
    assert first is not None
    first.outstanding = 1
    second = h.pool.pick(set())

    assert (first.key, getattr(second, "key", None)) == ("i-2", "i-3")


# -- retries avoid instances already tried -------------------------------------------------


@pytest.mark.parametrize(
    ("tried", "allowed"),
    [
        pytest.param(set(), {"i-1", "i-2", "i-3"}, id="first-attempt-any"),
        pytest.param({"i-1"}, {"i-2", "i-3"}, id="one-tried"),
        pytest.param({"i-1", "i-2"}, {"i-3"}, id="only-one-untried"),
        pytest.param({"i-1", "i-2", "i-3"}, {"i-1", "i-2", "i-3"}, id="all-tried-falls-back"),
        pytest.param({"i-9"}, {"i-1", "i-2", "i-3"}, id="tried-but-since-removed"),
    ],
)
async def test_retries_avoid_tried_instances(
    make: Callable[..., Harness], tried: set[str], allowed: set[str]
) -> None:
    h = make()
    h.add(instance(1), instance(2), instance(3), observed=True)

    assert set(h.picks(200, tried)) == allowed


async def test_untried_but_ejected_falls_back_to_a_tried_instance(
    make: Callable[..., Harness],
) -> None:
    h = make()
    h.add(instance(1), instance(2), observed=True)
    h.eject(2)

    assert h.picks(5, {"i-1"}) == ["i-1"] * 5


# -- ejection, probing, draining -----------------------------------------------------------


async def test_ejected_instances_are_not_picked(make: Callable[..., Harness]) -> None:
    h = make()
    h.add(instance(1), instance(2), instance(3), observed=True)
    h.eject(1, 2)

    assert h.picks(50) == ["i-3"] * 50
    assert h.picks(5, {"i-3"}) == ["i-3"] * 5


@pytest.mark.parametrize(
    ("ejected", "draining", "reason"),
    [
        pytest.param((1, 2), (3,), "2 ejected, 1 draining", id="ejected-and-draining"),
        pytest.param((), (1, 2, 3), "3 draining", id="all-draining"),
        pytest.param((1,), (2, 3), "1 ejected, 2 draining", id="one-ejected"),
    ],
)
async def test_why_unavailable(
    make: Callable[..., Harness], ejected: tuple[int, ...], draining: tuple[int, ...], reason: str
) -> None:
    h = make()
    h.add(instance(1), instance(2), instance(3), observed=True)
    h.eject(*ejected)
    for n in draining:
        h.endpoint(n).serving = False

    assert h.picks(3) == [None] * 3
    assert h.pool.why_unavailable() == f"no ready instance of {SERVICE}: {reason}"


async def test_why_unavailable_with_none_registered(make: Callable[..., Harness]) -> None:
    h = make()

    assert h.pool.pick(set()) is None
    assert h.pool.why_unavailable() == f"no instance of {SERVICE} is registered"


async def test_draining_instance_takes_calls_again_once_serving(
    make: Callable[..., Harness],
) -> None:
    h = make()
    h.add(instance(1), instance(2), observed=True)
    h.endpoint(1).serving = False
    assert set(h.picks(50)) == {"i-2"}

    h.endpoint(1).serving = True
    assert set(h.picks(200)) == {"i-1", "i-2"}


async def test_exactly_one_probe_after_the_ejection_time(make: Callable[..., Harness]) -> None:
    h = make()
    h.add(instance(1), instance(2), observed=True)
    h.eject(1)
    h.endpoint(2).outstanding = 5  # so P2C prefers i-1 whenever it is eligible

    h.clock.advance(29.9)
    assert "i-1" not in h.picks(20), "still ejected"

    h.clock.advance(0.1)
    assert h.picks(20).count("i-1") == 1
    assert h.pool.detector.health("i-1").state is HealthState.PROBING

    h.clock.advance(EJECT_AT_ONCE.probe_timeout)  # the probe's outcome never came
    assert h.picks(20).count("i-1") == 1, "a new probe once the old one is given up"


async def test_a_candidate_not_chosen_keeps_its_probe(make: Callable[..., Harness]) -> None:
    h = make()
    h.add(instance(1), instance(2), observed=True)
    h.eject(1)
    h.endpoint(1).outstanding = 5  # P2C prefers i-2, though i-1 is eligible again
    h.clock.advance(30.0)

    assert h.picks(20) == ["i-2"] * 20
    assert h.pool.detector.health("i-1").state is HealthState.EJECTED, "probe not claimed"
    assert h.picks(1, {"i-2"}) == ["i-1"]


# -- weights -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("weights", "expected"),
    [
        pytest.param((100, 100), (20, 20), id="equal-weights"),
        pytest.param((100, 300), (10, 30), id="one-to-three"),
        pytest.param((100, 100, 200), (10, 10, 20), id="one-one-two"),
    ],
)
async def test_in_flight_calls_follow_the_weights(
    make: Callable[..., Harness], weights: tuple[int, ...], expected: tuple[int, ...]
) -> None:
    """P2C compares cost per unit of weight, and cost grows with calls in flight: calls that
    do not complete pile up on the instances in proportion to their weights."""
    h = make()
    h.add(*(instance(n, w) for n, w in enumerate(weights, start=1)), observed=True)

    for _ in range(sum(expected)):
        chosen = h.pool.pick(set())
        assert chosen is not None
        chosen.outstanding += 1

    in_flight = tuple(h.endpoint(n).outstanding for n in range(1, len(weights) + 1))
    assert all(abs(got - want) <= 1 for got, want in zip(in_flight, expected, strict=True)), (
        in_flight
    )


@pytest.mark.parametrize(
    ("versions", "draining", "wanted", "picked"),
    [
        pytest.param({1: "1.0", 2: "2.0"}, (), "2.0", ["i-2"] * 4, id="only-the-version-asked"),
        pytest.param({1: "1.0", 2: "2.0"}, (2,), "2.0", [None] * 4, id="that-one-draining"),
        pytest.param({1: "1.0"}, (), "2.0", [None] * 4, id="none-of-it"),
    ],
)
async def test_a_call_pinned_to_a_version_goes_to_that_version_only(
    make: Callable[..., Harness],
    versions: dict[int, str],
    draining: tuple[int, ...],
    wanted: str,
    picked: list[str | None],
) -> None:
    h = make()
    h.add(*(Instance(SERVICE, f"i-{n}", f"10.0.0.{n}:1", "echo", version=v)
            for n, v in versions.items()), observed=True)  # fmt: skip
    for n in draining:
        h.endpoint(n).serving = False
    got = [h.pool.pick(set(), wanted) for _ in range(4)]
    assert [None if e is None else e.key for e in got] == picked
    if not any(v == wanted for v in versions.values()):
        assert h.pool.why_unavailable(wanted) == (
            f"no instance of {SERVICE} at version {wanted} is registered (registered: 1.0)"
        )


# -- traffic shaping in the pool (mesh.client.traffic) ------------------------------------------


def versioned(n: int, version: str, zone: str = "") -> Instance:
    return Instance(SERVICE, f"i-{n}", f"10.0.0.{n}:1", "echo", version=version, zone=zone)


async def test_a_split_whose_subset_is_all_ejected_gives_its_share_away(
    make: Callable[..., Harness],
) -> None:
    from mesh.client.traffic import TrafficPolicy

    h = make()
    h.add(versioned(1, "0.1.0"), versioned(2, "0.1.0"), versioned(3, "0.2.0"), observed=True)
    h.pool.policy = TrafficPolicy.of({"0.1.0": 50, "0.2.0": 50})
    both = set(h.picks(200))
    assert both == {"i-1", "i-2", "i-3"}
    h.eject(3)  # every instance of 0.2.0 ejected: its half goes to 0.1.0
    before = h.pool.split_redistributed
    assert set(h.picks(200)) <= {"i-1", "i-2"}
    assert h.pool.split_redistributed - before == 200  # and the metrics say so


async def test_a_draining_canary_gives_its_share_away_and_a_pin_still_holds(
    make: Callable[..., Harness],
) -> None:
    from mesh.client.traffic import TrafficPolicy

    h = make()
    h.add(versioned(1, "0.1.0"), versioned(2, "0.2.0"), observed=True)
    h.pool.policy = TrafficPolicy.of({"0.1.0": 0, "0.2.0": 100})
    assert set(h.picks(50)) == {"i-2"}
    h.endpoint(2).serving = False
    assert set(h.picks(50)) == {"i-1"}  # no 0.2.0 ready: 0.1.0 rather than nothing
    assert {h.pool.pick(set(), ">=0.2") for _ in range(5)} == {None}  # a pin is a pin


async def test_calls_stay_in_the_callers_zone_while_it_has_capacity(
    make: Callable[..., Harness],
) -> None:
    from mesh.client.traffic import Locality

    h = make()
    h.add(versioned(1, "1.0.0", "z1"), versioned(2, "1.0.0", "z2"), observed=True)
    h.pool.locality = Locality("z1", factor=1.5)
    assert set(h.picks(20)) == {"i-1"}
    h.endpoint(1).outstanding = 10  # z1 swamped, z2 idle: spill over
    assert "i-2" in set(h.picks(20))
