"""The compiled JSON writers (gateway/json_writer.py) against json_format and the null pass.

Random messages of every field kind (every scalar type, enums open and closed, nested and
recursive messages, repeated fields, maps of every key type, oneofs, proto3 and proto2
optionals, proto2 defaults, the well-known types with a JSON form of their own), under every
option: where json_format writes a message, its type's writer writes the same JSON, key order
included; where json_format refuses one, ``to_json`` refuses it in the same words.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hms.testing.v1 import echo_pb2, mirror_pb2
from hms_gateway import json_writer
from hms_gateway.json_writer import writer_for
from hms_gateway.jsonpb import JsonOptions, to_json, to_json_by_json_format

from .field_kinds import KINDS, OLD, POOL, fill, new

# -- the comparison ---------------------------------------------------------------------------

_OPTION_SETS = [
    (JsonOptions(use_proto_names=names, emit_unpopulated=emit, enums_as_ints=ints), defaults)
    for names in (False, True)
    for emit in (False, True)
    for ints in (False, True)
    for defaults in (None, False, True)
]


def _outcome(write: Callable[[], Any]) -> tuple[str, str]:
    try:
        return ("written", json.dumps(write(), ensure_ascii=False, allow_nan=False))
    except Exception as exc:
        return (type(exc).__name__, str(exc))


def _compare(message: Message, options: JsonOptions, defaults: bool | None) -> None:
    slow = _outcome(lambda: to_json_by_json_format(message, options, print_defaults=defaults))
    writer = writer_for(
        message.DESCRIPTOR,
        proto_names=options.use_proto_names,
        enums_as_ints=options.enums_as_ints,
        print_defaults=options.emit_unpopulated if defaults is None else defaults,
        nulls=options.emit_unpopulated,
    )
    assert writer is not None
    if slow[0] == "written":
        assert _outcome(lambda: writer(message)) == slow  # the writer itself, no fallback
    assert _outcome(lambda: to_json(message, options, print_defaults=defaults)) == slow


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), option_set=st.sampled_from(_OPTION_SETS))
def test_every_field_kind_written_as_json_format_writes_it(
    data: st.DataObject, option_set: tuple[JsonOptions, bool | None]
) -> None:
    message = new(KINDS)
    fill(message, data, 0)
    _compare(message, *option_set)


@settings(max_examples=80, deadline=None)
@given(data=st.data(), option_set=st.sampled_from(_OPTION_SETS))
def test_proto2_presence_defaults_and_closed_enums_as_json_format(
    data: st.DataObject, option_set: tuple[JsonOptions, bool | None]
) -> None:
    message = new(OLD)
    fill(message, data, 0)
    _compare(message, *option_set)


@pytest.mark.parametrize(("options", "defaults"), _OPTION_SETS)
def test_empty_and_the_gateways_own_messages(options: JsonOptions, defaults: bool | None) -> None:
    answer = echo_pb2.EchoResponse(message="hi", deadline_left_ms=-1, pid=7)
    answer.hops.add(served_by="echo")
    for message in (new(KINDS), new(OLD), answer, echo_pb2.EchoResponse()):
        _compare(message, options, defaults)


def test_no_writer_where_an_any_may_be_below() -> None:
    assert (
        writer_for(
            mirror_pb2.MirrorRequest.DESCRIPTOR,  # any_value
            proto_names=False,
            enums_as_ints=False,
            print_defaults=True,
            nulls=True,
        )
        is None
    )
    any_type = POOL.FindMessageTypeByName("google.protobuf.Any")
    assert (
        writer_for(
            any_type, proto_names=False, enums_as_ints=False, print_defaults=True, nulls=True
        )
        is None
    )


def test_an_extension_is_written_by_json_format() -> None:
    message = new(OLD)
    message.count = 3
    message.Extensions[POOL.FindExtensionByName("test.old.extra")] = 9
    value = to_json(message)
    assert value == to_json_by_json_format(message)
    assert value["[test.old.extra]"] == 9


def test_no_enum_writer_while_enum_json_names_are_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(json_writer, "_enum_names_option_loaded", lambda: True)
    monkeypatch.setattr(json_writer, "_writers", {})
    options: dict[str, bool] = {"proto_names": False, "print_defaults": True, "nulls": True}
    assert writer_for(KINDS, enums_as_ints=False, **options) is None
    assert writer_for(KINDS, enums_as_ints=True, **options) is not None  # numbers: no names
    assert writer_for(mirror_pb2.Book.DESCRIPTOR, enums_as_ints=False, **options) is not None


def test_writers_are_made_once_per_type_and_options() -> None:
    options: dict[str, bool] = {"proto_names": False, "enums_as_ints": False, "nulls": True}
    first = writer_for(KINDS, print_defaults=True, **options)
    assert first is writer_for(KINDS, print_defaults=True, **options)
    assert first is not writer_for(KINDS, print_defaults=False, **options)


def test_a_writer_that_fails_to_be_made_is_not_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_: Any) -> Any:
        raise RuntimeError("broken")

    options: dict[str, bool] = {
        "proto_names": True, "enums_as_ints": True, "print_defaults": False, "nulls": False
    }  # fmt: skip
    monkeypatch.setattr(json_writer, "_writers", {})
    with monkeypatch.context() as patch:
        patch.setattr(json_writer, "_converter", broken)
        with pytest.raises(RuntimeError):
            writer_for(KINDS, **options)
    assert json_writer._writers == {}
    message = new(KINDS)
    message.child.text = "x"
    writer = writer_for(KINDS, **options)
    assert writer is not None
    assert writer(message) == to_json_by_json_format(
        message, JsonOptions(use_proto_names=True, emit_unpopulated=False, enums_as_ints=True)
    )
