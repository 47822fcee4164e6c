"""The manifest loader (tools/manifest.py): a good manifest read whole, and each kind of bad one
refused naming the file, the field and what was expected; any value in any field is either
read or refused that way, never another error. Checked against a small descriptor set built
here (two packages, a method name two services share) and, last, against the platform's own
manifests and contracts."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import descriptor_pb2
from hypothesis import given
from hypothesis import strategies as st

from hms_tools.contracts import REPO, Contracts, default_descriptor_set
from hms_tools.manifest import (
    MAX_REPLICAS,
    RESERVED_NAMES,
    Accept,
    Manifest,
    ManifestError,
    Resources,
    State,
    deployment_folders,
    load_manifest,
    load_manifests,
    manifest_from_mapping,
    parse_manifest,
)
from mesh.identity import check_deployment

SHOP = "hms.shop.v1.ShopService"
STOCK = "hms.shop.v1.StockService"
BANK = "hms.bank.v1.BankService"
SOLD = "hms.shop.v1.ItemSold"
PAID = "hms.bank.v1.PaymentTaken"


def proto_file(
    name: str, package: str, services: dict[str, list[str]], messages: list[str]
) -> descriptor_pb2.FileDescriptorProto:
    """A .proto file's descriptor: its services (name -> methods) and messages."""
    file = descriptor_pb2.FileDescriptorProto(name=name, package=package, syntax="proto3")
    for message in messages:
        file.message_type.add(name=message)
    for service, methods in services.items():
        added = file.service.add(name=service)
        for method in methods:
            added.method.add(
                name=method, input_type=f".{package}.Item", output_type=f".{package}.Item"
            )
    return file


#: The contracts of these tests: ShopService and StockService both have GetItem.
FILES = (
    proto_file(
        "hms/shop/v1/shop.proto",
        "hms.shop.v1",
        {
            "ShopService": ["GetItem", "ListItems", "SellItem"],
            "StockService": ["GetItem", "Restock"],
        },
        ["Item", "ItemSold"],
    ),
    proto_file(
        "hms/bank/v1/bank.proto", "hms.bank.v1", {"BankService": ["Charge"]}, ["PaymentTaken"]
    ),
)
CONTRACTS = Contracts.of(FILES)


def good() -> dict[str, Any]:
    """A manifest with every field, as tomllib reads it."""
    return {
        "name": "shop",
        "version": "1.2.3",
        "description": "Sells items",
        "replicas": 2,
        "state": "sqlite",
        "drain_delay": 2,
        "serves": [SHOP],
        "calls": [BANK],
        "publishes": [SOLD],
        "subscribes": [PAID],
        "accepts": [
            {"from": ["gateway"], "methods": ["*"]},
            {"from": ["till", "ops"], "methods": ["GetItem", f"/{SHOP}/ListItems"]},
            {"from": ["*"], "methods": [f"/{SHOP}/*"]},
        ],
        "resources": {"cpu": "500m", "memory": "256Mi"},
        "labels": {"team": "retail"},
    }


def read(data: dict[str, Any], folder: str = "shop") -> Manifest:
    return manifest_from_mapping(data, source="shop.toml", folder=folder, contracts=CONTRACTS)


def changed(**fields: Any) -> dict[str, Any]:
    """good() with `fields` replaced; a value of DROP removes the key."""
    data = good()
    for key, value in fields.items():
        if value is DROP:
            del data[key]
        else:
            data[key] = value
    return data


DROP = object()

# --- a good manifest -----------------------------------------------------------------------


def test_a_good_manifest_is_read_whole() -> None:
    manifest = read(good())
    assert manifest == Manifest(
        name="shop",
        version="1.2.3",
        description="Sells items",
        replicas=2,
        state=State.SQLITE,
        serves=(SHOP,),
        calls=(BANK,),
        publishes=(SOLD,),
        subscribes=(PAID,),
        accepts=(
            Accept(("gateway",), ("*",), (f"/{SHOP}/*",)),
            Accept(
                ("till", "ops"),
                ("GetItem", f"/{SHOP}/ListItems"),
                (f"/{SHOP}/GetItem", f"/{SHOP}/ListItems"),
            ),
            Accept(("*",), (f"/{SHOP}/*",), (f"/{SHOP}/*",)),
        ),
        drain_delay=2.0,
        resources=Resources(cpu="500m", memory="256Mi"),
        labels={"team": "retail"},
        source="shop.toml",
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        manifest.replicas = 3  # type: ignore[misc]


def test_only_the_required_fields() -> None:
    required = ("name", "version", "description", "replicas", "state", "serves")
    manifest = read({key: good()[key] for key in required})
    assert (manifest.calls, manifest.publishes, manifest.subscribes, manifest.accepts) == (
        (),
        (),
        (),
        (),
    )
    assert manifest.drain_delay is None
    assert manifest.resources == Resources()
    assert dict(manifest.labels) == {}


def test_star_accepts_every_method_of_every_served_service() -> None:
    manifest = read(
        changed(serves=[SHOP, STOCK], accepts=[{"from": ["gateway"], "methods": ["*"]}])
    )
    assert manifest.accepts[0].patterns == (f"/{SHOP}/*", f"/{STOCK}/*")
    # A full name says which of two services with the same method is meant.
    manifest = read(
        changed(serves=[SHOP, STOCK], accepts=[{"from": ["a"], "methods": [f"/{STOCK}/GetItem"]}])
    )
    assert manifest.accepts[0].patterns == (f"/{STOCK}/GetItem",)


def test_who_is_accepted_for_what() -> None:
    manifest = read(good())
    assert manifest.accepts_from("gateway", SHOP)
    assert manifest.accepts_from("till", SHOP)
    assert manifest.accepts_from("anyone", SHOP)  # the "*" table
    only_till = read(changed(accepts=[{"from": ["till"], "methods": ["GetItem"]}]))
    assert only_till.accepts_from("till")
    assert not only_till.accepts_from("gateway")
    assert not only_till.accepts_from("till", STOCK)


def test_parsed_from_toml_with_comments(tmp_path: Path) -> None:
    path = tmp_path / "shop" / "service.toml"
    path.parent.mkdir()
    path.write_text(
        "# The shop.\n"
        'name = "shop"  # the folder\'s\nversion = "0.1.0"\ndescription = "Sells"\n'
        'replicas = 0\nstate = "none"\n'
        f'serves = ["{SHOP}"]\n\n[[accepts]]\nfrom = ["gateway"]\nmethods = ["SellItem"]\n'
    )
    manifest = load_manifest(path, CONTRACTS)
    assert (manifest.name, manifest.replicas, manifest.state) == ("shop", 0, State.NONE)
    assert manifest.accepts[0].patterns == (f"/{SHOP}/SellItem",)
    assert manifest.source == str(path)
    assert load_manifest(path, CONTRACTS, source="services/shop/service.toml").source == (
        "services/shop/service.toml"
    )


# --- each kind of bad manifest ---------------------------------------------------------------

A = "accepts[0]"


def accept(**table: Any) -> list[dict[str, Any]]:
    return [{"from": ["gateway"], "methods": ["*"], **table}]


BAD: list[Any] = [
    # (the manifest, the field named, words of what was expected)
    pytest.param(changed(colour="red"), None, "unknown key(s) 'colour'", id="unknown-key"),
    pytest.param(changed(name=DROP), "name", "is required", id="name-missing"),
    pytest.param(changed(name=7), "name", "must be a string, got 7 (an integer)", id="name-type"),
    pytest.param(
        changed(name="till"), "name", "is 'till' but the folder is 'shop'", id="name-folder"
    ),
    pytest.param(
        changed(name="Shop"), "name", "'Shop' is not valid: use 1 to 63 lowercase", id="name-case"
    ),
    pytest.param(changed(version=DROP), "version", "is required", id="version-missing"),
    pytest.param(changed(version="1.0"), "version", "MAJOR.MINOR.PATCH", id="version-short"),
    pytest.param(changed(version=1), "version", "got 1 (an integer)", id="version-type"),
    pytest.param(
        changed(description=""), "description", "non-empty string", id="description-empty"
    ),
    pytest.param(changed(description="a\nb"), "description", "one line", id="description-lines"),
    pytest.param(
        changed(replicas=-1),
        "replicas",
        f"from 0 to {MAX_REPLICAS}, got -1",
        id="replicas-negative",
    ),
    pytest.param(changed(replicas=MAX_REPLICAS + 1), "replicas", "from 0 to", id="replicas-many"),
    pytest.param(changed(replicas="2"), "replicas", "got '2' (a string)", id="replicas-string"),
    pytest.param(changed(replicas=True), "replicas", "got true (a boolean)", id="replicas-bool"),
    pytest.param(changed(replicas=1.5), "replicas", "got 1.5 (a number)", id="replicas-float"),
    pytest.param(
        changed(state="postgres"), "state", "must be 'none' or 'sqlite', got 'postgres'", id="state"
    ),
    pytest.param(changed(state=DROP), "state", "is required", id="state-missing"),
    pytest.param(changed(drain_delay=-1), "drain_delay", "from 0 to 120", id="drain-negative"),
    pytest.param(changed(drain_delay=math.nan), "drain_delay", "from 0 to 120", id="drain-nan"),
    pytest.param(
        changed(drain_delay="1s"), "drain_delay", "got '1s' (a string)", id="drain-string"
    ),
    pytest.param(changed(drain_delay=False), "drain_delay", "(a boolean)", id="drain-bool"),
    pytest.param(changed(serves=DROP), "serves", "is required", id="serves-missing"),
    pytest.param(changed(serves=[]), "serves", "must not be empty", id="serves-empty"),
    pytest.param(changed(serves=SHOP), "serves", "must be a list of strings", id="serves-string"),
    pytest.param(changed(serves=[3]), "serves[0]", "must be a string", id="serves-item-type"),
    pytest.param(changed(serves=[SHOP, SHOP]), "serves[1]", "is listed twice", id="serves-twice"),
    pytest.param(
        changed(serves=["ShopService"]), "serves[0]", "full name (pkg.Service)", id="serves-short"
    ),
    pytest.param(
        changed(serves=["hms.shop.v1.Shop"]),
        "serves[0]",
        "not a service of the contracts (package hms.shop.v1 has: hms.shop.v1.ShopService, "
        "hms.shop.v1.StockService)",
        id="serves-unknown",
    ),
    pytest.param(
        changed(calls=["hms.post.v1.PostService"]),
        "calls[0]",
        "no package hms.post.v1",
        id="calls-unknown",
    ),
    pytest.param(
        changed(publishes=["hms.shop.v1.ItemBought"]),
        "publishes[0]",
        "not a message type",
        id="publishes-unknown",
    ),
    pytest.param(
        changed(subscribes=["PaymentTaken"]),
        "subscribes[0]",
        "full name (pkg.Message)",
        id="subscribes-short",
    ),
    pytest.param(
        changed(accepts={"from": ["a"]}), "accepts", "array of tables", id="accepts-table"
    ),
    pytest.param(
        changed(accepts=accept(who="x")), A, "unknown key(s) 'who'", id="accepts-unknown-key"
    ),
    pytest.param(
        changed(accepts=[{"methods": ["*"]}]), f"{A}.from", "is required", id="accepts-from-missing"
    ),
    pytest.param(
        changed(accepts=[{"from": ["a"]}]),
        f"{A}.methods",
        "is required",
        id="accepts-methods-missing",
    ),
    pytest.param(
        changed(accepts=accept(**{"from": []})), f"{A}.from", "must not be empty", id="from-empty"
    ),
    pytest.param(
        changed(accepts=accept(**{"from": "gateway"})),
        f"{A}.from",
        "list of strings",
        id="from-string",
    ),
    pytest.param(
        changed(accepts=accept(**{"from": ["*", "ops"]})),
        f"{A}.from[0]",
        "write it alone",
        id="from-star-and",
    ),
    pytest.param(
        changed(accepts=accept(**{"from": ["the_till"]})),
        f"{A}.from[0]",
        "caller 'the_till' is not valid",
        id="from-bad-name",
    ),
    pytest.param(
        changed(accepts=accept(methods=[])), f"{A}.methods", "must not be empty", id="methods-empty"
    ),
    pytest.param(
        changed(accepts=accept(methods=["*", "GetItem"])),
        f"{A}.methods[0]",
        "write it alone",
        id="methods-star-and",
    ),
    pytest.param(
        changed(accepts=accept(methods=["Charge"])),
        f"{A}.methods[0]",
        f"'Charge' is not a method of the served services ({SHOP}: GetItem, ListItems, SellItem)",
        id="method-not-served",
    ),
    pytest.param(
        changed(accepts=accept(methods=[f"/{BANK}/Charge"])),
        f"{A}.methods[0]",
        f"{BANK} is not a service this deployment serves",
        id="method-of-another-service",
    ),
    pytest.param(
        changed(accepts=accept(methods=[f"/{SHOP}/Restock"])),
        f"{A}.methods[0]",
        f"'Restock' is not a method of {SHOP} (it has: GetItem, ListItems, SellItem)",
        id="full-method-unknown",
    ),
    pytest.param(
        changed(accepts=accept(methods=["get-item"])),
        f"{A}.methods[0]",
        "is not a method: write",
        id="method-malformed",
    ),
    pytest.param(
        changed(serves=[SHOP, STOCK], accepts=accept(methods=["GetItem"])),
        f"{A}.methods[0]",
        f"'GetItem' is a method of {SHOP} and {STOCK}: write '/{SHOP}/GetItem'",
        id="method-ambiguous",
    ),
    pytest.param(
        changed(resources={"gpu": "1"}), "resources", "unknown key(s) 'gpu'", id="resources-key"
    ),
    pytest.param(changed(resources={"cpu": "fast"}), "resources.cpu", "'500m' or '2'", id="cpu"),
    pytest.param(
        changed(resources={"memory": 256}),
        "resources.memory",
        "got 256 (an integer)",
        id="memory-type",
    ),
    pytest.param(changed(resources="big"), "resources", "must be a table", id="resources-type"),
    pytest.param(
        changed(labels=["team"]), "labels", "must be a table of strings", id="labels-type"
    ),
    pytest.param(changed(labels={"tier": 1}), "labels.tier", "must be a string", id="label-value"),
]


@pytest.mark.parametrize(("data", "field", "expected"), BAD)
def test_a_bad_manifest_is_refused_naming_file_field_and_what_was_expected(
    data: dict[str, Any], field: str | None, expected: str
) -> None:
    with pytest.raises(ManifestError) as caught:
        read(data)
    error = caught.value
    assert (error.source, error.field) == ("shop.toml", field)
    assert expected in error.problem
    assert str(error).startswith(f"shop.toml: {field}: " if field else "shop.toml: ")


@pytest.mark.parametrize("name", sorted(RESERVED_NAMES))
def test_reserved_names_are_refused(name: str) -> None:
    with pytest.raises(ManifestError, match="is reserved") as caught:
        read(changed(name=name), folder=name)
    assert caught.value.field == "name"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("name = ", "x.toml: is not valid TOML", id="not-toml"),
        pytest.param("", "x.toml: name: is required", id="empty"),
        pytest.param('name = "shop"\n', "x.toml: version: is required", id="cut-short"),
    ],
)
def test_text_that_is_not_a_manifest(text: str, expected: str) -> None:
    with pytest.raises(ManifestError) as caught:
        parse_manifest(text, source="x.toml", folder="shop", contracts=CONTRACTS)
    assert str(caught.value).startswith(expected)


def test_a_file_not_utf8_or_missing(tmp_path: Path) -> None:
    path = tmp_path / "shop" / "service.toml"
    with pytest.raises(ManifestError, match=r"service.toml: cannot be read"):
        load_manifest(path, CONTRACTS)
    path.parent.mkdir()
    path.write_bytes(b'name = "\xff"\n')
    with pytest.raises(ManifestError, match="is not UTF-8 text"):
        load_manifest(path, CONTRACTS)


# --- whatever a field holds: read, or refused naming it ----------------------------------

FIELDS = ("name", "version", "description", "replicas", "state", "drain_delay", "serves",
          "calls", "publishes", "subscribes", "accepts", "resources", "labels")  # fmt: skip
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.sampled_from([SHOP, STOCK, BANK, SOLD, PAID, "*", "gateway", "GetItem", f"/{SHOP}/*"]),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)


@given(field=st.sampled_from(FIELDS), value=VALUES)
def test_any_value_of_any_field_is_read_or_refused_naming_that_field(
    field: str, value: Any
) -> None:
    data = changed(**{field: DROP if value is None else value})
    try:
        manifest = read(data)
    except ManifestError as exc:
        error = exc
    else:
        assert isinstance(manifest, Manifest)
        return
    assert error.source == "shop.toml"
    assert (error.field or "").split(".")[0].split("[")[0] == field
    assert error.problem


@given(replicas=st.integers(-(10**6), 10**6))
def test_replicas_from_0_to_the_maximum(replicas: int) -> None:
    if 0 <= replicas <= MAX_REPLICAS:
        assert read(changed(replicas=replicas)).replicas == replicas
    else:
        with pytest.raises(ManifestError, match="replicas"):
            read(changed(replicas=replicas))


@given(name=st.text(alphabet="abz09-_A.", min_size=0, max_size=70))
def test_a_name_is_a_deployment_name_and_its_folders(name: str) -> None:
    try:
        check_deployment(name)
        valid = name not in RESERVED_NAMES
    except ValueError:
        valid = False
    if valid:
        assert read(changed(name=name), folder=name).name == name
    else:
        with pytest.raises(ManifestError) as caught:
            read(changed(name=name), folder=name)
        assert caught.value.field == "name"


# --- the platform's own ----------------------------------------------------------------------


def test_the_platforms_manifests_load_against_its_contracts() -> None:
    contracts = Contracts.load(default_descriptor_set())
    manifests = load_manifests(REPO / "services", contracts)
    assert set(manifests) == {p.parent.name for p in (REPO / "services").glob("*/service.toml")}
    assert {"eligibility", "notify"} <= set(manifests)
    for manifest in manifests.values():
        assert all(service in contracts.services for service in manifest.serves)
    assert set(deployment_folders(REPO / "services")) <= set(manifests)
