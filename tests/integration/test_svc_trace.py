"""svc.trace through a real stack piece: etcd, NATS, the echo backend, the trace witness (its
handler calls Echo) and the gateway, each its own process with mTLS, every one recording at
`--trace-sample 1` to NATS.

A REST request's records, every hop of it (the gateway's, the gateway's client attempt, the
witness serving, the witness's client attempt, echo serving), arrive on svc.trace.* in the
trace the gateway's ``traceparent`` answer names, each under the span before it, the callers
named by their certificates. With NATS stopped under load the requests keep succeeding, and
the records lost are counted where Prometheus reads them.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import nats as nats_py
import pytest
from nats.aio.client import Client

from hms.mesh.v1 import trace_pb2
from hms_tools import certs
from hms_tools.devstack import EtcdProcess, GatewayProcess, NatsProcess, ServiceProcess
from mesh.events.publisher import ensure_stream
from mesh.events.subjects import dead_letter_stream, events_stream
from mesh.registry.watch import Discovery
from mesh.testing import eventually
from mesh.tracecontext import parse_traceparent

from .conftest import clean_env, service_process, wait_for_deployment
from .gateway.conftest import wait_ready
from .test_trace_context import WitnessProcess

pytestmark = pytest.mark.integration

MIRROR = "hms.testing.v1.MirrorService"
ECHO = "hms.testing.v1.EchoService"
SAMPLE_ALL = "--trace-sample=1"


def spiffe(name: str) -> str:
    return f"spiffe://hms.local/svc/{name}"


@dataclass
class Stack:
    gateway: str
    nats: NatsProcess
    echo_metrics: str
    records: list[trace_pb2.CallRecord] = field(default_factory=list)
    batches: list[trace_pb2.CallRecordBatch] = field(default_factory=list)

    def of_trace(self, trace_id: str) -> list[trace_pb2.CallRecord]:
        return [r for r in self.records if r.trace_id == trace_id]


@pytest.fixture
async def stack(etcd: EtcdProcess, discovery: Discovery, tmp_path: Path) -> AsyncIterator[Stack]:
    tls_dir = tmp_path / "tls"
    certs.ensure(tls_dir, ["echo", "witness", "gateway", "ops"])
    nats = NatsProcess(tmp_path / "nats.data")
    nats.start()
    started: list[ServiceProcess] = []
    listener: Client | None = None
    try:
        setup = await nats_py.connect(nats.url, allow_reconnect=False)
        try:  # the witness publishes events: the streams `mesh up` makes
            await ensure_stream(setup.jetstream(), events_stream())
            await ensure_stream(setup.jetstream(), dead_letter_stream())
        finally:
            await setup.close()
        echo = service_process(
            "echo", "echo", etcd=etcd.endpoint, tls_dir=tls_dir, base=tmp_path,
            extra=(f"--nats={nats.url}", SAMPLE_ALL),
        ).start()  # fmt: skip
        started.append(echo)
        witness = WitnessProcess(
            "witness",
            [
                f"--etcd={etcd.endpoint}",
                f"--tls-dir={tls_dir}",
                "--cert-name=witness",
                f"--nats={nats.url}",
                f"--data-dir={tmp_path / 'data' / 'witness'}",
                "--ttl=2",
                "--grace=2",
                SAMPLE_ALL,
            ],
            env=clean_env(),
            log_path=tmp_path / "witness.log",
        )
        started.append(witness.start())
        echo_instance = await wait_for_deployment(discovery, "echo", echo)
        await wait_for_deployment(discovery, "witness", witness)
        gateway = GatewayProcess(
            [
                f"--etcd={etcd.endpoint}",
                f"--tls-dir={tls_dir}",
                "--cert-name=gateway",
                f"--nats={nats.url}",
                SAMPLE_ALL,
            ],
            env=clean_env(),
            log_path=tmp_path / "gateway.log",
        ).start()
        started.append(gateway)
        url = gateway.wait_url()
        await asyncio.to_thread(wait_ready, url, {MIRROR, ECHO})
        here = Stack(url, nats, echo_instance.metadata["metrics"])
        listener = await nats_py.connect(nats.url, allow_reconnect=False)

        async def received(message: Any) -> None:
            batch = trace_pb2.CallRecordBatch.FromString(message.data)
            here.batches.append(batch)
            here.records.extend(batch.records)

        await listener.subscribe("svc.trace.>", cb=received)
        await listener.flush()
        yield here
    finally:
        if listener is not None and not listener.is_closed:
            await listener.close()
        for process in reversed(started):
            process.stop(timeout=5)
        nats.stop()


def _trace_of(traceparent: str) -> tuple[str, str]:
    context = parse_traceparent(traceparent)
    assert context is not None, f"not a valid traceparent: {traceparent!r}"
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


def _one(records: list[trace_pb2.CallRecord], side: int, deployment: str) -> trace_pb2.CallRecord:
    found = [r for r in records if r.side == side and r.deployment == deployment]
    assert len(found) == 1, f"{len(found)} records of side {side} from {deployment}: {records}"
    return found[0]


async def test_every_hop_of_a_rest_request_is_recorded_in_its_trace(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.gateway, timeout=10) as client:
        response = await client.get("/v1/items/traced")
    assert response.status_code == 200, response.text
    trace_id, gateway_span = _trace_of(response.headers["traceparent"])

    def complete() -> bool:
        return len(stack.of_trace(trace_id)) >= 5

    await eventually(complete, 10, interval=0.02)
    records = stack.of_trace(trace_id)
    at_gateway = _one(records, trace_pb2.SIDE_GATEWAY, "gateway")
    gateway_call = _one(records, trace_pb2.SIDE_CLIENT, "gateway")
    witness_serves = _one(records, trace_pb2.SIDE_SERVER, "witness")
    witness_call = _one(records, trace_pb2.SIDE_CLIENT, "witness")
    echo_serves = _one(records, trace_pb2.SIDE_SERVER, "echo")
    assert len(records) == 5, records

    # The gateway's own span is the one its answer names; the rest hang under it in order.
    assert at_gateway.span_id == gateway_span
    assert at_gateway.parent_span_id == ""
    assert gateway_call.parent_span_id == at_gateway.span_id
    assert witness_serves.parent_span_id == gateway_call.span_id
    assert witness_call.parent_span_id == witness_serves.span_id
    assert echo_serves.parent_span_id == witness_call.span_id

    assert (at_gateway.http_method, at_gateway.http_route, at_gateway.http_status) == (
        "GET",
        "/v1/items/{id}",
        200,
    )
    assert (at_gateway.service, at_gateway.method) == (MIRROR, "GetItem")
    # Callers: the gateway's and the witness's own identities on their client side, the
    # peer certificate's on the server side.
    assert at_gateway.caller == gateway_call.caller == witness_serves.caller == spiffe("gateway")
    assert witness_call.caller == echo_serves.caller == spiffe("witness")
    # The instance each call went to is the one that served it.
    assert gateway_call.callee_instance == witness_serves.callee_instance
    assert gateway_call.callee_address == witness_serves.callee_address
    assert at_gateway.callee_instance == witness_serves.callee_instance
    assert witness_call.callee_instance == echo_serves.callee_instance
    assert (witness_call.service, witness_call.method) == (ECHO, "Echo")
    assert all(r.code == 0 for r in records)
    # Each hop's time within its caller's.
    assert at_gateway.duration_nanos >= gateway_call.duration_nanos >= witness_serves.duration_nanos
    assert witness_serves.duration_nanos >= witness_call.duration_nanos
    assert witness_call.duration_nanos >= echo_serves.duration_nanos


async def _dropped(client: httpx.AsyncClient, url: str) -> float:
    text = (await client.get(url)).text
    found = re.search(r"^mesh_trace_records_dropped_total (\S+)$", text, re.MULTILINE)
    assert found is not None, f"no mesh_trace_records_dropped_total at {url}"
    return float(found.group(1))


async def test_nats_stopped_under_load_loses_records_counted_never_requests(stack: Stack) -> None:
    body = {"message": "x", "forwardHops": 1}  # gateway -> echo -> echo: three processes' hops
    async with httpx.AsyncClient(base_url=stack.gateway, timeout=10) as client:

        async def load(requests: int) -> list[int]:
            statuses: list[int] = []
            for _ in range(requests):
                statuses.append((await client.post("/v1/echo", json=body)).status_code)
            return statuses

        before = await asyncio.gather(*(load(20) for _ in range(4)))
        await eventually(lambda: len(stack.records) >= 80 * 5, 10, interval=0.05)
        assert all(batch.dropped == 0 for batch in stack.batches)

        stopping = asyncio.ensure_future(asyncio.to_thread(stack.nats.stop))
        during = await asyncio.gather(*(load(50) for _ in range(4)))
        await stopping
        after = await asyncio.gather(*(load(20) for _ in range(4)))

        assert {s for run in (*before, *during, *after) for s in run} == {200}
        metrics = f"http://{stack.echo_metrics}/metrics"

        async def counted() -> bool:
            return await _dropped(client, "/metrics") > 0 and await _dropped(client, metrics) > 0

        await eventually(counted, 10, interval=0.1)
