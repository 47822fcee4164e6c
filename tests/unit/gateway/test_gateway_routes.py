"""RouteTable: per-service replacement, versions, resolution, duplicate templates."""

from __future__ import annotations

import logging

import pytest
from google.api import http_pb2
from google.protobuf import descriptor_pb2

from hms.testing.v1 import echo_pb2, mirror_pb2
from hms_gateway.endpoint import Endpoint, endpoints_of
from hms_gateway.router import Match, MethodNotAllowed, NotFound
from hms_gateway.routes import RouteTable
from hms_gateway.template import BadPath

from .built_services import service_with_rules

_F = descriptor_pb2.FieldDescriptorProto
_ECHO_NAME = "hms.testing.v1.EchoService"
_MIRROR_NAME = "hms.testing.v1.MirrorService"
_ECHO = echo_pb2.DESCRIPTOR.services_by_name["EchoService"]
_MIRROR = mirror_pb2.DESCRIPTOR.services_by_name["MirrorService"]


def _endpoints(full_name: str, rules: dict[str, http_pb2.HttpRule]) -> list[Endpoint]:
    return list(endpoints_of(service_with_rules(full_name, rules)))


def _payload_path(table: RouteTable, method: str, path: str) -> str | None:
    found = table.resolve(method, path)
    return found.route.payload.path if isinstance(found, Match) else None


def _table() -> RouteTable:
    table = RouteTable()
    table.set_service(_ECHO_NAME, endpoints_of(_ECHO))
    table.set_service(_MIRROR_NAME, endpoints_of(_MIRROR))
    return table


# -- resolve --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "target", "bindings"),
    [
        pytest.param("POST", "/v1/echo", f"/{_ECHO_NAME}/Echo", {}, id="echo"),
        pytest.param("POST", "/v1/echo:once", f"/{_ECHO_NAME}/EchoOnce", {}, id="echo-verb"),
        pytest.param(
            "GET",
            "/v1/shelves/s1/books/b1",
            f"/{_MIRROR_NAME}/GetBook",
            {"name": "shelves/s1/books/b1"},
            id="mirror-multi-segment",
        ),
        pytest.param(
            "GET", "/v1/items/special", f"/{_MIRROR_NAME}/GetSpecialItem", {}, id="literal-wins"
        ),
        pytest.param("GET", "/v1/items/x", f"/{_MIRROR_NAME}/GetItem", {"id": "x"}, id="variable"),
        pytest.param(
            "get", "/v1/lookup-by-name/n", f"/{_MIRROR_NAME}/Lookup", {"name": "n"}, id="binding"
        ),
        pytest.param("POST", "/v1/lookup", f"/{_MIRROR_NAME}/Lookup", {}, id="post-binding"),
        pytest.param("POST", "/v1/gather", f"/{_MIRROR_NAME}/Gather", {}, id="client-streaming"),
    ],
)
def test_resolve_match(method: str, path: str, target: str, bindings: dict[str, str]) -> None:
    found = _table().resolve(method, path)
    assert isinstance(found, Match)
    assert found.route.payload.path == target
    assert dict(found.bindings) == bindings


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        pytest.param("GET", "/v1/nothing", NotFound(), id="unknown-path"),
        pytest.param("GET", "/", NotFound(), id="root"),
        pytest.param("GET", "/v1/echo", MethodNotAllowed(("POST",)), id="get-on-post"),
        pytest.param(
            "PUT",
            "/v1/shelves/s/books/b",
            MethodNotAllowed(("DELETE", "GET", "PATCH")),
            id="allow-sorted",
        ),
        pytest.param("DELETE", "/v1/lookup", MethodNotAllowed(("POST",)), id="binding-405"),
    ],
)
def test_resolve_miss(method: str, path: str, expected: object) -> None:
    assert _table().resolve(method, path) == expected


def test_resolve_empty_table() -> None:
    assert RouteTable().resolve("GET", "/v1/echo") == NotFound()


def test_resolve_bad_path() -> None:
    with pytest.raises(BadPath):
        _table().resolve("GET", "/v1/items/%zz")


# -- set_service / drop_service / version ---------------------------------------------------


def test_set_service_replaces_all_routes() -> None:
    table = RouteTable()
    table.set_service(_ECHO_NAME, endpoints_of(_ECHO))
    old = {"Old": http_pb2.HttpRule(get="/v1/old"), "Both": http_pb2.HttpRule(get="/v1/both")}
    new = {"New": http_pb2.HttpRule(get="/v1/new"), "Both": http_pb2.HttpRule(post="/v1/both")}
    table.set_service("shop.v1.Shop", _endpoints("shop.v1.Shop", old))
    assert _payload_path(table, "GET", "/v1/old") == "/shop.v1.Shop/Old"
    assert _payload_path(table, "GET", "/v1/both") == "/shop.v1.Shop/Both"

    table.set_service("shop.v1.Shop", _endpoints("shop.v1.Shop", new))
    assert table.resolve("GET", "/v1/old") == NotFound()
    assert table.resolve("GET", "/v1/both") == MethodNotAllowed(("POST",))
    assert _payload_path(table, "GET", "/v1/new") == "/shop.v1.Shop/New"
    assert _payload_path(table, "POST", "/v1/both") == "/shop.v1.Shop/Both"
    assert [e.method.name for e in table.services()["shop.v1.Shop"]] == ["New", "Both"]
    # Other services are untouched.
    assert _payload_path(table, "POST", "/v1/echo") == f"/{_ECHO_NAME}/Echo"


def test_set_service_with_nothing_clears_routes() -> None:
    table = RouteTable()
    table.set_service(_ECHO_NAME, endpoints_of(_ECHO))
    table.set_service(_ECHO_NAME, [])
    assert table.resolve("POST", "/v1/echo") == NotFound()
    assert table.services() == {_ECHO_NAME: ()}
    assert table.endpoints() == []


def test_failed_endpoints_keep_the_old_routes() -> None:
    """An iterable that fails (a bad rule) leaves the service as it was."""
    table = RouteTable()
    table.set_service(
        "shop.v1.Shop", _endpoints("shop.v1.Shop", {"A": http_pb2.HttpRule(get="/v1/a")})
    )
    version = table.version
    bad = service_with_rules(
        "shop.v1.Shop",
        {
            "B": http_pb2.HttpRule(get="/v1/b"),
            "C": http_pb2.HttpRule(post="/v1/c", body="missing"),
        },
    )
    with pytest.raises(ValueError, match="missing"):
        table.set_service("shop.v1.Shop", endpoints_of(bad))
    assert _payload_path(table, "GET", "/v1/a") == "/shop.v1.Shop/A"
    assert table.resolve("GET", "/v1/b") == NotFound()
    assert table.version == version


def test_refused_route_keeps_the_old_routes() -> None:
    table = RouteTable()
    table.set_service(
        "shop.v1.Shop", _endpoints("shop.v1.Shop", {"A": http_pb2.HttpRule(get="/v1/a")})
    )
    version = table.version
    fresh = _endpoints(
        "shop.v1.Shop",
        {
            "B": http_pb2.HttpRule(get="/v1/b"),
            "C": http_pb2.HttpRule(
                custom=http_pb2.CustomHttpPattern(kind="my-method", path="/v1/c")
            ),
        },
    )
    assert [e.mapping.http_method for e in fresh] == ["GET", "MY-METHOD"]
    with pytest.raises(ValueError, match="MY-METHOD"):
        table.set_service("shop.v1.Shop", fresh)
    assert table.resolve("GET", "/v1/b") == NotFound()
    assert _payload_path(table, "GET", "/v1/a") == "/shop.v1.Shop/A"
    assert table.version == version


def test_version_counts_changes() -> None:
    table = RouteTable()
    assert table.version == 0
    table.set_service(_ECHO_NAME, endpoints_of(_ECHO))
    assert table.version == 1
    table.set_service(_ECHO_NAME, endpoints_of(_ECHO))  # same routes again: still a change
    assert table.version == 2
    table.set_service(_MIRROR_NAME, endpoints_of(_MIRROR))
    assert table.version == 3
    table.drop_service(_ECHO_NAME)
    assert table.version == 4
    table.drop_service(_ECHO_NAME)  # already gone: nothing changed
    table.drop_service("x.Unknown")
    assert table.version == 4
    table.set_service(_ECHO_NAME, [])
    assert table.version == 5
    table.drop_service(_ECHO_NAME)  # an empty service is still a service
    assert table.version == 6


def test_drop_service() -> None:
    table = _table()
    table.drop_service(_ECHO_NAME)
    assert table.resolve("POST", "/v1/echo") == NotFound()
    assert _payload_path(table, "GET", "/v1/items/x") == f"/{_MIRROR_NAME}/GetItem"
    assert list(table.services()) == [_MIRROR_NAME]
    assert {e.service for e in table.endpoints()} == {_MIRROR_NAME}


# -- duplicates -----------------------------------------------------------------------------

_SAME = {"Get": http_pb2.HttpRule(get="/v1/things/{name}")}


def test_same_template_first_owns_it_and_the_newcomer_is_refused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    table = RouteTable()
    with caplog.at_level(logging.WARNING, logger="hms_gateway.routes"):
        table.set_service("alpha.v1.Alpha", _endpoints("alpha.v1.Alpha", _SAME))
        assert caplog.records == []
        table.set_service("beta.v1.Beta", _endpoints("beta.v1.Beta", _SAME))
    assert _payload_path(table, "GET", "/v1/things/t") == "/alpha.v1.Alpha/Get"
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert record.getMessage() == (
        "route refused: GET /v1/things/{name} of beta.v1.Beta (/beta.v1.Beta/Get) would take "
        "requests from GET /v1/things/{name} of alpha.v1.Alpha, which has it already"
    )
    (refusal,) = table.refusals()
    assert (refusal.service, refusal.owner) == ("beta.v1.Beta", "alpha.v1.Alpha")
    assert table.services()["beta.v1.Beta"] == ()
    # Learning the owner again keeps its ownership.
    table.set_service("alpha.v1.Alpha", _endpoints("alpha.v1.Alpha", _SAME))
    assert _payload_path(table, "GET", "/v1/things/t") == "/alpha.v1.Alpha/Get"


def test_a_departed_owner_gives_way_and_the_refused_are_learnt_again() -> None:
    table = RouteTable()
    table.set_service("alpha.v1.Alpha", _endpoints("alpha.v1.Alpha", _SAME))
    table.set_service("beta.v1.Beta", _endpoints("beta.v1.Beta", _SAME))
    assert table.depart("alpha.v1.Alpha") == ["beta.v1.Beta"]
    # Until something replaces them, a departed service's routes stay (and answer 503).
    assert _payload_path(table, "GET", "/v1/things/t") == "/alpha.v1.Alpha/Get"
    table.set_service("beta.v1.Beta", _endpoints("beta.v1.Beta", _SAME))
    assert _payload_path(table, "GET", "/v1/things/t") == "/beta.v1.Beta/Get"
    assert table.refusals() == []
    assert table.depart("nobody.v1.Nobody") == []


_RULES = {"Get": http_pb2.HttpRule(get="/v1/rules/{name}")}
_ONE_RULE = {"Get": http_pb2.HttpRule(get="/v1/rules/MAX_INCOME")}
_CATCH_ALL = {"Get": http_pb2.HttpRule(get="/v1/{name=**}")}
_OTHER = {"Get": http_pb2.HttpRule(get="/v2/rules/{name}")}


@pytest.mark.parametrize(
    ("first", "second", "refused"),
    [
        pytest.param(_RULES, _ONE_RULE, True, id="more-specific-inside-a-variable"),
        pytest.param(_ONE_RULE, _RULES, True, id="general-after-a-specific-one"),
        pytest.param(_RULES, _CATCH_ALL, True, id="catch-all-over-a-route"),
        pytest.param(_RULES, _OTHER, False, id="disjoint"),
    ],
)
def test_a_route_that_overlaps_another_services_is_refused(
    first: dict[str, http_pb2.HttpRule], second: dict[str, http_pb2.HttpRule], refused: bool
) -> None:
    """The attack: a new service claims GET /v1/rules/MAX_INCOME from eligibility."""
    table = RouteTable()
    table.set_service(
        "hms.eligibility.v1.Eligibility", _endpoints("hms.eligibility.v1.Eligibility", first)
    )
    table.set_service("hms.evil.v1.Evil", _endpoints("hms.evil.v1.Evil", second))
    assert bool(table.refusals()) is refused
    owner = _payload_path(table, "GET", "/v1/rules/MAX_INCOME")
    assert owner == "/hms.eligibility.v1.Eligibility/Get"


def test_same_template_other_method_no_warning(caplog: pytest.LogCaptureFixture) -> None:
    table = RouteTable()
    with caplog.at_level(logging.WARNING, logger="hms_gateway.routes"):
        table.set_service("alpha.v1.Alpha", _endpoints("alpha.v1.Alpha", _SAME))
        table.set_service(
            "beta.v1.Beta",
            _endpoints("beta.v1.Beta", {"Put": http_pb2.HttpRule(put="/v1/things/{name}")}),
        )
    assert caplog.records == []
    assert _payload_path(table, "PUT", "/v1/things/t") == "/beta.v1.Beta/Put"


def test_replacing_own_routes_no_warning(caplog: pytest.LogCaptureFixture) -> None:
    table = RouteTable()
    with caplog.at_level(logging.WARNING, logger="hms_gateway.routes"):
        table.set_service(_ECHO_NAME, endpoints_of(_ECHO))
        table.set_service(_ECHO_NAME, endpoints_of(_ECHO))
    assert caplog.records == []


# -- views ----------------------------------------------------------------------------------


def test_endpoints_and_services() -> None:
    table = _table()
    services = table.services()
    assert list(services) == [_ECHO_NAME, _MIRROR_NAME]
    assert all(isinstance(found, tuple) for found in services.values())
    assert [e.method.name for e in services[_ECHO_NAME]] == [m.name for m in _ECHO.methods]
    endpoints = table.endpoints()
    assert endpoints == [*services[_ECHO_NAME], *services[_MIRROR_NAME]]
    assert len(endpoints) == len(_ECHO.methods) + len(_MIRROR.methods) + 2  # Lookup's bindings


def test_services_is_a_copy() -> None:
    table = _table()
    table.services().clear()
    assert len(table.services()) == 2
    table.endpoints().clear()
    assert table.endpoints()
