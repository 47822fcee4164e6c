"""The error vocabulary: one class per gRPC code, both ways (raise on the server, `from_rpc` on
the caller), with google.rpc details (BadRequest field violations) carried across."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from mesh import errors
from mesh.errors import STATUS_DETAILS_KEY, InvalidArgument, MeshError

ERROR_CODES = [code for code in grpc.StatusCode if code is not grpc.StatusCode.OK]


def test_every_error_code_has_its_own_class() -> None:
    assert len(ERROR_CODES) == 16
    classes = {MeshError.for_code(code) for code in ERROR_CODES}
    assert len(classes) == 16
    for code in ERROR_CODES:
        kind = MeshError.for_code(code)
        assert kind.code is code
        assert kind.__name__ in errors.__all__
    with pytest.raises(ValueError, match="OK is not an error code"):
        MeshError.for_code(grpc.StatusCode.OK)


def rpc_error(
    code: grpc.StatusCode, message: str, trailers: tuple[tuple[str, bytes], ...] = ()
) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(
        code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailers), details=message
    )


@pytest.mark.parametrize("code", ERROR_CODES, ids=[c.name for c in ERROR_CODES])
def test_from_rpc_gives_the_codes_class_and_message(code: grpc.StatusCode) -> None:
    error = MeshError.from_rpc(rpc_error(code, "what went wrong"))
    assert type(error) is MeshError.for_code(code)
    assert error.message == "what went wrong"
    assert error.details == ()


def test_field_violations_survive_the_round_trip() -> None:
    raised = InvalidArgument.fields([("annual_income_pence", "must not be negative, got -1"),
                                     ("household_size", "must be at least 1, got 0")])  # fmt: skip
    assert raised.message == (
        "annual_income_pence: must not be negative, got -1; "
        "household_size: must be at least 1, got 0"
    )
    (key, value), *_ = raised.trailing_metadata()
    assert key == STATUS_DETAILS_KEY
    status = status_pb2.Status.FromString(value)
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert status.details[0].Is(error_details_pb2.BadRequest.DESCRIPTOR)

    received = MeshError.from_rpc(rpc_error(raised.code, raised.message, ((key, value),)))
    assert isinstance(received, InvalidArgument)
    assert received.violations == [
        ("annual_income_pence", "must not be negative, got -1"),
        ("household_size", "must be at least 1, got 0"),
    ]


@pytest.mark.parametrize(
    "trailers",
    [
        pytest.param(((STATUS_DETAILS_KEY, b"\xff\xfe not a status"),), id="undecodable"),
        pytest.param((("other-key", b"x"),), id="other-trailers"),
        pytest.param((), id="none"),
    ],
)
def test_from_rpc_without_usable_details_keeps_code_and_message(
    trailers: tuple[tuple[str, bytes], ...],
) -> None:
    error = MeshError.from_rpc(rpc_error(grpc.StatusCode.NOT_FOUND, "no such rule", trailers))
    assert type(error) is errors.NotFound
    assert (error.message, error.details) == ("no such rule", ())


def test_an_error_without_details_sends_no_trailer_and_packs_details_once() -> None:
    assert errors.NotFound("gone").trailing_metadata() == ()
    info = error_details_pb2.ErrorInfo(reason="QUOTA", domain="hms.local")
    packed = any_pb2.Any()
    packed.Pack(info)
    status = errors.ResourceExhausted("slow down", details=[info, packed]).status()
    assert [d.type_url for d in status.details] == [packed.type_url] * 2


def test_field_needs_a_violation() -> None:
    with pytest.raises(ValueError, match="at least one"):
        InvalidArgument.fields([])
    assert InvalidArgument.field("x", "is required").violations == [("x", "is required")]
    assert InvalidArgument("plain").violations == []
