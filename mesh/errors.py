"""The mesh's error vocabulary, the same on both sides of a call: one class per gRPC status code.

    MeshError                (base; .code is a grpc.StatusCode, .details google.rpc details)
    ├── Cancelled            CANCELLED
    ├── Unknown              UNKNOWN
    ├── InvalidArgument      INVALID_ARGUMENT: names the field (google.rpc.BadRequest)
    ├── DeadlineExceeded     DEADLINE_EXCEEDED
    ├── NotFound             NOT_FOUND
    ├── AlreadyExists        ALREADY_EXISTS
    ├── PermissionDenied     PERMISSION_DENIED
    ├── ResourceExhausted    RESOURCE_EXHAUSTED
    ├── FailedPrecondition   FAILED_PRECONDITION
    ├── Aborted              ABORTED
    ├── OutOfRange           OUT_OF_RANGE
    ├── Unimplemented        UNIMPLEMENTED
    ├── Internal             INTERNAL
    ├── Unavailable          UNAVAILABLE: no instance, etcd unreachable, ...
    ├── DataLoss             DATA_LOSS
    └── Unauthenticated      UNAUTHENTICATED

A handler raises one; the service host answers the call with its code, its message and its
details (as `grpc-status-details-bin`, the google.rpc.Status that grpc-gateway and the REST
gateway here return in `details`). Anything else a handler raises is a bug: logged, answered
INTERNAL, its text never shown to the caller. A caller turns a failed call back into the same
class with `MeshError.from_rpc(exc)`:

>>> try:
...     await stub.Check(request)
... except grpc.aio.AioRpcError as exc:
...     error = MeshError.from_rpc(exc)    # e.g. InvalidArgument, with .violations
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar, cast

import grpc
from google.protobuf import any_pb2
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2, status_pb2

__all__ = [
    "STATUS_DETAILS_KEY",
    "Aborted",
    "AlreadyExists",
    "Cancelled",
    "DataLoss",
    "DeadlineExceeded",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "MeshError",
    "NotFound",
    "OutOfRange",
    "PermissionDenied",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "Unknown",
]

#: The trailing metadata key that carries a serialized google.rpc.Status: the rich error
#: model as grpc implementations share it (grpcio-status, grpc-go's status package).
STATUS_DETAILS_KEY = "grpc-status-details-bin"

_BY_CODE: dict[grpc.StatusCode, type[MeshError]] = {}


class MeshError(Exception):
    """An expected error with the gRPC status code it answers as, and google.rpc details."""

    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str, *, details: Iterable[Message] = ()) -> None:
        super().__init__(message)
        self.message = message
        #: google.rpc detail messages (BadRequest, ErrorInfo, ...), or Anys holding them.
        self.details: tuple[Message, ...] = tuple(details)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _BY_CODE[cls.code] = cls

    def status(self) -> status_pb2.Status:
        """The google.rpc.Status of this error: code, message and the details packed in Any."""
        status = status_pb2.Status(code=self.code.value[0], message=self.message)
        for detail in self.details:
            if isinstance(detail, any_pb2.Any):
                status.details.append(detail)
            else:
                status.details.add().Pack(detail)
        return status

    def trailing_metadata(self) -> tuple[tuple[str, bytes], ...]:
        """What a server sends for this error's details (nothing when there are none)."""
        if not self.details:
            return ()
        return ((STATUS_DETAILS_KEY, self.status().SerializeToString()),)

    @classmethod
    def for_code(cls, code: grpc.StatusCode) -> type[MeshError]:
        """The class of `code` (ValueError for OK, which is no error)."""
        try:
            return _BY_CODE[code]
        except KeyError:
            raise ValueError(f"{code.name} is not an error code") from None

    @classmethod
    def from_rpc(cls, error: grpc.RpcError) -> MeshError:
        """The MeshError a failed call stands for: its code's class, its message, and the
        details the server attached (undecodable details are left out, not raised)."""
        code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
        message = (error.details() if hasattr(error, "details") else None) or ""
        details: list[Message] = []
        # (key, value) pairs: grpc's are namedtuples, grpc.aio's plain tuples (types-grpcio
        # declares the former as objects with .key and .value only).
        trailers: Iterable[Any] | None = (
            error.trailing_metadata() if hasattr(error, "trailing_metadata") else None
        )
        for key, value in trailers or ():
            if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
                with contextlib.suppress(DecodeError):
                    details = list(status_pb2.Status.FromString(value).details)
        return _BY_CODE.get(code, Unknown)(message, details=details)

    def detail(self, kind: type[Message]) -> Message | None:
        """The first detail of type `kind` (unpacked from its Any), or None."""
        for detail in self.details:
            if isinstance(detail, kind):
                return detail
            # types-protobuf types DESCRIPTOR as descriptor.Descriptor or upb's, whose
            # interface is the same; Any.Is is declared to take the former.
            if isinstance(detail, any_pb2.Any) and detail.Is(cast(Descriptor, kind.DESCRIPTOR)):
                found = kind()
                detail.Unpack(found)
                return found
        return None


class Cancelled(MeshError):
    code = grpc.StatusCode.CANCELLED


class Unknown(MeshError):
    code = grpc.StatusCode.UNKNOWN


class InvalidArgument(MeshError):
    """A request field is missing or wrong; the fields at fault ride along as a
    google.rpc.BadRequest, which REST callers see in `details`.

    >>> raise InvalidArgument.field("applicant_id", "is required")
    Traceback (most recent call last):
    mesh.errors.InvalidArgument: applicant_id: is required
    """

    code = grpc.StatusCode.INVALID_ARGUMENT

    @classmethod
    def field(cls, name: str, problem: str) -> InvalidArgument:
        """An error that starts with the field's name, so callers know what to fix."""
        return cls.fields([(name, problem)])

    @classmethod
    def fields(cls, violations: Sequence[tuple[str, str]]) -> InvalidArgument:
        """Several fields at fault at once: (field path, what is wrong with it)."""
        if not violations:
            raise ValueError("InvalidArgument.fields needs at least one (field, problem)")
        request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=name, description=problem)
                for name, problem in violations
            ]
        )
        message = "; ".join(f"{name}: {problem}" for name, problem in violations)
        return cls(message, details=[request])

    @property
    def violations(self) -> list[tuple[str, str]]:
        """(field, description) of each violation the error carries."""
        request = self.detail(error_details_pb2.BadRequest)
        if request is None:
            return []
        assert isinstance(request, error_details_pb2.BadRequest)
        return [(v.field, v.description) for v in request.field_violations]


class DeadlineExceeded(MeshError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class NotFound(MeshError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(MeshError):
    code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDenied(MeshError):
    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(MeshError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPrecondition(MeshError):
    """The system is not in the state the request needs; what does not hold can ride along as
    a google.rpc.PreconditionFailure, one violation per failed condition.

    >>> raise FailedPrecondition.violated(
    ...     "not eligible", [("ELIGIBILITY", "MAX_INCOME", "income exceeds the limit")])
    Traceback (most recent call last):
    mesh.errors.FailedPrecondition: not eligible
    """

    code = grpc.StatusCode.FAILED_PRECONDITION

    @classmethod
    def violated(
        cls, message: str, violations: Sequence[tuple[str, str, str]]
    ) -> FailedPrecondition:
        """An error carrying `violations`: (type, subject, description) of each failed
        condition, as google.rpc.PreconditionFailure spells them."""
        if not violations:
            raise ValueError("FailedPrecondition.violated needs at least one violation")
        failure = error_details_pb2.PreconditionFailure(
            violations=[
                error_details_pb2.PreconditionFailure.Violation(
                    type=kind, subject=subject, description=description
                )
                for kind, subject, description in violations
            ]
        )
        return cls(message, details=[failure])

    @property
    def violations(self) -> list[tuple[str, str, str]]:
        """(type, subject, description) of each violation the error carries."""
        failure = self.detail(error_details_pb2.PreconditionFailure)
        if failure is None:
            return []
        assert isinstance(failure, error_details_pb2.PreconditionFailure)
        return [(v.type, v.subject, v.description) for v in failure.violations]


class Aborted(MeshError):
    code = grpc.StatusCode.ABORTED


class OutOfRange(MeshError):
    code = grpc.StatusCode.OUT_OF_RANGE


class Unimplemented(MeshError):
    code = grpc.StatusCode.UNIMPLEMENTED


class Internal(MeshError):
    code = grpc.StatusCode.INTERNAL


class Unavailable(MeshError):
    code = grpc.StatusCode.UNAVAILABLE


class DataLoss(MeshError):
    code = grpc.StatusCode.DATA_LOSS


class Unauthenticated(MeshError):
    code = grpc.StatusCode.UNAUTHENTICATED
