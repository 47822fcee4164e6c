"""One trace from a REST call to the events it causes, with span export off (the default).

A real gateway, the trace witness backend (tests/backends/witness: its handler calls Echo,
writes an outbox event and publishes another directly) and the echo backend, each its own
process, with real etcd, NATS and mTLS. The caller's ``traceparent`` (or, without one, the
trace the gateway starts) must come back in the gateway's ``traceparent`` response header, be
the trace the witness and Echo handle the call in, and travel with both events to a handler.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import nats as nats_py
import pytest
from nats.js import JetStreamContext

from hms.testing.v1 import events_pb2
from hms_tools import certs
from hms_tools.devstack import EtcdProcess, GatewayProcess, NatsProcess, ServiceProcess
from mesh.events import ConsumerSpec, EventMeta, Headers, Subscriber
from mesh.events.publisher import ensure_stream
from mesh.events.subjects import dead_letter_stream, events_stream
from mesh.registry.watch import Discovery
from mesh.tracecontext import current_trace_id, parse_traceparent

from .conftest import clean_env, service_process, wait_for_deployment
from .gateway.conftest import wait_ready

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_TRACEPARENT = f"00-{CALLER_TRACE}-00f067aa0ba902b7-01"
FAST = ConsumerSpec(ack_wait=1.0, backoff=(0.05, 0.1), max_deliver=3, max_in_flight=8)
EVENT_WAIT = 15.0


class WitnessProcess(ServiceProcess):
    """The trace witness test backend, run from the checkout."""

    def command(self) -> list[str]:
        return [sys.executable, "-m", "tests.backends.witness.main", *self.args]

    def _environment(self) -> dict[str, str] | None:
        env = dict(os.environ if self.env is None else self.env)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
        return env


@dataclass(frozen=True)
class Seen:
    """What an event handler saw of one event."""

    voucher_id: str
    meta_trace_id: str
    handler_trace_id: str
    traceparent: str


@dataclass
class Stack:
    gateway: str
    js: JetStreamContext
    events: asyncio.Queue[Seen]


@pytest.fixture
async def stack(etcd: EtcdProcess, discovery: Discovery, tmp_path: Path) -> AsyncIterator[Stack]:
    tls_dir = tmp_path / "tls"
    certs.ensure(tls_dir, ["echo", "witness", "gateway", "ops"])
    nats = NatsProcess(tmp_path / "nats.data")
    nats.start()
    started: list[ServiceProcess] = []
    connection = None
    subscriber = None
    try:
        connection = await nats_py.connect(nats.url, allow_reconnect=False)
        js = connection.jetstream()
        await ensure_stream(js, events_stream())
        await ensure_stream(js, dead_letter_stream())
        echo = service_process("echo", "echo", etcd=etcd.endpoint, tls_dir=tls_dir, base=tmp_path)
        started.append(echo.start())
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
            ],
            env=clean_env(),
            log_path=tmp_path / "witness.log",
        )
        started.append(witness.start())
        await wait_for_deployment(discovery, "echo", echo)
        await wait_for_deployment(discovery, "witness", witness)
        gateway = GatewayProcess(
            [f"--etcd={etcd.endpoint}", f"--tls-dir={tls_dir}", "--cert-name=gateway"],
            env=clean_env(),
            log_path=tmp_path / "gateway.log",
        ).start()
        started.append(gateway)
        url = gateway.wait_url()
        await asyncio.to_thread(wait_ready, url, {"hms.testing.v1.MirrorService"})

        events: asyncio.Queue[Seen] = asyncio.Queue()

        async def on_voucher(message: events_pb2.VoucherSubmitted, meta: EventMeta) -> None:
            seen = Seen(
                voucher_id=message.voucher_id,
                meta_trace_id=meta.trace_id,
                handler_trace_id=current_trace_id(),
                traceparent=meta.headers.get(Headers.TRACEPARENT, ""),
            )
            events.put_nowait(seen)

        subscriber = Subscriber(js, "tracetest", spec=FAST, poll=0.2)
        await subscriber.subscribe(events_pb2.VoucherSubmitted, on_voucher)
        yield Stack(url, js, events)
    finally:
        if subscriber is not None:
            await subscriber.close()
        if connection is not None:
            await connection.close()
        for process in reversed(started):
            process.stop(timeout=5)
        nats.stop()


async def _events_of(stack: Stack, item: str) -> dict[str, Seen]:
    """The two events the witness sent for `item` (others' are skipped), by voucher id."""
    wanted = {f"{item}-outbox", f"{item}-direct"}
    found: dict[str, Seen] = {}
    async with asyncio.timeout(EVENT_WAIT):
        while set(found) != wanted:
            seen = await stack.events.get()
            if seen.voucher_id in wanted:
                found[seen.voucher_id] = seen
    return found


def _metadata(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 200, response.text
    return {entry["key"]: entry["value"] for entry in response.json()["metadata"]}


def _trace_of(traceparent: str) -> str:
    context = parse_traceparent(traceparent)
    assert context is not None, f"not a valid traceparent: {traceparent!r}"
    return f"{context.trace_id:032x}"


@pytest.mark.parametrize(
    ("item", "sent"),
    [
        pytest.param("with-caller-trace", CALLER_TRACEPARENT, id="caller-trace"),
        pytest.param("without-trace", None, id="gateway-starts-one"),
    ],
)
async def test_one_trace_from_the_rest_call_to_its_events(
    stack: Stack, item: str, sent: str | None
) -> None:
    headers = {"traceparent": sent} if sent else {}
    async with httpx.AsyncClient(base_url=stack.gateway, timeout=10) as client:
        response = await client.get(f"/v1/items/{item}", headers=headers)
    returned = response.headers["traceparent"]
    trace_id = _trace_of(returned)
    if sent:
        assert trace_id == CALLER_TRACE
        assert returned != sent  # the gateway's own span id, not the caller's
    seen = _metadata(response)
    # The backend call carries the gateway's span: exactly the header the caller got back.
    assert seen["traceparent"] == returned
    assert seen["witness-trace-id"] == trace_id  # the handler's current trace
    assert seen["echo-trace-id"] == trace_id  # the hop it made
    events = await _events_of(stack, item)
    for event in events.values():
        assert _trace_of(event.traceparent) == trace_id
        assert event.meta_trace_id == trace_id
        assert event.handler_trace_id == trace_id


async def test_a_chain_of_hops_is_one_trace(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.gateway, timeout=10) as client:
        response = await client.post("/v1/echo", json={"message": "x", "forwardHops": 2})
    assert response.status_code == 200, response.text
    trace_id = _trace_of(response.headers["traceparent"])
    assert [hop["traceId"] for hop in response.json()["hops"]] == [trace_id] * 3


async def test_errors_from_the_gateway_carry_the_trace(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.gateway, timeout=10) as client:
        missing = await client.get("/v1/nowhere", headers={"traceparent": CALLER_TRACEPARENT})
        bad = await client.post("/v1/echo", content=b"{not json")
    assert missing.status_code == 404
    assert _trace_of(missing.headers["traceparent"]) == CALLER_TRACE
    assert bad.status_code == 400
    assert re.fullmatch(r"[0-9a-f]{32}", _trace_of(bad.headers["traceparent"]))
