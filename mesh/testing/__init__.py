"""Fakes for unit tests, each behind the same interface as the real thing, so that code under
test cannot tell them apart; one copy here instead of one per test file.

Waiting (for conditions no event announces; never a fixed sleep):

    eventually(predicate)      async: until predicate() holds (it may be a coroutine function)
    wait_until(predicate)      the same for synchronous tests

Time:

    VirtualClock               a monotonic clock (`Callable[[], float]`) that moves only when told
    VirtualWallClock           a wall clock (aware datetimes) that moves only when told
    FakeSleep                  an injected `asyncio.sleep`: writes the delay down, moves a clock

gRPC, server side (a handler called directly, no server):

    FakeContext                a `grpc.aio.ServicerContext`: deadline, metadata, peer, abort ...
    Aborted                    what `FakeContext.abort` raises (a `grpc.aio.AbortError`)
    signed_in(subject, scopes) handle calls as an end user the gateway verified

gRPC, client side (the mesh's transport without a channel):

    FakeRpc                    a grpc.aio call as its caller holds it: awaited, or read as a
                               stream; its metadata, code and details
    FakeMulticallable          what `channel.unary_unary(method)` returns: scripted answers,
                               each call written down as a `SentCall`
    FakeEndpoint               `mesh.client.endpoint.Endpoint` as the transport uses it
    DummyChannel               a per-instance channel where only `close()` is used

etcd (the registry without a server):

    FakeEtcd                   `mesh.registry.etcd.Etcd` on an in-memory store: revisions,
                               watches, leases, outages (see its docstring)

A handler test, as a service's tests are written (docs/new-service.md):

    from mesh import InvalidArgument
    from mesh.testing import FakeContext

    async def test_quote_needs_a_kind() -> None:
        with pytest.raises(InvalidArgument) as bad:
            await FeeService().Quote(fees_pb2.QuoteRequest(), FakeContext(allow_abort=False))
        assert bad.value.violations == [("kind", "is required")]
"""

from mesh.server.enduser import signed_in
from mesh.testing.calls import DummyChannel, FakeEndpoint, FakeMulticallable, FakeRpc, SentCall
from mesh.testing.clock import FakeSleep, VirtualClock, VirtualWallClock
from mesh.testing.etcd import FakeEtcd
from mesh.testing.servicer import Aborted, FakeContext
from mesh.testing.waiting import eventually, wait_until

__all__ = [
    "Aborted",
    "DummyChannel",
    "FakeContext",
    "FakeEndpoint",
    "FakeEtcd",
    "FakeMulticallable",
    "FakeRpc",
    "FakeSleep",
    "SentCall",
    "VirtualClock",
    "VirtualWallClock",
    "eventually",
    "signed_in",
    "wait_until",
]
