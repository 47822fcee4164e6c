"""Traffic shaping's choice of candidates (mesh/client/traffic.py), pure: version pins, splits
(drawn by weight, empty subsets giving their share away, unnamed versions), locality, and
the policies refused."""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh.client.semver import VersionRange
from mesh.client.traffic import Choice, Locality, TrafficPolicy, select


@dataclass(frozen=True)
class Fake:
    name: str
    version: str = "0.1.0"
    zone: str = ""
    load: float = 0.0


def choose(
    candidates: list[Fake],
    *,
    pin: str | None = None,
    policy: dict[str, int] | None = None,
    zone: str = "",
    factor: float = 1.5,
    draw: float = 0.5,
) -> Choice[Fake]:
    return select(
        candidates,
        version_of=lambda f: f.version,
        zone_of=lambda f: f.zone,
        load_of=lambda f: f.load,
        pin=VersionRange.parse(pin) if pin else None,
        policy=TrafficPolicy.of(policy) if policy else None,
        locality=Locality(zone, factor),
        rand=lambda: draw,
    )


def names(choice: Choice[Fake]) -> list[str]:
    return [c.name for c in choice.candidates]


OLD = [Fake("a", "0.1.0"), Fake("b", "0.1.0"), Fake("c", "0.1.0")]
NEW = [Fake("d", "0.2.0")]


@pytest.mark.parametrize(
    ("candidates", "pin", "expected"),
    [
        (OLD + NEW, None, ["a", "b", "c", "d"]),
        (OLD + NEW, ">=0.2", ["d"]),
        (OLD + NEW, "<0.2", ["a", "b", "c"]),
        (OLD + NEW, ">=1", []),
        ([Fake("x", "latest"), *NEW], "*", ["d"]),  # not semver: matches no range
        ([Fake("r", "0.3.0-rc.1"), *NEW], ">=0.2", ["d"]),  # no release candidate unasked
        ([Fake("r", "0.3.0-rc.1"), *NEW], ">=0.3.0-rc.1", ["r"]),
    ],
)
def test_a_pin_keeps_only_matching_versions(
    candidates: list[Fake], pin: str | None, expected: list[str]
) -> None:
    assert names(choose(candidates, pin=pin)) == expected


@pytest.mark.parametrize(
    ("policy", "draw", "expected", "subset", "redistributed"),
    [
        ({"0.1.0": 90, "0.2.0": 10}, 0.0, ["a", "b", "c"], "0.1.0", False),
        ({"0.1.0": 90, "0.2.0": 10}, 0.899, ["a", "b", "c"], "0.1.0", False),
        ({"0.1.0": 90, "0.2.0": 10}, 0.9, ["d"], "0.2.0", False),
        ({"0.1.0": 0, "0.2.0": 100}, 0.0, ["d"], "0.2.0", False),
        # Not summing to 100: shares are weights over their sum.
        ({"0.1.0": 1, "0.2.0": 3}, 0.24, ["a", "b", "c"], "0.1.0", False),
        ({"0.1.0": 1, "0.2.0": 3}, 0.25, ["d"], "0.2.0", False),
        # A subset with no instance gives its share to the others.
        ({"0.1.0": 50, "0.3.0": 50}, 0.9, ["a", "b", "c"], "0.1.0", True),
        # No named subset can serve: everyone rather than nothing.
        ({"0.3.0": 100}, 0.5, ["a", "b", "c", "d"], None, True),
        # A version the policy does not name takes no share while a named one serves.
        ({"0.2.0": 1}, 0.0, ["d"], "0.2.0", False),
    ],
)
def test_a_split_draws_one_subset_by_weight(
    policy: dict[str, int],
    draw: float,
    expected: list[str],
    subset: str | None,
    redistributed: bool,
) -> None:
    choice = choose(OLD + NEW, policy=policy, draw=draw)
    assert names(choice) == expected
    assert (choice.subset, choice.redistributed) == (subset, redistributed)


def test_pin_and_split_together_split_what_the_pin_left() -> None:
    choice = choose(OLD + NEW, pin="<0.2", policy={"0.1.0": 5, "0.2.0": 95}, draw=0.99)
    assert names(choice) == ["a", "b", "c"]
    assert choice.redistributed  # 0.2.0's share had nowhere to go but 0.1.0


@pytest.mark.parametrize(
    ("candidates", "zone", "expected", "local"),
    [
        # No zone: every zone.
        ([Fake("a", zone="z1"), Fake("b", zone="z2")], "", ["a", "b"], False),
        # In its zone while it has capacity.
        ([Fake("a", zone="z1"), Fake("b", zone="z2")], "z1", ["a"], True),
        # No instance in its zone: spill over.
        ([Fake("a", zone="z1"), Fake("b", zone="z2")], "z3", ["a", "b"], False),
        # Its zone much busier than the others': spill over.
        ([Fake("a", zone="z1", load=20), Fake("b", zone="z2", load=2)], "z1", ["a", "b"], False),
        # A little busier (within the factor, or within the slack): stay.
        ([Fake("a", zone="z1", load=3), Fake("b", zone="z2", load=2)], "z1", ["a"], True),
        ([Fake("a", zone="z1", load=1), Fake("b", zone="z2", load=0)], "z1", ["a"], True),
        # Only its zone: stay, whatever the load.
        ([Fake("a", zone="z1", load=50)], "z1", ["a"], True),
    ],
)
def test_locality(candidates: list[Fake], zone: str, expected: list[str], local: bool) -> None:
    choice = choose(candidates, zone=zone)
    assert (names(choice), choice.local) == (expected, local)


def test_empty_stays_empty() -> None:
    assert names(choose([], pin=">=1", policy={"1.0.0": 1}, zone="z")) == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b"not json", "not JSON"),
        (b"[1, 2]", "JSON object"),
        (b"{}", "at least one version"),
        (b'{"latest": 100}', "semantic version"),
        (b'{"0.1.0": -1}', "whole number >= 0"),
        (b'{"0.1.0": 1.5}', "whole number >= 0"),
        (b'{"0.1.0": true}', "whole number >= 0"),
        (b'{"0.1.0": "50"}', "whole number >= 0"),
        (b'{"0.1.0": 0, "0.2.0": 0}', "weight above 0"),
        (b"{" + b",".join(b'"0.%d.0": 1' % i for i in range(65)) + b"}", "at most 64"),
        (b" " * 20000, "larger than"),
        (b"\xff\xfe", "not JSON"),
        (b"[" * 10_000, "nested too deep"),
    ],
)
def test_a_malformed_policy_is_refused_naming_it(text: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrafficPolicy.parse(text)


def test_a_policy_round_trips_through_json() -> None:
    policy = TrafficPolicy.parse(b'{"0.1.0": 95, "0.2.0": 5}')
    assert TrafficPolicy.parse(policy.to_json()) == policy
    assert policy.shares() == {"0.1.0": 0.95, "0.2.0": 0.05}


@given(st.lists(st.integers(0, 100), min_size=2, max_size=4).filter(lambda w: sum(w) > 0))
def test_draws_follow_the_weights(weights: list[int]) -> None:
    """Over evenly spaced draws each subset gets its weight's share (to 1 %)."""
    versions = [f"0.{i}.0" for i in range(len(weights))]
    candidates = [Fake(str(i), v) for i, v in enumerate(versions)]
    policy = dict(zip(versions, weights, strict=True))
    draws = 1000
    counts: Counter[str | None] = Counter(
        choose(candidates, policy=policy, draw=(i + 0.5) / draws).subset for i in range(draws)
    )
    for version, weight in policy.items():
        assert abs(counts[version] / draws - weight / sum(weights)) <= 0.01
    assert None not in counts


def test_locality_factor_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match=">= 1"):
        Locality("z1", 0.5)


def test_an_unnamed_version_gets_nothing_while_the_named_serve() -> None:
    candidates = [Fake("a", "0.1.0"), Fake("x", "9.9.9")]
    subsets = {
        choose(candidates, policy={"0.1.0": 1}, draw=d).subset
        for d in itertools.islice(itertools.count(0, 0.1), 10)
    }
    assert subsets == {"0.1.0"}
