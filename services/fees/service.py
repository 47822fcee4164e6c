"""gRPC handlers of hms.fees.v1.FeeService: what each licence type costs.

Expected errors are raised as `mesh.errors` exceptions; the service host's error interceptor
turns them into the call's status, so handlers never touch `context.abort`.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING

from hms.fees.v1 import fees_pb2, fees_pb2_grpc
from mesh import InvalidArgument

if TYPE_CHECKING:
    import grpc.aio

__all__ = ["FEES_PENCE", "FeeService"]

#: The fee of each licence type, in pence (money is always int pence: floats cannot hold 0.10
#: exactly). Types are matched exactly, as licensing sends them.
FEES_PENCE: Mapping[str, int] = MappingProxyType(
    {
        "ALCOHOL_PREMISES": 19_000,  # £190.00
        "FOOD_BUSINESS": 7_500,  # £75.00
        "PERSONAL_ALCOHOL": 3_700,  # £37.00
        "STREET_TRADING": 45_000,  # £450.00
        "TAXI_DRIVER": 22_000,  # £220.00
        "TAXI_VEHICLE": 26_500,  # £265.00
    }
)

# How much of an unknown type an error message repeats: enough to recognise it, never a megabyte.
_SHOWN_CHARS = 40


class FeeService(fees_pb2_grpc.FeeServiceServicer):
    """Answers a licence type's fee from a fee table (stateless).

    Example::

        fees_pb2_grpc.add_FeeServiceServicer_to_server(FeeService(), server)
    """

    def __init__(self, fees_pence: Mapping[str, int] = FEES_PENCE) -> None:
        self._fees = fees_pence
        self._known = ", ".join(sorted(fees_pence))

    async def CalculateFee(
        self,
        request: fees_pb2.CalculateFeeRequest,
        context: grpc.aio.ServicerContext[
            fees_pb2.CalculateFeeRequest, fees_pb2.CalculateFeeResponse
        ],
    ) -> fees_pb2.CalculateFeeResponse:
        licence_type = request.licence_type
        if not licence_type.strip():
            raise InvalidArgument.field("licence_type", f"is required: one of {self._known}")
        amount = self._fees.get(licence_type)
        if amount is None:
            raise InvalidArgument.field(
                "licence_type",
                f"unknown licence type {_shown(licence_type)}; known types: {self._known}",
            )
        return fees_pb2.CalculateFeeResponse(licence_type=licence_type, amount_pence=amount)


def _shown(value: str) -> str:
    if len(value) <= _SHOWN_CHARS:
        return repr(value)
    return f"{value[:_SHOWN_CHARS]!r}... ({len(value)} characters)"
