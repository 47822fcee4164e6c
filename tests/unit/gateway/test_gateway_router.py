"""Router: precedence, 404 vs 405 with Allow in one pass, add/remove."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hms_gateway.router import Match, MethodNotAllowed, NotFound, Router, specificity
from hms_gateway.template import BadPath, TemplateError, parse_template

_ROUTES = [
    ("GET", "/v1/{x=**}", "deep"),
    ("GET", "/v1/{x}", "star"),
    ("GET", "/v1/lit", "literal"),
    ("GET", "/v1/lit/{y}", "literal-star"),
    ("GET", "/v1/{x}/lit", "star-literal"),
    ("POST", "/v1/lit", "post-literal"),
    ("DELETE", "/v1/{x}/lit", "delete"),
    ("GET", "/v1/{name}:publish", "verb"),
    ("POST", "/v2/{name=shelves/*}:publish", "post-verb"),
    ("GET", "/", "root"),
]


def _router() -> Router[str]:
    router: Router[str] = Router()
    for method, template, payload in _ROUTES:
        router.add(method, template, payload)
    return router


@pytest.mark.parametrize(
    ("method", "path", "payload", "bindings"),
    [
        pytest.param("GET", "/v1/lit", "literal", {}, id="literal-beats-star-and-deep"),
        pytest.param("GET", "/v1/other", "star", {"x": "other"}, id="star-beats-deep"),
        pytest.param("GET", "/v1/a/b/c", "deep", {"x": "a/b/c"}, id="deep-fallback"),
        pytest.param("GET", "/v1", "deep", {"x": ""}, id="deep-zero"),
        pytest.param("GET", "/v1/lit/z", "literal-star", {"y": "z"}, id="first-difference-decides"),
        pytest.param("GET", "/v1/q/lit", "star-literal", {"x": "q"}, id="star-literal"),
        pytest.param("get", "/v1/lit", "literal", {}, id="method-case"),
        pytest.param("POST", "/v1/lit", "post-literal", {}, id="same-path-other-method"),
        pytest.param("GET", "/v1/a:publish", "verb", {"name": "a"}, id="verb-beats-colon-data"),
        pytest.param("GET", "/v1/a:cancel", "star", {"x": "a:cancel"}, id="other-verb-is-data"),
        pytest.param(
            "POST", "/v2/shelves/s:publish", "post-verb", {"name": "shelves/s"}, id="post-verb"
        ),
        pytest.param("GET", "/", "root", {}, id="root"),
    ],
)
def test_resolve_match(method: str, path: str, payload: str, bindings: dict[str, str]) -> None:
    result = _router().resolve(method, path)
    assert isinstance(result, Match)
    assert result.route.payload == payload
    assert result.bindings == bindings


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        pytest.param("GET", "/v2/x", NotFound(), id="404-unknown-prefix"),
        pytest.param("POST", "/v2/shelves/", NotFound(), id="404-empty-segment"),
        pytest.param("PUT", "/nope", NotFound(), id="404-other-method-too"),
        pytest.param("PUT", "/v1/lit", MethodNotAllowed(("GET", "POST")), id="405-allow-sorted"),
        pytest.param(
            "PATCH", "/v1/q/lit", MethodNotAllowed(("DELETE", "GET")), id="405-two-methods"
        ),
        pytest.param("POST", "/v1/q", MethodNotAllowed(("GET",)), id="405-only-get"),
        pytest.param(
            "GET", "/v2/shelves/s:publish", MethodNotAllowed(("POST",)), id="405-verb-route"
        ),
        pytest.param("DELETE", "/", MethodNotAllowed(("GET",)), id="405-root"),
    ],
)
def test_resolve_not_found_or_not_allowed(
    method: str, path: str, expected: NotFound | MethodNotAllowed
) -> None:
    assert _router().resolve(method, path) == expected


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/v1/%zz", id="non-hex"),
        pytest.param("/v1/%4", id="short"),
        pytest.param("/nomatch/%", id="malformed-even-when-404"),
        pytest.param("v1/lit", id="no-slash"),
    ],
)
def test_resolve_bad_path(path: str) -> None:
    with pytest.raises(BadPath):
        _router().resolve("GET", path)


def test_ties_keep_registration_order() -> None:
    router: Router[str] = Router()
    router.add("GET", "/v1/{a}", "first")
    router.add("GET", "/v1/{b}", "second")
    result = router.resolve("GET", "/v1/x")
    assert isinstance(result, Match)
    assert result.route.payload == "first"
    assert result.bindings == {"a": "x"}


def test_more_segments_win_over_prefix() -> None:
    router: Router[str] = Router()
    router.add("GET", "/v1/{a=**}", "deep")
    router.add("GET", "/v1/{a=x/**}", "longer-deep")
    result = router.resolve("GET", "/v1/x/y")
    assert isinstance(result, Match)
    assert result.route.payload == "longer-deep"


def test_routes_sorted_most_specific_first() -> None:
    ordered = [route.payload for route in _router().routes]
    assert ordered.index("literal") < ordered.index("star") < ordered.index("deep")
    keys = [specificity(route.template) for route in _router().routes]
    assert keys == sorted(keys)


def test_specificity_order() -> None:
    lit, star, deep = (specificity(parse_template(t)) for t in ("/a/b", "/a/*", "/a/**"))
    assert lit < star < deep
    assert specificity(parse_template("/a/*:v")) < specificity(parse_template("/a/*"))


def test_remove_payloads() -> None:
    router = _router()
    removed = router.remove_payloads(lambda payload: payload.startswith("post"))
    assert sorted(route.payload for route in removed) == ["post-literal", "post-verb"]
    assert len(router) == len(_ROUTES) - 2
    assert router.resolve("POST", "/v1/lit") == MethodNotAllowed(("GET",))
    assert router.resolve("POST", "/v2/shelves/s:publish") == NotFound()


def test_add_returns_route_and_accepts_parsed_template() -> None:
    router: Router[int] = Router()
    route = router.add("patch", parse_template("/v1/{x}"), 7)
    assert route.method == "PATCH"
    assert route.payload == 7
    assert router.routes == (route,)


@pytest.mark.parametrize(
    ("method", "template", "error"),
    [
        pytest.param("GET", "/v1/**/x", TemplateError, id="bad-template"),
        pytest.param("", "/v1", ValueError, id="empty-method"),
        pytest.param("GE T", "/v1", ValueError, id="method-with-space"),
    ],
)
def test_add_rejects(method: str, template: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        Router().add(method, template, None)


_METHODS = st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "get"])


@given(_METHODS, st.text(max_size=60))
def test_resolve_arbitrary_path_raises_only_bad_path(method: str, path: str) -> None:
    try:
        result = _router().resolve(method, path)
    except BadPath:
        return
    assert isinstance(result, Match | NotFound | MethodNotAllowed)


_PATH_PARTS = st.sampled_from(["/", "v1", "v2", "lit", "a", ":", "publish", "%2F", "%2", "%C3"])


@given(_METHODS, st.lists(_PATH_PARTS, max_size=12).map(lambda parts: "/" + "".join(parts)))
def test_resolve_path_soup_raises_only_bad_path(method: str, path: str) -> None:
    try:
        result = _router().resolve(method, path)
    except BadPath:
        return
    if isinstance(result, MethodNotAllowed):
        assert list(result.allow) == sorted(set(result.allow))
        assert method.upper() not in result.allow
