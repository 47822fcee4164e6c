"""Parse a ``google.api.http`` path template into a tree of frozen dataclasses.

The grammar (google/api/http.proto)::

    Template = "/" Segments [ Verb ] ;
    Segments = Segment { "/" Segment } ;
    Segment  = "*" | "**" | LITERAL | Variable ;
    Variable = "{" FieldPath [ "=" Segments ] "}" ;
    FieldPath = IDENT { "." IDENT } ;
    Verb     = ":" LITERAL ;

Rules on top of the grammar, each a ``TemplateError``: ``**`` only as the last segment (of the
whole template, variables included); variables do not nest; a field path is bound once. The bare
template ``"/"`` (no segment) is accepted for a root route, as grpc-gateway does.

LITERAL characters are RFC 3986 ``pchar`` without ``:`` (it starts the verb) and without ``*``
and ``=`` (kept for the grammar): unreserved, ``%HH`` escapes and ``!$&'()+,;@``.

Example::

    >>> parse_template("/v1/{book.name=shelves/*/books/*}").variables[0].name
    'book.name'
"""

from __future__ import annotations

import string
from dataclasses import dataclass

__all__ = [
    "DeepWildcard",
    "Literal",
    "Segment",
    "Template",
    "TemplateError",
    "Variable",
    "Wildcard",
    "parse_template",
]

_LITERAL_CHARS = frozenset(string.ascii_letters + string.digits + "-._~" + "!$&'()+,;@")
_IDENT_START = frozenset(string.ascii_letters + "_")
_IDENT_CHARS = frozenset(string.ascii_letters + string.digits + "_")
_HEX = frozenset(string.hexdigits)


class TemplateError(ValueError):
    """A path template that does not follow the grammar.

    ``position`` is the 0-based index into ``text`` where the problem is; ``expected`` says
    what the parser wanted there.
    """

    def __init__(self, text: str, position: int, expected: str, problem: str = "") -> None:
        found = repr(text[position]) if position < len(text) else "end of template"
        detail = problem or f"expected {expected}, found {found}"
        super().__init__(f"bad path template {text!r} at position {position}: {detail}")
        self.text = text
        self.position = position
        self.expected = expected


@dataclass(frozen=True, slots=True)
class Literal:
    """A segment matched verbatim (after RFC 3986 normalisation of escapes)."""

    value: str

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class Wildcard:
    """``*``: exactly one non-empty path segment."""

    def __str__(self) -> str:
        return "*"


@dataclass(frozen=True, slots=True)
class DeepWildcard:
    """``**``: zero or more path segments; only ever the last segment."""

    def __str__(self) -> str:
        return "**"


Segment = Literal | Wildcard | DeepWildcard


@dataclass(frozen=True, slots=True)
class Variable:
    """``{field.path=segments}``; ``{x}`` is ``{x=*}``."""

    field_path: tuple[str, ...]
    segments: tuple[Segment, ...] = (Wildcard(),)

    @property
    def name(self) -> str:
        """The dotted field path, the key of this variable's binding."""
        return ".".join(self.field_path)

    @property
    def multi_segment(self) -> bool:
        """True when the variable may span several segments (then ``%2F`` stays encoded)."""
        return len(self.segments) > 1 or isinstance(self.segments[0], DeepWildcard)

    def __str__(self) -> str:
        if self.segments == (Wildcard(),):
            return "{" + self.name + "}"
        return "{" + self.name + "=" + "/".join(map(str, self.segments)) + "}"


@dataclass(frozen=True, slots=True)
class Template:
    """A parsed template; ``str(template)`` is its canonical text."""

    segments: tuple[Segment | Variable, ...]
    verb: str | None = None

    @property
    def variables(self) -> tuple[Variable, ...]:
        return tuple(s for s in self.segments if isinstance(s, Variable))

    def flat(self) -> tuple[Segment, ...]:
        """The segments with variables expanded: what the path is matched against."""
        out: list[Segment] = []
        for seg in self.segments:
            out.extend(seg.segments if isinstance(seg, Variable) else (seg,))
        return tuple(out)

    def __str__(self) -> str:
        verb = "" if self.verb is None else ":" + self.verb
        return "/" + "/".join(map(str, self.segments)) + verb


def parse_template(text: str) -> Template:
    """Parse ``text``; raise ``TemplateError`` naming the position and what was expected.

    >>> parse_template("/v1/{name=messages/*}:cancel")
    Template(segments=(Literal(value='v1'), Variable(field_path=('name',), \
segments=(Literal(value='messages'), Wildcard()))), verb='cancel')
    """
    return _Parser(text).template()


class _Parser:
    """Recursive descent over the characters of one template."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        # (position, segment) of every flattened segment, for the `**`-is-last rule.
        self.flat: list[tuple[int, Segment]] = []
        self.names: set[str] = set()

    def _peek(self, ahead: int = 0) -> str:
        i = self.pos + ahead
        return self.text[i] if i < len(self.text) else ""

    def _fail(self, expected: str, position: int | None = None, problem: str = "") -> TemplateError:
        where = self.pos if position is None else position
        return TemplateError(self.text, where, expected, problem)

    def template(self) -> Template:
        if self._peek() != "/":
            raise self._fail("'/' at the start of the template")
        self.pos += 1
        if self.text == "/":
            return Template(())
        segments = self._segments(in_variable=False)
        verb = None
        if self._peek() == ":":
            self.pos += 1
            verb = self._literal("a verb (a literal after ':')")
        if self.pos != len(self.text):
            raise self._fail(
                "end of template" if verb is not None else "'/', ':' or end of template"
            )
        for i, (position, seg) in enumerate(self.flat):
            if isinstance(seg, DeepWildcard) and i != len(self.flat) - 1:
                raise self._fail(
                    "'**' only as the last segment",
                    position,
                    "'**' must be the last segment (only a verb may follow it)",
                )
        return Template(tuple(segments), verb)

    def _segments(self, *, in_variable: bool) -> list[Segment | Variable]:
        out = [self._segment(in_variable=in_variable)]
        while self._peek() == "/":
            self.pos += 1
            out.append(self._segment(in_variable=in_variable))
        return out

    def _segment(self, *, in_variable: bool) -> Segment | Variable:
        start = self.pos
        seg: Segment
        if self._peek() == "*":
            if self._peek(1) == "*":
                self.pos += 2
                seg = DeepWildcard()
            else:
                self.pos += 1
                seg = Wildcard()
        elif self._peek() == "{":
            if in_variable:
                raise self._fail("a literal, '*' or '**' (variables do not nest)")
            return self._variable()
        else:
            seg = Literal(self._literal("a segment: a literal, '*', '**' or '{'"))
        self.flat.append((start, seg))
        return seg

    def _literal(self, expected: str) -> str:
        start = self.pos
        while True:
            c = self._peek()
            if c in _LITERAL_CHARS:
                self.pos += 1
            elif c == "%":
                if self._peek(1) not in _HEX or self._peek(2) not in _HEX:
                    raise self._fail("a percent escape '%' HEX HEX")
                self.pos += 3
            else:
                break
        if self.pos == start:
            raise self._fail(expected)
        return self.text[start : self.pos]

    def _variable(self) -> Variable:
        start = self.pos
        self.pos += 1  # "{"
        field_path = [self._ident()]
        while self._peek() == ".":
            self.pos += 1
            field_path.append(self._ident())
        name = ".".join(field_path)
        if name in self.names:
            raise self._fail("each field bound once", start, f"field {name!r} is bound twice")
        self.names.add(name)
        if self._peek() == "=":
            self.pos += 1
            segments = self._segments(in_variable=True)
            expected = "'/' or '}'"
        else:
            self.flat.append((self.pos, Wildcard()))
            segments = [Wildcard()]
            expected = "'.', '=' or '}'"
        if self._peek() != "}":
            raise self._fail(expected)
        self.pos += 1
        # _segments(in_variable=True) never yields a Variable; the filter keeps typing exact.
        return Variable(
            tuple(field_path), tuple(s for s in segments if not isinstance(s, Variable))
        )

    def _ident(self) -> str:
        start = self.pos
        if self._peek() not in _IDENT_START:
            raise self._fail("a field name (letter or '_' first)")
        while self._peek() in _IDENT_CHARS:
            self.pos += 1
        return self.text[start : self.pos]
