"""Semantic versions and the ranges callers pin to (pure).

A version is ``MAJOR.MINOR.PATCH``, optionally ``-PRERELEASE`` and ``+BUILD`` (semver.org 2.0,
precedence by its rules; build metadata ignored). A range is one or more comparators, all of
which must hold, separated by spaces or commas (``>=1.2 <2``, ``>=1.2,<2``):

    >=V  >V  <=V  <V  =V  V    a comparison (V may be partial: ``1.2`` is ``1.2.0``)
    ^V                          compatible: ``>=V`` and below the next major (``^0.2`` is
                                ``>=0.2.0 <0.3.0``: below 1.0 the minor is the breaking part)
    ~V                          patch-level: ``>=V`` and below the next minor
    *                           any version

A pre-release (``2.0.0-rc.1``) matches only a range that names a pre-release of the same
``MAJOR.MINOR.PATCH``, as npm's ranges do: pinning ``>=1.2`` never pulls in a release candidate.

>>> VersionRange.parse(">=1.2 <2").matches(Version.parse("1.4.0"))
True
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import total_ordering

__all__ = ["Version", "VersionRange"]

_VERSION = re.compile(
    r"(?P<major>0|[1-9]\d*)\.(?P<minor>0|[1-9]\d*)\.(?P<patch>0|[1-9]\d*)"
    r"(?:-(?P<pre>[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?"
    r"(?:\+(?P<build>[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?"
)
_PARTIAL = re.compile(
    r"(?P<major>0|[1-9]\d*)(?:\.(?P<minor>0|[1-9]\d*)(?:\.(?P<patch>0|[1-9]\d*)"
    r"(?:-(?P<pre>[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?)?)?"
)
_COMPARATOR = re.compile(r"(?P<op>>=|<=|>|<|=|\^|~)?\s*(?P<version>\S+)")
_MAX_TEXT = 256


@total_ordering
@dataclass(frozen=True)
class Version:
    major: int
    minor: int
    patch: int
    pre: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> Version:
        """The version `text` names; ValueError if it is not semver (``v1.2.3``, ``1.2`` and
        leading zeros are not)."""
        match = _VERSION.fullmatch(text.strip()) if len(text) <= _MAX_TEXT else None
        if match is None:
            raise ValueError(f"{text!r} is not a semantic version (MAJOR.MINOR.PATCH)")
        pre = tuple(match["pre"].split(".")) if match["pre"] else ()
        for part in pre:
            if part.isdigit() and len(part) > 1 and part.startswith("0"):
                raise ValueError(f"{text!r}: numeric pre-release part {part!r} has a leading 0")
        return cls(int(match["major"]), int(match["minor"]), int(match["patch"]), pre)

    @property
    def core(self) -> tuple[int, int, int]:
        return (self.major, self.minor, self.patch)

    def _key(self) -> tuple[tuple[int, int, int], int, tuple[tuple[int, int | str], ...]]:
        # A release sorts after its pre-releases; numeric parts before alphanumeric ones.
        parts = tuple((0, int(p)) if p.isdigit() else (1, p) for p in self.pre)
        return (self.core, 0 if self.pre else 1, parts)

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._key() < other._key()

    def __str__(self) -> str:
        text = f"{self.major}.{self.minor}.{self.patch}"
        return f"{text}-{'.'.join(self.pre)}" if self.pre else text


@dataclass(frozen=True)
class _Comparator:
    op: str  # one of >= > <= < =
    version: Version

    def holds(self, version: Version) -> bool:
        if self.op == ">=":
            return version >= self.version
        if self.op == ">":
            return version > self.version
        if self.op == "<=":
            return version <= self.version
        if self.op == "<":
            return version < self.version
        return version == self.version


@dataclass(frozen=True)
class VersionRange:
    """A set of comparators that must all hold; `text` as given."""

    text: str
    comparators: tuple[_Comparator, ...]

    @classmethod
    def parse(cls, text: str) -> VersionRange:
        """The range `text` names; ValueError naming what is wrong."""
        if len(text) > _MAX_TEXT:
            raise ValueError(f"version range is longer than {_MAX_TEXT} characters")
        words = [w for w in re.split(r"[\s,]+", text.strip()) if w]
        if not words:
            raise ValueError("version range is empty")
        comparators: list[_Comparator] = []
        # ">= 1.2" written with a space: join an operator to the word after it.
        joined: list[str] = []
        for word in words:
            if joined and joined[-1] in (">=", "<=", ">", "<", "=", "^", "~"):
                joined[-1] += word
            else:
                joined.append(word)
        for word in joined:
            comparators.extend(_comparators(word, text))
        return cls(text.strip(), tuple(comparators))

    @classmethod
    def exact(cls, text: str) -> VersionRange:
        """A pin on a version string that is no range (``latest``): no semver version is in
        it; `mesh.client.traffic.version_matches` takes the very string."""
        return cls(text, (_Comparator("<", Version(0, 0, 0)),))

    def matches(self, version: Version) -> bool:
        if not all(c.holds(version) for c in self.comparators):
            return False
        if version.pre:
            # A pre-release matches only where the range names one of the same core.
            return any(c.version.pre and c.version.core == version.core for c in self.comparators)
        return True

    def __str__(self) -> str:
        return self.text


def _comparators(word: str, text: str) -> list[_Comparator]:
    if word == "*":
        return []
    match = _COMPARATOR.fullmatch(word)
    if match is None:
        raise ValueError(f"version range {text!r}: {word!r} is not a comparator")
    op, raw = match["op"] or "=", match["version"]
    partial = _PARTIAL.fullmatch(raw)
    if partial is None:
        raise ValueError(f"version range {text!r}: {raw!r} is not a version")
    major = int(partial["major"])
    minor = int(partial["minor"]) if partial["minor"] is not None else None
    patch = int(partial["patch"]) if partial["patch"] is not None else None
    pre = tuple(partial["pre"].split(".")) if partial["pre"] else ()
    low = Version(major, minor or 0, patch or 0, pre)
    if op == "^":
        if major > 0 or minor is None:
            high = Version(major + 1, 0, 0)
        elif minor > 0 or patch is None:
            high = Version(0, minor + 1, 0)
        else:
            high = Version(0, 0, (patch or 0) + 1)
        return [_Comparator(">=", low), _Comparator("<", high)]
    if op == "~":
        high = Version(major + 1, 0, 0) if minor is None else Version(major, minor + 1, 0)
        return [_Comparator(">=", low), _Comparator("<", high)]
    if op == "=" and (minor is None or patch is None):
        # "1.2" or "=1.2": every 1.2.x.
        high = Version(major + 1, 0, 0) if minor is None else Version(major, minor + 1, 0)
        return [_Comparator(">=", low), _Comparator("<", high)]
    if op in ("<=", ">") and (minor is None or patch is None):
        # "<=1.2" takes every 1.2.x; ">1.2" starts after them.
        high = Version(major + 1, 0, 0) if minor is None else Version(major, minor + 1, 0)
        return [_Comparator("<" if op == "<=" else ">=", high)]
    return [_Comparator(op, low)]
