"""Semantic versions and ranges (mesh/client/semver.py): precedence by semver.org's rules,
the range forms callers pin with, and what is refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh.client.semver import Version, VersionRange


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1.2.3", Version(1, 2, 3)),
        ("0.0.0", Version(0, 0, 0)),
        ("1.0.0-rc.1", Version(1, 0, 0, ("rc", "1"))),
        ("1.0.0-alpha+build.7", Version(1, 0, 0, ("alpha",))),
        ("10.20.30+meta", Version(10, 20, 30)),
    ],
)
def test_versions_parse(text: str, expected: Version) -> None:
    assert Version.parse(text) == expected


@pytest.mark.parametrize(
    "text", ["", "1", "1.2", "v1.2.3", "01.2.3", "1.2.3-", "1.2.3-01", "1.2.3.4", "a.b.c", "1.2.-3"]
)
def test_what_is_not_semver_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"semantic version|leading 0"):
        Version.parse(text)


# semver.org 2.0, section 11: this list is in ascending order.
ORDERED = [
    "1.0.0-alpha",
    "1.0.0-alpha.1",
    "1.0.0-alpha.beta",
    "1.0.0-beta",
    "1.0.0-beta.2",
    "1.0.0-beta.11",
    "1.0.0-rc.1",
    "1.0.0",
    "1.0.1",
    "1.1.0",
    "2.0.0",
]


def test_precedence_is_semvers() -> None:
    versions = [Version.parse(v) for v in ORDERED]
    assert sorted(reversed(versions)) == versions
    assert Version.parse("1.0.0+a") == Version.parse("1.0.0+b")  # build metadata ignored


@pytest.mark.parametrize(
    ("range_", "inside", "outside"),
    [
        (">=1.2 <2", ["1.2.0", "1.9.9"], ["1.1.9", "2.0.0", "2.0.0-rc.1"]),
        (">=1.2,<2", ["1.2.0"], ["2.0.0"]),
        (">= 1.2 < 2", ["1.5.0"], ["2.1.0"]),
        ("^1.2.3", ["1.2.3", "1.9.0"], ["1.2.2", "2.0.0"]),
        ("^0.2", ["0.2.0", "0.2.9"], ["0.3.0", "0.1.9"]),
        ("^0.0.3", ["0.0.3"], ["0.0.4"]),
        ("~1.2", ["1.2.0", "1.2.9"], ["1.3.0"]),
        ("~1.2.3", ["1.2.3", "1.2.7"], ["1.3.0", "1.2.2"]),
        ("1.2", ["1.2.0", "1.2.5"], ["1.3.0", "1.1.0"]),
        ("=1.2.3", ["1.2.3"], ["1.2.4"]),
        ("1", ["1.0.0", "1.9.9"], ["2.0.0", "0.9.0"]),
        ("<=1.2", ["1.2.9", "0.1.0"], ["1.3.0"]),
        (">1.2", ["1.3.0"], ["1.2.9"]),
        ("*", ["0.0.1", "9.9.9"], ["1.0.0-rc.1"]),
        (
            ">=2.0.0-rc.1",
            ["2.0.0-rc.1", "2.0.0-rc.2", "2.0.0", "3.0.0"],
            ["2.0.0-beta", "3.0.0-rc.1"],
        ),
        (">=2", ["2.0.0"], ["2.0.0-rc.1"]),
    ],
)
def test_ranges(range_: str, inside: list[str], outside: list[str]) -> None:
    parsed = VersionRange.parse(range_)
    for version in inside:
        assert parsed.matches(Version.parse(version)), (range_, version)
    for version in outside:
        assert not parsed.matches(Version.parse(version)), (range_, version)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("  ,  ", "empty"),
        (">=1.x", "not a version"),
        ("!1.2", "not a version"),
        (">=v1", "not a version"),
        ("1.2.3.4", "not a version"),
        ("x" * 300, "longer than"),
    ],
)
def test_a_bad_range_is_refused_naming_it(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        VersionRange.parse(text)


versions = st.builds(
    Version,
    st.integers(0, 20),
    st.integers(0, 20),
    st.integers(0, 20),
    st.one_of(st.just(()), st.tuples(st.sampled_from(["alpha", "beta", "rc"]), st.just("1"))),
)


@given(versions)
def test_every_version_prints_as_it_parses(version: Version) -> None:
    assert Version.parse(str(version)) == version


@given(versions, versions)
def test_a_closed_interval_holds_exactly_what_lies_between(low: Version, v: Version) -> None:
    high = Version(low.major + 1, 0, 0)
    inside = VersionRange.parse(f">={low} <{high}").matches(v)
    if v.pre and not (low.pre and low.core == v.core):
        assert not inside
    else:
        assert inside == (low <= v < high)
