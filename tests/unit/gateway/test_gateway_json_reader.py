"""The JSON body readers (gateway/json_reader.py) against the checked way (check + json_format).

A reader only takes the bodies it reads plainly, and reads them into the message the checked
way makes; every other body is read the checked way. So on any body, the request read with
readers and without them is the same message, or the same error. The bodies are random
messages' JSON (every field kind, both name styles), and those with one value replaced by
random JSON (wrong types, numbers as strings, nulls, values past a field's range), an unknown
key added, or one field given under both its names.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from google.protobuf import json_format
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hms.testing.v1 import echo_pb2
from hms_gateway import json_reader, transcode
from hms_gateway.errors import GatewayError
from hms_gateway.json_reader import Unreadable, reader_for
from hms_gateway.jsonpb import JsonOptions, to_json
from hms_gateway.transcode import RequestMapping

from .field_kinds import JSONISH, KINDS, OLD, fill, new

_ODD = (
    JSONISH
    | st.integers(-(2**70), 2**70)
    | st.sampled_from([2**31, -(2**31) - 1, 2**32, 2**63, 2**64, 3.5e38, 1e308, -0.0, 1.5])
    | st.sampled_from(["12", "-3", "1e2", "NaN", "Infinity", "HAPPY", "LOW", "AAE=", "x\ud800"])
    | st.integers(-3, 9)
)


def _outcome(message_type: Any, body: bytes, strict: bool) -> tuple[str, Any]:
    request = new(message_type)
    try:
        RequestMapping._read_body(request, None, body, JsonOptions(strict=strict), "")
    except GatewayError as error:
        return ("refused", (error.http_status, error.code, error.message))
    return ("read", request)


def _both_ways(
    monkeypatch: pytest.MonkeyPatch, message_type: Any, body: bytes, strict: bool
) -> tuple[tuple[str, Any], tuple[str, Any]]:
    with_readers = _outcome(message_type, body, strict)
    with monkeypatch.context() as patch:
        patch.setattr(transcode, "reader_for", lambda _: None)
        checked = _outcome(message_type, body, strict)
    return with_readers, checked


def _mutate(document: dict[str, Any], data: st.DataObject) -> None:
    how = data.draw(st.sampled_from(["none", "replace", "unknown", "both names", "oneof"]))
    keys = sorted(document)
    if how == "replace" and keys:
        document[data.draw(st.sampled_from(keys))] = data.draw(_ODD)
    elif how == "unknown":
        document[data.draw(st.sampled_from(["nope", "[test.old.extra]", "i_32"]))] = 1
    elif how == "both names" and keys:
        field = next(
            (f for f in KINDS.fields if f.json_name in keys and f.json_name != f.name), None
        )
        if field is not None:
            document[field.name] = document[field.json_name]
    elif how == "oneof":  # two members of one oneof (KINDS's), or one given as null
        document["pickText"] = "a"
        document[data.draw(st.sampled_from(["pickNumber", "pick_child", "pickText"]))] = data.draw(
            st.sampled_from(["3", {}, None])
        )


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    data=st.data(),
    plain=st.booleans(),
    proto_names=st.booleans(),
    strict=st.booleans(),
)
def test_any_body_reads_as_the_checked_way_reads_it(
    monkeypatch: pytest.MonkeyPatch,
    data: st.DataObject,
    plain: bool,
    proto_names: bool,
    strict: bool,
) -> None:
    for message_type in (KINDS, OLD):
        source = new(message_type)
        fill(source, data, plain=plain)
        options = JsonOptions(use_proto_names=proto_names, emit_unpopulated=not plain)
        try:
            document = to_json(source, options)
        except json_format.Error:
            continue  # a well-known value json_format will not write (a Timestamp past 9999)
        _mutate(document, data)
        body = json.dumps(document).encode()
        with_readers, checked = _both_ways(monkeypatch, message_type, body, strict)
        assert with_readers == checked
        # The reader alone: where it takes a body, the checked way accepts the same message.
        alone = new(message_type)
        reader = reader_for(message_type)
        assert reader is not None
        try:
            reader.read(alone, json.loads(body))
        except Unreadable:
            continue
        assert checked == ("read", alone)


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_plain_bodies_are_read_by_the_reader(data: st.DataObject) -> None:
    """Not everything falls back: a plain message's JSON (no null, bytes, map or well-known
    type) is read by the reader, into the message json_format reads from it (the message it
    came from, but for a NaN's sign, which JSON does not carry)."""
    source = new(KINDS)
    fill(source, data, plain=True)
    document = json.loads(json.dumps(to_json(source, JsonOptions(emit_unpopulated=False))))
    read, expected = new(KINDS), new(KINDS)
    reader = reader_for(KINDS)
    assert reader is not None
    try:
        reader.read(read, document)
    except Unreadable:
        # Only where the checked way refuses it too: a float32 at its largest magnitude, which
        # json_format writes as (-)3.4028235e+38, past what it reads (3.4028234663852886e38).
        with pytest.raises(json_format.ParseError, match=r"Float value too (large|small)"):
            json_format.ParseDict(document, expected)
        return
    json_format.ParseDict(document, expected)
    assert read.SerializeToString(deterministic=True) == expected.SerializeToString(
        deterministic=True
    )


_WRONG = [True, False, None, 0, -1, 1.5, 2**31, 2**64, -(2**63) - 1, 1e39, "5", "5e0", "1.0"]
_WRONG += ["", "HAPPY", "LOW", "NaN", "-Infinity", "AAE=", "x\ud800", [], [1], {}, {"a": 1}]


@pytest.mark.parametrize("value", _WRONG, ids=repr)
def test_every_plain_field_given_every_kind_of_value(
    monkeypatch: pytest.MonkeyPatch, value: Any
) -> None:
    """Each field a reader takes, given each kind of JSON value, right or wrong, alone and
    in an array: the same message or the same refusal as the checked way."""
    for message_type in (KINDS, OLD):
        for field in message_type.fields:
            for sent in (value, [value]) if field.is_repeated else (value,):
                body = json.dumps({field.json_name: sent}).encode()
                for strict in (False, True):
                    with_readers, checked = _both_ways(monkeypatch, message_type, body, strict)
                    assert with_readers == checked, (field.name, sent, strict)


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b'{"message": null}', "a null"),
        (b'{"delayMs": "5e0"}', "a number written as a string, not as digits"),
        (b'{"delayMs": 2147483648}', "past int32"),
        (b'{"delayMs": 1.0}', "an integral float"),
        (b'{"delayMs": true}', "a bool for a number"),
        (b'{"message": "a", "nope": 1}', "an unknown key"),
        (b'{"delay_ms": 1, "delayMs": 2}', "one field under both names"),
        (b'{"message": "\\ud800"}', "a lone surrogate"),
    ],
)
def test_what_the_reader_leaves_to_the_checked_way(body: bytes, why: str) -> None:
    reader = reader_for(echo_pb2.EchoRequest.DESCRIPTOR)
    assert reader is not None
    with pytest.raises(Unreadable):
        reader.read(echo_pb2.EchoRequest(), json.loads(body))


def test_a_body_the_reader_leaves_half_read_is_read_again_from_the_start() -> None:
    # The reader sets "message" before it meets the string number; the checked way must not
    # see its "message" twice or keep the reader's half: the answer is the checked way's.
    request: Message = echo_pb2.EchoRequest()
    RequestMapping._read_body(
        request, None, b'{"message": "hi", "delayMs": "5"}', JsonOptions(), ""
    )
    assert request == echo_pb2.EchoRequest(message="hi", delay_ms=5)


def test_a_reader_that_fails_to_be_made_is_not_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_: Any) -> Any:
        raise RuntimeError("broken")

    monkeypatch.setattr(json_reader, "_readers", {})
    with monkeypatch.context() as patch:
        patch.setattr(json_reader, "_setter", broken)
        with pytest.raises(RuntimeError):
            reader_for(KINDS)
    assert json_reader._readers == {}
    reader = reader_for(KINDS)
    assert reader is not None
    read = new(KINDS)
    reader.read(read, {"child": {"text": "x"}})
    assert read.child.text == "x"
