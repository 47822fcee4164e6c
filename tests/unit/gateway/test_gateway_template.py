"""Path templates: parse (tree, errors) and match (bindings, percent-decoding, verbs)."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hms_gateway.template import (
    BadPath,
    DeepWildcard,
    Literal,
    Template,
    TemplateError,
    Variable,
    Wildcard,
    match,
    parse_template,
)

# --- parse: the tree -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "tree"),
    [
        pytest.param("/", Template(()), id="root"),
        pytest.param("/v1/shelves", Template((Literal("v1"), Literal("shelves"))), id="literals"),
        pytest.param("/v1/*", Template((Literal("v1"), Wildcard())), id="star"),
        pytest.param("/v1/**", Template((Literal("v1"), DeepWildcard())), id="deep"),
        pytest.param("/v1/{x}", Template((Literal("v1"), Variable(("x",)))), id="var"),
        pytest.param(
            "/v1/{x=*}", Template((Literal("v1"), Variable(("x",), (Wildcard(),)))), id="var-star"
        ),
        pytest.param(
            "/{x=a/*}",
            Template((Variable(("x",), (Literal("a"), Wildcard())),)),
            id="var-literal-star",
        ),
        pytest.param(
            "/{x=a/**}",
            Template((Variable(("x",), (Literal("a"), DeepWildcard())),)),
            id="var-literal-deep",
        ),
        pytest.param(
            "/v1/{book.name=shelves/*/books/*}",
            Template(
                (
                    Literal("v1"),
                    Variable(
                        ("book", "name"),
                        (Literal("shelves"), Wildcard(), Literal("books"), Wildcard()),
                    ),
                )
            ),
            id="nested-field-path",
        ),
        pytest.param(
            "/v1/{name}:publish",
            Template((Literal("v1"), Variable(("name",))), "publish"),
            id="verb",
        ),
        pytest.param(
            "/v1/**:undelete", Template((Literal("v1"), DeepWildcard()), "undelete"), id="deep-verb"
        ),
        pytest.param(
            "/v1/{a}/{b_2.c}",
            Template((Literal("v1"), Variable(("a",)), Variable(("b_2", "c")))),
            id="two-vars",
        ),
        pytest.param(
            "/v1/a-b.c~d_e%2F!$&'()+,;@",
            Template((Literal("v1"), Literal("a-b.c~d_e%2F!$&'()+,;@"))),
            id="literal-pchars",
        ),
    ],
)
def test_parse_tree(text: str, tree: Template) -> None:
    parsed = parse_template(text)
    assert parsed == tree
    assert parse_template(str(parsed)) == parsed


def test_variable_properties() -> None:
    t = parse_template("/{a}/{b=x/*}/{c.d=**}")
    assert [v.name for v in t.variables] == ["a", "b", "c.d"]
    assert [v.multi_segment for v in t.variables] == [False, True, True]
    assert str(t) == "/{a}/{b=x/*}/{c.d=**}"


# --- parse: errors, each named -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "position", "fragment"),
    [
        pytest.param("", 0, "'/' at the start", id="empty"),
        pytest.param("v1/a", 0, "'/' at the start", id="no-leading-slash"),
        pytest.param("/v1/", 4, "a segment", id="trailing-slash"),
        pytest.param("/a//b", 3, "a segment", id="empty-segment"),
        pytest.param("/v1/**/a", 4, "'**' must be the last", id="deep-not-last"),
        pytest.param("/{x=**}/a", 4, "'**' must be the last", id="deep-in-var-not-last"),
        pytest.param("/{x=**}/{y}", 4, "'**' must be the last", id="deep-var-then-var"),
        pytest.param("/{a}/{a}", 5, "bound twice", id="duplicate-var"),
        pytest.param("/{x={y}}", 4, "variables do not nest", id="nested-var"),
        pytest.param("/{x", 3, "'.', '=' or '}'", id="unclosed-var"),
        pytest.param("/{x=a", 5, "'/' or '}'", id="unclosed-var-segments"),
        pytest.param("/{}", 2, "a field name", id="empty-field"),
        pytest.param("/{1x}", 2, "a field name", id="field-digit-first"),
        pytest.param("/{x.}", 4, "a field name", id="field-trailing-dot"),
        pytest.param("/{x=}", 4, "a segment", id="var-empty-pattern"),
        pytest.param("/v1:", 4, "a verb", id="empty-verb"),
        pytest.param("/v1:a/b", 5, "end of template", id="slash-after-verb"),
        pytest.param("/v1:a:b", 5, "end of template", id="two-verbs"),
        pytest.param("/v1/*a", 5, "'/', ':' or end of template", id="star-then-text"),
        pytest.param("/***", 3, "'/', ':' or end of template", id="triple-star"),
        pytest.param("/a%zz", 2, "percent escape", id="bad-escape"),
        pytest.param("/a%4", 2, "percent escape", id="short-escape"),
        pytest.param("/a b", 2, "'/', ':' or end of template", id="space"),
        pytest.param("/a?b", 2, "'/', ':' or end of template", id="query-char"),
        pytest.param("/a}", 2, "'/', ':' or end of template", id="stray-brace"),
        pytest.param("//", 1, "a segment", id="double-slash"),
    ],
)
def test_parse_errors(text: str, position: int, fragment: str) -> None:
    with pytest.raises(TemplateError) as info:
        parse_template(text)
    assert info.value.position == position
    assert fragment in str(info.value)
    assert isinstance(info.value, ValueError)


@given(st.text(max_size=40))
def test_parse_arbitrary_text_raises_only_template_error(text: str) -> None:
    with contextlib.suppress(TemplateError):
        parse_template(text)


_ALPHABET = st.sampled_from(["/", "*", "**", "{", "}", "=", ".", ":", "a", "b", "x", "%2F", "%"])


@given(st.lists(_ALPHABET, max_size=20).map("".join))
def test_parse_grammar_soup_round_trips_or_raises_template_error(text: str) -> None:
    try:
        tree = parse_template(text)
    except TemplateError:
        return
    assert parse_template(str(tree)) == tree


# --- match ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "path", "bindings"),
    [
        pytest.param("/", "/", {}, id="root"),
        pytest.param("/", "/a", None, id="root-no-match"),
        pytest.param("/v1/shelves", "/v1/shelves", {}, id="literal"),
        pytest.param("/v1/shelves", "/v1/shelves/", None, id="literal-trailing-slash"),
        pytest.param("/v1/shelves", "/v1/books", None, id="literal-differs"),
        pytest.param("/v1/%7Efoo", "/v1/~foo", {}, id="literal-normalised-unreserved"),
        pytest.param("/v1/a%2fb", "/v1/a%2Fb", {}, id="literal-escape-case"),
        pytest.param("/v1/a%2Fb", "/v1/a/b", None, id="literal-encoded-slash-is-not-slash"),
        pytest.param("/v1/*", "/v1/x", {}, id="star"),
        pytest.param("/v1/*", "/v1/", None, id="star-not-empty"),
        pytest.param("/v1/*", "/v1/x/y", None, id="star-one-segment"),
        pytest.param("/v1/**", "/v1", {}, id="deep-zero"),
        pytest.param("/v1/**", "/v1/x/y/z", {}, id="deep-many"),
        pytest.param("/v1/{x}", "/v1/abc", {"x": "abc"}, id="var"),
        pytest.param("/v1/{x=*}", "/v1/abc", {"x": "abc"}, id="var-star"),
        pytest.param("/v1/{x}", "/v1/a/b", None, id="var-one-segment"),
        pytest.param("/{x=a/*}", "/a/b", {"x": "a/b"}, id="var-literal-star"),
        pytest.param("/{x=a/*}", "/c/b", None, id="var-literal-star-literal-differs"),
        pytest.param("/{x=a/**}", "/a", {"x": "a"}, id="var-literal-deep-zero"),
        pytest.param("/{x=a/**}", "/a/b/c", {"x": "a/b/c"}, id="var-literal-deep-many"),
        pytest.param("/{x=**}", "/", {"x": ""}, id="var-deep-root"),
        pytest.param(
            "/v1/{book.name=shelves/*/books/*}",
            "/v1/shelves/s1/books/b2",
            {"book.name": "shelves/s1/books/b2"},
            id="nested-field",
        ),
        pytest.param(
            "/v1/{book.name=shelves/*/books/*}", "/v1/shelves/s1/books", None, id="nested-short"
        ),
        pytest.param("/v1/{a}/x/{b}", "/v1/1/x/2", {"a": "1", "b": "2"}, id="two-vars"),
        # verbs
        pytest.param("/v1/{name}:publish", "/v1/a:publish", {"name": "a"}, id="verb"),
        pytest.param("/v1/{name}:publish", "/v1/a", None, id="verb-missing"),
        pytest.param("/v1/{name}:publish", "/v1/a:cancel", None, id="verb-other"),
        pytest.param(
            "/v1/{name}:publish", "/v1/a:b:publish", {"name": "a:b"}, id="verb-last-colon"
        ),
        pytest.param("/v1/{name}:publish", "/v1/a%3Apublish", None, id="verb-encoded-colon"),
        pytest.param("/v1/{n=**}:undelete", "/v1/a/b:undelete", {"n": "a/b"}, id="verb-after-deep"),
        pytest.param("/v1/**:go", "/v1:go", {}, id="verb-deep-zero"),
        pytest.param("/v1/{name}", "/v1/a:publish", {"name": "a:publish"}, id="no-verb-colon-data"),
        pytest.param("/v1/a:b", "/v1/a:b", {}, id="literal-with-verb"),
        # percent-decoding
        pytest.param("/v1/{x}", "/v1/a%2Fb", {"x": "a/b"}, id="single-decodes-slash"),
        pytest.param("/v1/{x}", "/v1/a%2fb", {"x": "a/b"}, id="single-decodes-lower-slash"),
        pytest.param("/v1/{x}", "/v1/a%20b%3F", {"x": "a b?"}, id="single-decodes-all"),
        pytest.param("/v1/{x}", "/v1/%C3%A9t%C3%A9", {"x": "été"}, id="single-utf8"),
        pytest.param("/v1/{x=**}", "/v1/a%2Fb/c", {"x": "a%2Fb/c"}, id="multi-keeps-slash"),
        pytest.param("/v1/{x=**}", "/v1/a%2fb", {"x": "a%2fb"}, id="multi-keeps-lower-slash"),
        pytest.param(
            "/v1/{x=a/*}", "/v1/a/b%20c%2Fd", {"x": "a/b c%2Fd"}, id="multi-decodes-others"
        ),
        pytest.param("/v1/{x=**}", "/v1/%25", {"x": "%"}, id="multi-decodes-percent"),
        pytest.param("/v1/{x=**}", "/v1/a//b/", {"x": "a//b/"}, id="deep-keeps-empty-segments"),
    ],
)
def test_match(template: str, path: str, bindings: dict[str, str] | None) -> None:
    assert match(parse_template(template), path) == bindings


@pytest.mark.parametrize(
    ("template", "path"),
    [
        pytest.param("/v1/{x}", "/v1/%zz", id="non-hex"),
        pytest.param("/v1/{x}", "/v1/%4", id="short"),
        pytest.param("/v1/{x}", "/v1/a%", id="bare-percent"),
        pytest.param("/v1/lit", "/v1/%zz", id="malformed-even-without-match"),
        pytest.param("/v1/{x}", "/v1/%FF", id="single-not-utf8"),
        pytest.param("/v1/{x=**}", "/v1/%C3", id="multi-not-utf8"),
        pytest.param("/v1/{x}", "v1/a", id="no-leading-slash"),
        pytest.param("/v1/{x}", "", id="empty"),
    ],
)
def test_match_bad_path(template: str, path: str) -> None:
    with pytest.raises(BadPath):
        match(parse_template(template), path)


@given(st.text(max_size=40))
def test_match_arbitrary_path_raises_only_bad_path(path: str) -> None:
    template = parse_template("/v1/{name=shelves/*}/{rest=**}:go")
    with contextlib.suppress(BadPath):
        match(template, path)
