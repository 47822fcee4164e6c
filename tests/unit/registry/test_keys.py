"""Registry key layout and value schema: round trips, and every malformed key and value
rejected with a RegistryValueError that names the key and the problem."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mesh.registry import keys
from mesh.registry.keys import Instance, RegistryValueError

NS = "hms"
SERVICE = "hms.notify.v1.NotifyService"
KEY = b"/hms/services/hms.notify.v1.NotifyService/notify-1"
VALID = {"address": "10.0.0.7:50051", "deployment": "notify"}

# Deterministic and without a .hypothesis/ database: the same examples on every run.
FUZZ = settings(
    database=None, derandomize=True, max_examples=300, suppress_health_check=[HealthCheck.too_slow]
)


def value(**fields: Any) -> bytes:
    """VALID with fields replaced; a field set to ... is left out."""
    body = {**VALID, **fields}
    return json.dumps({k: v for k, v in body.items() if v is not ...}).encode()


def shown(key: bytes) -> str:
    """How a key appears in an error message: control characters escaped (no log injection)."""
    return key.decode(errors="backslashreplace").encode("unicode_escape").decode()


# -- round trip ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "instance",
    [
        pytest.param(Instance(SERVICE, "notify-1", "10.0.0.7:50051", "notify"), id="defaults"),
        pytest.param(
            Instance(
                SERVICE,
                "notify-7f3a9c2e1b4d",
                "notify.svc.hms.local:443",
                "notify",
                version="1.4.2-rc.1",
                identity="spiffe://hms.local/svc/notify",
                zone="eu-west-1a",
                weight=250,
                metadata={"canary": "true", "région": "ünïcode"},
            ),
            id="every-field",
        ),
        pytest.param(Instance(SERVICE, "a", "[::1]:1", "d", weight=1), id="ipv6-min-weight"),
        pytest.param(
            Instance(SERVICE, "a", "h:65535", "d", weight=keys.MAX_WEIGHT), id="max-port-and-weight"
        ),
        pytest.param(Instance("a._b.C_9", "x" * 128, "h:80", "d"), id="longest-instance-id"),
    ],
)
def test_encode_decode_round_trip(instance: Instance) -> None:
    key = instance.key(NS)
    assert keys.parse_key(NS, key) == (instance.service, instance.instance_id)
    assert keys.decode(NS, key, keys.encode(instance)) == instance


def test_key_layout() -> None:
    assert keys.services_prefix("hms") == b"/hms/services/"
    assert keys.service_prefix("hms", SERVICE) == b"/hms/services/hms.notify.v1.NotifyService/"
    assert keys.instance_key("hms", SERVICE, "notify-1") == KEY


def test_service_prefix_does_not_match_a_longer_service_name() -> None:
    assert not keys.instance_key(NS, "a.Bc", "x").startswith(keys.service_prefix(NS, "a.B"))


def test_encode_is_a_stable_json_object() -> None:
    encoded = keys.encode(Instance(SERVICE, "notify-1", "h:1", "notify", metadata={"b": "1"}))
    assert json.loads(encoded) == {
        "address": "h:1",
        "deployment": "notify",
        "version": "0.0.0",
        "identity": "",
        "zone": "",
        "weight": 100,
        "metadata": {"b": "1"},
    }
    assert encoded == keys.encode(keys.decode(NS, KEY, encoded))


def test_unknown_fields_are_ignored() -> None:
    instance = keys.decode(NS, KEY, value(protocol="h3", extra={"nested": [1, 2]}, weight=5))
    assert instance == Instance(SERVICE, "notify-1", "10.0.0.7:50051", "notify", weight=5)


def test_instance_metadata_is_read_only() -> None:
    instance = keys.decode(NS, KEY, value(metadata={"a": "b"}))
    with pytest.raises(TypeError):
        instance.metadata["a"] = "c"  # type: ignore[index]


def test_new_instance_id_is_a_key_segment_and_unique() -> None:
    first, second = keys.new_instance_id("notify"), keys.new_instance_id("notify")
    assert first != second
    assert first.startswith("notify-")
    assert keys.parse_key(NS, keys.instance_key(NS, SERVICE, first)) == (SERVICE, first)


# -- malformed values --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        pytest.param(b"not json", "value is not JSON", id="not-json"),
        pytest.param(b"", "value is not JSON", id="empty"),
        pytest.param(b'{"address": "h:1", "deployment": "d"', "value is not JSON", id="truncated"),
        pytest.param(b'{"address": "\xff\xfe:1"}', "value is not JSON", id="non-utf8"),
        pytest.param(b"[]", "not a JSON object", id="array"),
        pytest.param(b'"h:1"', "not a JSON object", id="string"),
        pytest.param(b"42", "not a JSON object", id="number"),
        pytest.param(b"null", "not a JSON object", id="null"),
        pytest.param(value(address=...), "missing address", id="no-address"),
        pytest.param(value(deployment=...), "missing deployment", id="no-deployment"),
        pytest.param(b"{}", "missing address, deployment", id="empty-object"),
        pytest.param(value(address=50051), "address must be a JSON str", id="address-int"),
        pytest.param(value(address=None), "address must be a JSON str", id="address-null"),
        pytest.param(value(deployment=["d"]), "deployment must be a JSON str", id="deploy-list"),
        pytest.param(value(version=1), "version must be a JSON str", id="version-int"),
        pytest.param(value(identity=None), "identity must be a JSON str", id="identity-null"),
        pytest.param(
            value(identity="not-a-spiffe-id"),
            "identity: SPIFFE ID 'not-a-spiffe-id' is malformed",
            id="identity-not-spiffe",
        ),
        pytest.param(
            value(identity="spiffe://hms.local/svc/Evil_1"),
            "identity: SPIFFE ID",
            id="identity-bad-deployment",
        ),
        pytest.param(value(zone=True), "zone must be a JSON str", id="zone-bool"),
        pytest.param(value(weight="100"), "weight must be a JSON int", id="weight-string"),
        pytest.param(value(weight=1.5), "weight must be a JSON int", id="weight-float"),
        pytest.param(value(weight=100.0), "weight must be a JSON int", id="weight-whole-float"),
        pytest.param(value(weight=True), "weight must be a JSON int", id="weight-bool"),
        pytest.param(value(weight=None), "weight must be a JSON int", id="weight-null"),
        pytest.param(value(weight=0), "weight 0 is outside 1..10000", id="weight-zero"),
        pytest.param(value(weight=-5), "weight -5 is outside 1..10000", id="weight-negative"),
        pytest.param(value(weight=10_001), "weight 10001 is outside", id="weight-too-big"),
        pytest.param(value(weight=10**30), "is outside 1..10000", id="weight-huge"),
        pytest.param(value(metadata=["a"]), "metadata must be a JSON dict", id="metadata-list"),
        pytest.param(value(metadata={"a": 1}), "metadata values must be strings", id="meta-int"),
        pytest.param(value(metadata={"a": None}), "metadata values must be str", id="meta-null"),
        pytest.param(value(address="10.0.0.7"), "is not host:port", id="address-no-port"),
        pytest.param(value(address=":50051"), "is not host:port", id="address-no-host"),
        pytest.param(value(address="h:"), "is not host:port", id="address-empty-port"),
        pytest.param(value(address="h:0"), "is not host:port", id="address-port-0"),
        pytest.param(value(address="h:65536"), "is not host:port", id="address-port-too-big"),
        pytest.param(value(address="h:http"), "is not host:port", id="address-port-name"),
        pytest.param(value(address="h:-1"), "is not host:port", id="address-port-negative"),
        pytest.param(value(address=""), "is not host:port", id="address-empty"),
        pytest.param(value(deployment=""), "deployment is empty", id="deployment-empty"),
        pytest.param(
            value(address="h:\u00b2"),
            "is not host:port",
            id="address-port-superscript-digit",
        ),
        pytest.param(
            value(address="h:\u0665\u0660"),
            "is not host:port",
            id="address-port-non-ascii-digits",
        ),
        pytest.param(b"[" * 100_000, "value is not JSON", id="deeply-nested"),
        pytest.param(
            b'{"address": "h:1", "deployment": "d", "weight": 1' + b"0" * 5000 + b"}",
            "value is not JSON",
            id="integer-too-long-for-int",
        ),
    ],
)
def test_malformed_value_is_rejected_naming_key_and_problem(raw: bytes, problem: str) -> None:
    with pytest.raises(RegistryValueError) as caught:
        keys.decode(NS, KEY, raw)
    assert shown(KEY) in str(caught.value)
    assert problem in str(caught.value)


# -- malformed keys ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        pytest.param(b"/other/services/a.B/x", "is not under '/hms/services/'", id="other-ns"),
        pytest.param(b"/hmsx/services/a.B/x", "is not under '/hms/services/'", id="ns-lookalike"),
        pytest.param(b"/hms/config/a.B/x", "is not under '/hms/services/'", id="not-services"),
        pytest.param(b"hms/services/a.B/x", "is not under", id="no-leading-slash"),
        pytest.param(b"", "is not under", id="empty"),
        pytest.param(b"/hms/services/", "<grpc.full.ServiceName>/<instance-id>", id="prefix"),
        pytest.param(b"/hms/services/a.B", "<instance-id>", id="no-instance"),
        pytest.param(b"/hms/services/a.B/", "<instance-id>", id="empty-instance"),
        pytest.param(b"/hms/services/a.B/x/y", "<instance-id>", id="extra-segment"),
        pytest.param(b"/hms/services//x", "<grpc.full.ServiceName>", id="empty-service"),
        pytest.param(b"/hms/services/Notify/x", "<grpc.full.ServiceName>", id="unqualified"),
        pytest.param(b"/hms/services/1a.B/x", "<grpc.full.ServiceName>", id="service-digit"),
        pytest.param(b"/hms/services/a..B/x", "<grpc.full.ServiceName>", id="service-dots"),
        pytest.param(b"/hms/services/a.B./x", "<grpc.full.ServiceName>", id="service-trailing-dot"),
        pytest.param(b"/hms/services/a-b.C/x", "<grpc.full.ServiceName>", id="service-dash"),
        pytest.param(b"/hms/services/a.B/-x", "<instance-id>", id="instance-leading-dash"),
        pytest.param(b"/hms/services/a.B/x y", "<instance-id>", id="instance-space"),
        pytest.param(b"/hms/services/a.B/" + b"x" * 129, "<instance-id>", id="instance-too-long"),
        pytest.param(b"/hms/services/a.B/\xff", "is not UTF-8", id="non-utf8"),
        pytest.param(
            b"/hms/services/a.B/x\n",
            "<instance-id>",
            id="instance-newline",
        ),
        pytest.param(
            b"/hms/services/a.B\n/x",
            "<grpc.full.ServiceName>",
            id="service-newline",
        ),
    ],
)
def test_malformed_key_is_rejected_naming_key_and_problem(key: bytes, problem: str) -> None:
    for call in (lambda: keys.parse_key(NS, key), lambda: keys.decode(NS, key, value())):
        with pytest.raises(RegistryValueError) as caught:
            call()
        assert shown(key) in str(caught.value)
        assert problem in str(caught.value)


@pytest.mark.parametrize(
    ("call", "problem"),
    [
        pytest.param(lambda: keys.services_prefix("HMS"), "namespace 'HMS'", id="ns-upper"),
        pytest.param(lambda: keys.services_prefix(""), "namespace ''", id="ns-empty"),
        pytest.param(lambda: keys.services_prefix("a/b"), "namespace 'a/b'", id="ns-slash"),
        pytest.param(lambda: keys.service_prefix(NS, "Notify"), "service 'Notify'", id="service"),
        pytest.param(lambda: keys.instance_key(NS, SERVICE, "a/b"), "instance id 'a/b'", id="id"),
        pytest.param(
            lambda: keys.services_prefix("hms\n"),
            "namespace",
            id="ns-newline",
        ),
        pytest.param(
            lambda: keys.instance_key(NS, SERVICE, "x\n"),
            "instance id",
            id="id-newline",
        ),
    ],
)
def test_building_a_key_from_bad_parts_raises_value_error(call: Any, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        call()


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        pytest.param({"service": "Notify"}, "service 'Notify'", id="service"),
        pytest.param({"instance_id": "a/b"}, "instance id 'a/b'", id="instance-id"),
        pytest.param({"address": "nohost"}, "address 'nohost'", id="address"),
        pytest.param({"deployment": ""}, "deployment is empty", id="deployment"),
        pytest.param({"weight": True}, "weight True is not an integer", id="weight-bool"),
        pytest.param({"weight": 2.0}, "weight 2.0 is not an integer", id="weight-float"),
        pytest.param({"weight": 0}, "weight 0 is outside", id="weight-zero"),
        pytest.param({"metadata": {"k": 1}}, "metadata values must be strings", id="metadata"),
    ],
)
def test_invalid_instance_is_refused_at_construction(fields: dict[str, Any], problem: str) -> None:
    base: dict[str, Any] = {
        "service": SERVICE,
        "instance_id": "i",
        "address": "h:1",
        "deployment": "d",
    }
    with pytest.raises(RegistryValueError, match=problem):
        Instance(**{**base, **fields})


# -- properties --------------------------------------------------------------------------------

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
any_key = st.binary(max_size=60) | st.builds(
    lambda tail: b"/hms/services/" + tail, st.binary(max_size=40)
)


@FUZZ
@given(key=any_key, raw=st.binary(max_size=200))
def test_decode_of_arbitrary_bytes_raises_only_registry_value_error(key: bytes, raw: bytes) -> None:
    try:
        instance = keys.decode(NS, key, raw)
    except RegistryValueError as exc:
        error = exc
    else:
        assert instance.key(NS) == key
        return
    assert str(error)


@FUZZ
@given(
    body=st.dictionaries(
        st.sampled_from([*VALID, "version", "identity", "zone", "weight", "metadata", "x"]),
        json_values
        | st.sampled_from(["h:1", "h:99999", "h:", ":1", "[::1]:8080"])
        | st.integers(-2, 10_002)
        | st.dictionaries(st.text(max_size=3), json_scalars, max_size=3),
    )
)
def test_decode_of_arbitrary_json_objects_raises_only_registry_value_error(
    body: dict[str, Any],
) -> None:
    try:
        keys.decode(NS, KEY, json.dumps(body).encode())
    except RegistryValueError as exc:
        error = exc
    else:
        return
    assert shown(KEY) in str(error)


segment = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}", fullmatch=True)
service_name = st.from_regex(
    r"[A-Za-z_][A-Za-z0-9_]{0,8}(\.[A-Za-z_][A-Za-z0-9_]{0,8}){1,4}", fullmatch=True
)
instances = st.builds(
    Instance,
    service=service_name,
    instance_id=segment,
    address=st.builds(
        lambda h, p: f"{h}:{p}", st.text(min_size=1, max_size=30), st.integers(1, 65535)
    ),
    deployment=st.text(min_size=1, max_size=30),
    version=st.text(max_size=20),
    identity=st.one_of(
        st.just(""),
        st.from_regex(r"[a-z][a-z0-9-]{0,20}[a-z0-9]", fullmatch=True).map(
            lambda d: f"spiffe://hms.local/svc/{d}"
        ),
    ),
    zone=st.text(max_size=20),
    weight=st.integers(1, keys.MAX_WEIGHT),
    metadata=st.dictionaries(st.text(max_size=10), st.text(max_size=20), max_size=4),
)


@FUZZ
@given(instance=instances)
def test_round_trip_of_arbitrary_valid_instances(instance: Instance) -> None:
    key = instance.key(NS)
    assert keys.decode(NS, key, keys.encode(instance)) == instance
