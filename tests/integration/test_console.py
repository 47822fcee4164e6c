"""`mesh console` against a real stack (etcd and NATS secured, identity and report, the gateway
with its development gate), run as the operator runs it: `mesh console --port 0` in its own
process, read over HTTP and its live stream.

One stack for the module (starting one takes a while); the tests that break things (a replica
killed, NATS stopped, the gateway stopped) come last, in file order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
import pytest_asyncio

from hms_tools.stack import Stack, StackConfig
from mesh.controlplane import NatsAccess
from mesh.events.subjects import Headers
from mesh.testing import eventually

pytestmark = [
    pytest.mark.integration,
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.timeout(180),
]

REPORT = "hms.report.v1.ReportService"
IDENTITY = "hms.identity.v1.IdentityService"
#: How long the console may take to show what happened (it is told at once; the machine is slow).
SHOWN = 15.0


class Events:
    """The console's /api/events as a page reads it: every event, in order."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http
        self.received: list[tuple[str, Any]] = []
        self.comments = 0
        self.task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async with self.http.stream("GET", "/api/events", timeout=None) as answer:
            assert answer.status_code == 200
            assert answer.headers["content-type"].startswith("text/event-stream")
            event = ""
            async for line in answer.aiter_lines():
                if line.startswith(":"):
                    self.comments += 1
                elif line.startswith("event: "):
                    event = line.removeprefix("event: ")
                elif line.startswith("data: "):
                    self.received.append((event, json.loads(line.removeprefix("data: "))))

    def latest(self, name: str) -> Any:
        found = [data for event, data in self.received if event == name]
        return found[-1] if found else None

    async def until(self, name: str, holds: Callable[[Any], bool], timeout: float = SHOWN) -> Any:
        """The latest `name` event once `holds` is true of it."""

        def check() -> bool:
            latest = self.latest(name)
            return latest is not None and holds(latest)

        try:
            await eventually(check, timeout, interval=0.05)
        except AssertionError:
            raise AssertionError(f"{name}: never as wanted; last {self.latest(name)!r}") from None
        return self.latest(name)

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(BaseException):
            await self.task


class Running:
    def __init__(self, stack: Stack, url: str, http: httpx.AsyncClient) -> None:
        self.stack = stack
        self.url = url
        self.http = http

    def replicas(self, deployment: str) -> list[dict[str, Any]]:
        info = json.loads((self.stack.state_dir / "stack.json").read_text())
        return list(info["services"][deployment]["replicas"])

    async def admin(self) -> Any:
        """NATS as the control plane's administrator (what only `mesh up` does)."""
        assert self.stack.control_plane is not None
        assert self.stack.dev is not None
        assert self.stack.dev.nats is not None
        options = NatsAccess(self.stack.control_plane.admin).options()
        return await nats.connect(self.stack.dev.nats.url, **options)


async def start_console(state_dir: Path) -> tuple[asyncio.subprocess.Process, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hms_tools.cli",
        "console",
        f"--state-dir={state_dir}",
        "--port=0",
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), 60)
    said = line.decode().strip()
    assert said.startswith("mesh console: http://"), said
    return process, said.removeprefix("mesh console: ")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def running(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Running]:
    state_dir = tmp_path_factory.mktemp("console") / "state"
    config = StackConfig(
        state_dir=state_dir,
        deployments=("identity", "report"),
        lease_ttl=2,
        control=False,
        extra_env={"MESH_TRACE_SAMPLE": "1.0"},
    )
    stack = Stack(config, report=lambda text: None)
    await stack.start()
    process: asyncio.subprocess.Process | None = None
    try:
        process, url = await start_console(state_dir)
        async with httpx.AsyncClient(base_url=url, timeout=20) as http:
            yield Running(stack, url, http)
    finally:
        if process is not None and process.returncode is None:
            process.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(process.wait(), 20)
            except TimeoutError:
                process.kill()
                await process.wait()
        await stack.stop()


@pytest_asyncio.fixture(loop_scope="module")
async def events(running: Running) -> AsyncIterator[Events]:
    watching = Events(running.http)
    try:
        yield watching
    finally:
        await watching.close()


def by_deployment(instances: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for row in instances:
        found.setdefault(row["deployment"], []).append(row)
    return found


async def test_the_page_is_served(running: Running) -> None:
    page = await running.http.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")


async def test_instances_come_with_their_lease_health_and_metrics(
    running: Running, events: Events
) -> None:
    def complete(rows: list[dict[str, Any]]) -> bool:
        deployments = by_deployment(rows)
        return set(deployments) == {"identity", "report"} and all(
            r["health"] == "SERVING" and isinstance(r["lease_ttl_s"], int) for r in rows
        )

    rows = await events.until("instances", complete)
    assert {(r["deployment"], r["service"]) for r in rows} == {
        ("identity", IDENTITY),
        ("report", REPORT),
    }
    for row in rows:
        assert row["identity"] == f"spiffe://hms.local/svc/{row['deployment']}"
        assert 0 <= row["lease_ttl_s"] <= 2
        assert row["metrics"].count(":") == 1
        assert row["ejected"] is False
        assert row["draining"] is False
    await events.until("registry", lambda state: state == {"connected": True, "error": ""})
    await events.until("nats", lambda state: state == {"connected": True, "error": ""})
    stats = await events.until("stats", lambda s: s["window_s"] == 60)
    assert set(stats) >= {"window_s", "methods", "edges", "dropped"}


async def test_service_discovery_lists_every_metrics_address(
    running: Running, events: Events
) -> None:
    rows = await events.until("instances", lambda rows: len(by_deployment(rows)) == 2)
    answer = await running.http.get("/api/sd")
    assert answer.status_code == 200, answer.text
    groups = answer.json()
    assert sorted(g["targets"][0] for g in groups) == sorted(r["metrics"] for r in rows)
    for group in groups:
        assert set(group["labels"]) == {"service", "deployment", "version", "zone", "instance"}
        assert group["labels"]["deployment"] in ("identity", "report")
        # The target answers as Prometheus would scrape it.
        metrics = await running.http.get(f"http://{group['targets'][0]}/metrics")
        assert metrics.status_code == 200
        assert "mesh_server_requests" in metrics.text


async def test_routes_are_the_gateways(running: Running) -> None:
    answer = await running.http.get("/api/routes")
    assert answer.status_code == 200, answer.text
    routes = {(r["http_method"], r["template"]): r for r in answer.json()}
    assert routes[("POST", "/v1/reports/identity-check")] == {
        "http_method": "POST",
        "template": "/v1/reports/identity-check",
        "service": REPORT,
        "method": "CreateIdentityCheckReport",
        "scopes": ["reports:create"],
        "public": False,
    }
    assert routes[("POST", "/v1/identity/verify")]["scopes"] == ["identity:verify"]


async def test_explore_answers_and_its_trace_shows_every_hop(
    running: Running, events: Events
) -> None:
    request = {
        "method": "POST",
        "path": "/v1/reports/identity-check",
        "body": {"id": "C12345"},
        # The console's token is no citizen's: it asks as a caseworker.
        "scopes": ["reports:create", "caseworker"],
    }
    answer = await running.http.post("/api/explore", json=request)
    assert answer.status_code == 200, answer.text
    explored = answer.json()
    assert explored["status"] == 200, explored
    assert explored["body"] == {"report": "ID C12345 is verified"}
    assert explored["headers"]["content-type"].startswith("application/json")
    trace_id = explored["trace_id"]
    assert len(trace_id) == 32
    # Without the scope: the gateway's own answer, shown as it is.
    refused = await running.http.post("/api/explore", json={**request, "scopes": []})
    assert refused.status_code == 200
    assert refused.json()["status"] == 403

    async def hops() -> set[tuple[str, str]]:
        found = await running.http.get(f"/api/traces/{trace_id}")
        if found.status_code == 404:
            return set()
        assert found.status_code == 200, found.text
        return {(s["side"], s["deployment"]) for s in found.json()["spans"]}

    every_hop = {
        ("gateway", "gateway"),
        ("server", "report"),
        ("client", "report"),
        ("server", "identity"),
    }
    await eventually(lambda: _holds(hops, every_hop.issubset), SHOWN, interval=0.2)
    trace = (await running.http.get(f"/api/traces/{trace_id}")).json()
    [gateway] = [s for s in trace["spans"] if s["side"] == "gateway"]
    assert (gateway["http_route"], gateway["http_status"]) == ("/v1/reports/identity-check", 200)
    recent = (await running.http.get("/api/traces?limit=50")).json()
    assert trace_id in {t["trace_id"] for t in recent}

    # The call is in the figures: the method's rate, and the edges it took.
    def counted(stats: dict[str, Any]) -> bool:
        methods = {(m["service"], m["method"]) for m in stats["methods"]}
        edges = {(e["caller"], e["callee"]) for e in stats["edges"]}
        return (REPORT, "CreateIdentityCheckReport") in methods and {
            ("client", "gateway"),
            ("gateway", "report"),
            ("report", "identity"),
        } <= edges

    stats = await events.until("stats", counted)
    [row] = [m for m in stats["methods"] if m["method"] == "CreateIdentityCheckReport"]
    assert row["count"] >= 1
    assert row["rps"] > 0
    assert row["p50_ms"] > 0


async def _holds(read: Callable[[], Any], check: Callable[[Any], bool]) -> bool:
    return check(await read())


@pytest.mark.parametrize(
    ("trace_id", "status"),
    [("0af7651916cd43dd8448eb211c80319c", 404), ("nope", 400), ("0" * 32, 400)],
)
async def test_a_trace_not_seen_or_malformed(running: Running, trace_id: str, status: int) -> None:
    answer = await running.http.get(f"/api/traces/{trace_id}")
    assert answer.status_code == status
    assert answer.json()["error"]


async def test_streams_dead_letters_and_a_redrive(running: Running) -> None:
    streams = await running.http.get("/api/streams")
    assert streams.status_code == 200, streams.text
    assert {"HMS_EVENTS", "HMS_DLQ"} <= {s["stream"] for s in streams.json()}
    assert (await running.http.get("/api/deadletters")).json() == []

    # A dead letter as the subscriber writes it (mesh/events/subscriber.py), by root.
    trace_id = "5a0b8f3e1c2d4e6fa7b8c9d0e1f20304"
    subject = "hms.events.hms.housing.v1.VoucherSubmitted"
    letter = {
        Headers.MSG_ID: "report:HMS_EVENTS:41",
        Headers.ID: "evt-41",
        Headers.TYPE: "hms.housing.v1.VoucherSubmitted",
        Headers.SOURCE: "housing",
        Headers.TRACEPARENT: f"00-{trace_id}-00f067aa0ba902b7-01",
        Headers.DLQ_REASON: "handler-failed",
        Headers.DLQ_ERROR: "the database is locked",
        Headers.DLQ_DELIVERIES: "5",
        Headers.DLQ_SUBJECT: subject,
        Headers.DLQ_STREAM: "HMS_EVENTS",
        Headers.DLQ_SEQUENCE: "41",
        Headers.DLQ_CONSUMER: "report__hms_housing_v1_VoucherSubmitted",
    }
    admin = await running.admin()
    try:
        js = admin.jetstream()
        stored = await js.publish(
            "hms.dlq.report.hms.housing.v1.VoucherSubmitted", b"\x0a\x02V1", headers=letter
        )
        [row] = (await running.http.get("/api/deadletters?limit=10")).json()
        assert row["sequence"] == stored.seq
        assert row["subject"] == subject
        assert (row["reason"], row["error"], row["deliveries"]) == (
            "handler-failed",
            "the database is locked",
            5,
        )
        assert (row["consumer"], row["event_id"]) == (
            "report__hms_housing_v1_VoucherSubmitted",
            "evt-41",
        )
        assert row["time"].endswith("Z")

        answer = await running.http.post(f"/api/deadletters/{stored.seq}/redrive")
        assert answer.status_code == 200, answer.text
        redriven = answer.json()
        assert redriven["redriven"] is True
        # The event is stored again under its own id, with no JetStream de-duplication id.
        event = await js.get_msg("HMS_EVENTS", redriven["stream_sequence"])
        assert event.subject == subject
        assert event.data == b"\x0a\x02V1"
        assert event.headers is not None
        assert event.headers[Headers.ID] == "evt-41"
        assert Headers.MSG_ID not in event.headers
        assert not [h for h in event.headers if h.startswith("Hms-Dlq-")]
    finally:
        await admin.close()
    # The letter is gone: listed no more, not redriven twice.
    assert (await running.http.get("/api/deadletters")).json() == []
    again = await running.http.post(f"/api/deadletters/{stored.seq}/redrive")
    assert again.status_code == 404
    assert "no dead letter" in again.json()["error"]
    # The redriven event is tied to the trace it was published in.

    async def event_seen() -> bool:
        found = await running.http.get(f"/api/traces/{trace_id}")
        return found.status_code == 200 and bool(found.json()["events"])

    await eventually(event_seen, SHOWN, interval=0.2)
    [seen] = (await running.http.get(f"/api/traces/{trace_id}")).json()["events"]
    assert seen["type"] == "hms.housing.v1.VoucherSubmitted"
    assert seen["stream_sequence"] == redriven["stream_sequence"]


async def test_a_killed_replica_disappears_and_its_restart_appears(
    running: Running, events: Events
) -> None:
    rows = await events.until("instances", lambda rows: len(by_deployment(rows)) == 2)
    [replica] = running.replicas("identity")
    killed = replica["instance_id"]
    assert killed in {r["instance_id"] for r in rows}
    os.kill(replica["pid"], signal.SIGKILL)
    # Its health stream breaks at once; its entry goes with its lease.
    await events.until("instances", lambda rows: killed not in {r["instance_id"] for r in rows})
    back = await events.until(
        "instances",
        lambda rows: any(r["deployment"] == "identity" and r["health"] == "SERVING" for r in rows),
        timeout=60,
    )
    assert killed not in {r["instance_id"] for r in back}


async def test_etcd_down_keeps_the_last_known_instances(running: Running, events: Events) -> None:
    assert running.stack.dev is not None
    process = running.stack.dev.etcd
    await events.until("instances", lambda rows: len(by_deployment(rows)) == 2)
    await asyncio.to_thread(process.stop)
    try:
        state = await events.until("registry", lambda state: state["connected"] is False)
        assert state["error"]
        # Stale beats empty: still listed, the leases unknown.
        rows = await events.until(
            "instances", lambda rows: all(r["lease_ttl_s"] is None for r in rows)
        )
        assert set(by_deployment(rows)) == {"identity", "report"}
        assert (await running.http.get("/api/sd")).status_code == 200
    finally:
        await asyncio.to_thread(process.start)
    await events.until("registry", lambda state: state == {"connected": True, "error": ""}, 60)
    await events.until(
        "instances",
        lambda rows: (
            set(by_deployment(rows)) == {"identity", "report"}
            and all(isinstance(r["lease_ttl_s"], int) for r in rows)
        ),
        60,
    )


async def test_nats_down_is_a_state_not_a_failure(running: Running, events: Events) -> None:
    assert running.stack.dev is not None
    assert running.stack.dev.nats is not None
    process = running.stack.dev.nats
    await asyncio.to_thread(process.stop)
    try:
        await events.until("nats", lambda state: state["connected"] is False)
        for path in ("/api/streams", "/api/deadletters"):
            answer = await running.http.get(path)
            assert answer.status_code == 503
            assert "NATS is not connected" in answer.json()["error"]
        # The registry's side goes on.
        assert (await running.http.get("/api/sd")).status_code == 200
    finally:
        await asyncio.to_thread(process.start)
    await events.until("nats", lambda state: state == {"connected": True, "error": ""}, 60)
    assert (await running.http.get("/api/streams")).status_code == 200


async def test_the_gateway_down_is_an_error_in_json(running: Running) -> None:
    assert running.stack.gateway is not None
    await asyncio.to_thread(running.stack.gateway.stop, 15.0)
    answer = await running.http.get("/api/routes")
    assert answer.status_code == 502
    assert "did not answer" in answer.json()["error"]
    explore = await running.http.post(
        "/api/explore", json={"method": "GET", "path": "/v1/anything", "scopes": []}
    )
    assert explore.status_code == 502
    assert "did not answer" in explore.json()["error"]
