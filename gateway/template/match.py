"""Match request paths against compiled templates and bind their variables.

The path is split once into a ``PathView`` (raw segments, their RFC 3986-normalised forms, and
the same with a trailing ``:verb`` split off); a ``Matcher`` compiled from a ``Template`` then
checks it without re-reading the text, so a router splits once and tries many matchers.

Decoding follows google/api/http.proto (and Envoy):

- a single-segment variable (``{x}``, ``{x=*}``, ``{x=lit}``) is fully percent-decoded:
  ``a%2Fb`` binds ``a/b``;
- a multi-segment variable (more than one segment, or ``**``) decodes every escape except
  ``%2F``/``%2f``, which stay as sent, so a slash that was data stays distinguishable from a
  separator;
- a malformed escape anywhere in the path (``%zz``, ``%4``), a path not starting with ``/`` or a
  bound value that is not UTF-8 raises ``BadPath`` (the router's caller answers 400).

Literals (and the verb) compare after RFC 3986 section 6.2.2 normalisation: escapes of
unreserved characters are decoded (``%7E`` is ``~``) and hex digits upper-cased, so ``%2f`` and
``%2F`` are the same literal but ``%2F`` is never ``/``.

``*`` matches one non-empty segment; ``**`` matches zero or more segments, empty ones included.
Without a verb in the template, a ``:`` in the last segment is plain data: ``/v1/{name}``
binds ``name="a:b"`` for ``/v1/a:b``. With one, the last ``:`` of the last segment splits it off.

Example::

    >>> from hms_gateway.template.parse import parse_template
    >>> match(parse_template("/v1/{path=files/**}"), "/v1/files/a%2Fb/c%20d")
    {'path': 'files/a%2Fb/c d'}
"""

from __future__ import annotations

import functools
import string
from dataclasses import dataclass

from hms_gateway.template.parse import DeepWildcard, Literal, Template, Variable, Wildcard

__all__ = ["BadPath", "Matcher", "PathView", "compile_template", "match", "split_path"]

_HEX = frozenset(string.hexdigits)
_UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")
_SLASH = 0x2F

_LITERAL, _STAR, _DEEP = 0, 1, 2


class BadPath(ValueError):
    """A request path that cannot be decoded; the gateway answers 400."""


def _check_escapes(path: str) -> None:
    i = path.find("%")
    while i != -1:
        if len(path) < i + 3 or path[i + 1] not in _HEX or path[i + 2] not in _HEX:
            raise BadPath(f"malformed percent escape at position {i} of the path {path!r}")
        i = path.find("%", i + 3)


def _normalize(segment: str) -> str:
    """RFC 3986 6.2.2 form of an already validated segment."""
    if "%" not in segment:
        return segment
    parts = segment.split("%")
    out = [parts[0]]
    for part in parts[1:]:
        char = chr(int(part[:2], 16))
        out.append((char if char in _UNRESERVED else "%" + part[:2].upper()) + part[2:])
    return "".join(out)


def _decode(raw: str, *, keep_slash: bool) -> str:
    """Percent-decode a validated value; with ``keep_slash`` ``%2F`` stays as sent."""
    if "%" not in raw:
        return raw
    buf = bytearray()
    i = 0
    while i < len(raw):
        j = raw.find("%", i)
        if j == -1:
            buf += raw[i:].encode("utf-8", "surrogatepass")
            break
        buf += raw[i:j].encode("utf-8", "surrogatepass")
        byte = int(raw[j + 1 : j + 3], 16)
        if keep_slash and byte == _SLASH:
            buf += raw[j : j + 3].encode("ascii")
        else:
            buf.append(byte)
        i = j + 3
    try:
        return buf.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadPath(f"path value {raw!r} does not decode to UTF-8") from exc


@dataclass(frozen=True, slots=True)
class PathView:
    """A request path split once, for trying many matchers."""

    segments: tuple[str, ...]
    normalized: tuple[str, ...]
    # The same with the last ":verb" split off; verb is None when the last segment has no ":".
    verb: str | None
    verb_segments: tuple[str, ...]
    verb_normalized: tuple[str, ...]


def split_path(path: str) -> PathView:
    """Validate and split a raw request path (without the query string).

    >>> split_path("/v1/a:go").verb_segments
    ('v1', 'a')
    """
    if not path.startswith("/"):
        raise BadPath(f"path {path!r} does not start with '/'")
    _check_escapes(path)
    segments = tuple(path[1:].split("/")) if len(path) > 1 else ()
    normalized = tuple(map(_normalize, segments))
    verb = None
    verb_segments: tuple[str, ...] = ()
    verb_normalized: tuple[str, ...] = ()
    if segments and ":" in segments[-1]:
        head, _, raw_verb = segments[-1].rpartition(":")
        verb = _normalize(raw_verb)
        # "/:verb" is the root path with a verb, not one empty segment.
        verb_segments = (*segments[:-1], head) if len(segments) > 1 or head else ()
        verb_normalized = tuple(map(_normalize, verb_segments))
    return PathView(segments, normalized, verb, verb_segments, verb_normalized)


@dataclass(frozen=True, slots=True)
class _Binding:
    name: str
    start: int
    end: int | None  # None: to the end of the path (the variable holds `**`)
    multi: bool


class Matcher:
    """A template compiled to flat opcodes; build with ``compile_template``."""

    __slots__ = ("_bindings", "_deep", "_ops", "_verb", "template")

    def __init__(self, template: Template) -> None:
        self.template = template
        ops: list[tuple[int, str]] = []
        for seg in template.flat():
            if isinstance(seg, Literal):
                ops.append((_LITERAL, _normalize(seg.value)))
            elif isinstance(seg, Wildcard):
                ops.append((_STAR, ""))
            else:
                ops.append((_DEEP, ""))
        self._deep = bool(ops) and ops[-1][0] == _DEEP
        self._ops = tuple(op for op in ops if op[0] != _DEEP)
        self._verb = None if template.verb is None else _normalize(template.verb)
        bindings = []
        index = 0
        for segment in template.segments:
            if isinstance(segment, Variable):
                deep = isinstance(segment.segments[-1], DeepWildcard)
                end = None if deep else index + len(segment.segments)
                bindings.append(_Binding(segment.name, index, end, segment.multi_segment))
                index += len(segment.segments)
            else:
                index += 1
        self._bindings = tuple(bindings)

    def match_view(self, view: PathView) -> dict[str, str] | None:
        """Bindings (field path -> decoded value) if ``view`` matches, else ``None``."""
        if self._verb is None:
            segments, normalized = view.segments, view.normalized
        elif view.verb == self._verb:
            segments, normalized = view.verb_segments, view.verb_normalized
        else:
            return None
        ops = self._ops
        if len(segments) != len(ops) and not (self._deep and len(segments) > len(ops)):
            return None
        for (kind, literal), segment, norm in zip(ops, segments, normalized, strict=False):
            if kind == _LITERAL:
                if norm != literal:
                    return None
            elif not segment:
                return None
        out: dict[str, str] = {}
        for b in self._bindings:
            raw = "/".join(segments[b.start : b.end])
            out[b.name] = _decode(raw, keep_slash=b.multi)
        return out

    def match(self, path: str) -> dict[str, str] | None:
        """Split ``path`` and match it; raises ``BadPath`` for a malformed path."""
        return self.match_view(split_path(path))

    def __repr__(self) -> str:
        return f"Matcher({str(self.template)!r})"


@functools.lru_cache(maxsize=1024)
def compile_template(template: Template) -> Matcher:
    """Compile (cached: templates are frozen and hashable)."""
    return Matcher(template)


def match(template: Template, path: str) -> dict[str, str] | None:
    """Match ``path`` against ``template``: bindings, or ``None`` when it does not match.

    Raises ``BadPath`` for a malformed path, whether or not it would have matched.

    >>> from hms_gateway.template.parse import parse_template
    >>> match(parse_template("/v1/{name}"), "/v1/a%2Fb")
    {'name': 'a/b'}
    """
    return compile_template(template).match(path)
