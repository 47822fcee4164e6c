"""The console's HTTP side (tools/console/app.py, sse.py) on a console whose stack is not
there: every API answer is JSON, errors included; the live stream drops a page that stopped
reading without holding up the others, and keeps the rest alive."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, MutableMapping
from pathlib import Path
from typing import Any

import httpx
import pytest

from hms.mesh.v1 import trace_pb2
from hms_tools.console import app as console_app
from hms_tools.console.server import Console, ConsoleSettings
from hms_tools.console.sse import Hub, frame
from mesh.testing import eventually

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.fixture
def console(tmp_path: Path) -> Console:
    # Nothing listens on these: the console is not started, the API must still answer.
    settings = ConsoleSettings(
        state_dir=tmp_path, etcd=("127.0.0.1:1",), nats="nats://127.0.0.1:1", gateway=None
    )
    return Console(settings)


@pytest.fixture
async def http(console: Console, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    static = tmp_path / "static"
    static.mkdir()
    (static / "app.js").write_text("export const x = 1;\n")
    (tmp_path / "secret.txt").write_text("not for the page")
    console.app = console_app.ConsoleApp(console, static)
    transport = httpx.ASGITransport(app=console.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://console") as client:
        yield client


def feed_trace(console: Console) -> None:
    record = trace_pb2.CallRecord(
        trace_id=TRACE,
        span_id="00f067aa0ba902b7",
        side=trace_pb2.SIDE_SERVER,
        deployment="identity",
        service="hms.identity.v1.IdentityService",
        method="VerifyCitizen",
        start_unix_nanos=1_700_000_000_000_000_000,
        duration_nanos=2_000_000,
    )
    batch = trace_pb2.CallRecordBatch(records=[record])
    console._on_trace("svc.trace.hms.identity.v1.IdentityService", batch.SerializeToString())


@pytest.mark.parametrize(
    ("method", "path", "status", "says"),
    [
        ("GET", f"/api/traces/{TRACE}", 404, "no such trace"),
        ("GET", "/api/traces/not-a-trace", 400, "not 32 hex digits"),
        ("GET", "/api/traces/" + "0" * 32, 400, "not 32 hex digits"),
        ("GET", "/api/traces/" + "a" * 33, 400, "not 32 hex digits"),
        ("GET", "/api/traces?limit=0", 400, "limit '0'"),
        ("GET", "/api/traces?limit=lots", 400, "limit 'lots'"),
        ("GET", "/api/traces?limit=1001", 400, "from 1 to 1000"),
        ("GET", "/api/streams", 503, "NATS is not connected"),
        ("GET", "/api/deadletters", 503, "NATS is not connected"),
        ("POST", "/api/deadletters/12/redrive", 503, "NATS is not connected"),
        ("POST", "/api/deadletters/x/redrive", 400, "a whole number"),
        ("POST", "/api/deadletters/0/redrive", 400, "a whole number"),
        ("GET", "/api/deadletters/12/redrive", 405, "only POST"),
        ("GET", "/api/routes", 502, "runs no gateway"),
        ("GET", "/api/sd", 503, "registry has not been read"),
        ("POST", "/api/sd", 405, "only GET"),
        ("GET", "/api/nothing", 404, "no API at /api/nothing"),
        ("DELETE", "/api/events", 405, "only GET"),
        ("GET", "/nothing.js", 404, "no such file"),
        ("GET", "/../secret.txt", 404, "no such file"),
        ("GET", "/%2e%2e/secret.txt", 404, "no such file"),
        ("POST", "/", 405, "only GET, HEAD"),
    ],
)
async def test_errors_are_json(
    http: httpx.AsyncClient, method: str, path: str, status: int, says: str
) -> None:
    answer = await http.request(method, path)
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/json"
    assert says in answer.json()["error"]
    if status == 405:
        assert answer.headers["allow"]


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        (b"", 400, "has no body"),
        (b"{nope", 400, "not JSON"),
        (b"[]", 400, "send a JSON object"),
        (b'{"method": "BREW", "path": "/x"}', 400, "method 'BREW'"),
        (b'{"method": "GET", "path": "http://elsewhere/"}', 400, "a path on the gateway"),
        (b'{"method": "GET", "path": "//elsewhere/x"}', 400, "a path on the gateway"),
        (b'{"method": "GET", "path": "/a b"}', 400, "no spaces"),
        (b'{"method": "GET", "path": "/x", "scopes": "a b"}', 400, "a list of strings"),
        (b'{"method": "GET", "path": "/x", "scopes": ["a b"]}', 502, "runs no gateway"),
        (b"x" * (1024 * 1024 + 1), 413, "over"),
    ],
)
async def test_explore_refuses_bad_requests(
    http: httpx.AsyncClient, body: bytes, status: int, says: str
) -> None:
    answer = await http.post("/api/explore", content=body)
    assert answer.status_code == status, answer.text
    assert says in answer.json()["error"]


async def test_a_trace_seen_is_answered(console: Console, http: httpx.AsyncClient) -> None:
    feed_trace(console)
    answer = await http.get(f"/api/traces/{TRACE.upper()}")  # as pasted: case does not matter
    assert answer.status_code == 200, answer.text
    found = answer.json()
    assert found["trace_id"] == TRACE
    assert [(s["side"], s["deployment"], s["method"]) for s in found["spans"]] == [
        ("server", "identity", "VerifyCitizen")
    ]
    assert found["events"] == []
    recent = (await http.get("/api/traces?limit=5")).json()
    assert [(t["trace_id"], t["spans"]) for t in recent] == [(TRACE, 1)]


async def test_the_page_and_its_files(http: httpx.AsyncClient) -> None:
    page = await http.get("/")
    assert page.status_code == 200
    assert "console page not built yet" in page.text  # no index.html in this static dir
    script = await http.get("/app.js")
    assert script.status_code == 200
    assert script.headers["content-type"] == "text/javascript; charset=utf-8"
    assert script.text == "export const x = 1;\n"
    head = await http.head("/app.js")
    assert (head.status_code, head.content) == (200, b"")
    assert head.headers["content-length"] == str(len("export const x = 1;\n"))


# -- the live stream ---------------------------------------------------------------------------


class Page:
    """One page's /api/events, driven by the ASGI protocol itself: what it was sent, and
    whether it reads (a page that stopped reading never finishes a send)."""

    def __init__(self, app: console_app.ConsoleApp, *, reads: bool = True) -> None:
        self.reads = reads
        self.chunks: list[bytes] = []
        self.status = 0
        self.ended = False
        self._gone = asyncio.Event()
        self._stuck = asyncio.Event()  # never set
        scope = {"type": "http", "method": "GET", "path": "/api/events", "query_string": b""}
        self.task = asyncio.ensure_future(app(scope, self._receive, self._send))

    async def _receive(self) -> MutableMapping[str, Any]:
        await self._gone.wait()
        return {"type": "http.disconnect"}

    async def _send(self, message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            return
        if not self.reads and self.chunks:
            await self._stuck.wait()
        self.chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            self.ended = True

    def events(self) -> list[tuple[str, Any]]:
        found = []
        for block in b"".join(self.chunks).decode().split("\n\n"):
            lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
            if "event" in lines:
                found.append((lines["event"], json.loads(lines["data"])))
        return found

    async def leave(self) -> None:
        self._gone.set()
        await asyncio.wait_for(self.task, 5)


async def test_a_page_gets_the_state_then_changes(console: Console) -> None:
    feed_trace(console)
    page = Page(console.app)
    await eventually(lambda: len(page.events()) >= 4, 5)
    assert page.status == 200
    names = [name for name, _ in page.events()]
    assert names == ["nats", "registry", "instances", "stats"]
    stats = dict(page.events())["stats"]
    assert [m["method"] for m in stats["methods"]] == ["VerifyCitizen"]
    assert dict(page.events())["instances"] == []
    console.hub.publish("nats", {"connected": True, "error": ""})
    await eventually(lambda: page.events()[-1] == ("nats", {"connected": True, "error": ""}), 5)
    await page.leave()
    assert page not in console.hub.clients
    assert not console.hub.clients


async def test_a_page_that_stopped_reading_is_dropped_and_holds_no_one_up(
    console: Console, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(console_app, "SEND_TIMEOUT_S", 0.5)
    console.hub = Hub(queue_size=8)
    stuck = Page(console.app, reads=False)
    fine = Page(console.app)
    await eventually(lambda: len(console.hub.clients) == 2 and fine.events(), 5)
    for n in range(50):
        console.hub.publish("decisions", {"n": n})
        # The reading page keeps up; the other's queue fills behind its first send.
        await eventually(lambda n=n: fine.events()[-1] == ("decisions", {"n": n}), 5)
    assert [d["n"] for name, d in fine.events() if name == "decisions"] == list(range(50))
    assert console.hub.dropped == 1
    assert console.hub.clients == {next(iter(console.hub.clients))}
    # Its send never finishes: given up after SEND_TIMEOUT_S, the handler returns.
    await asyncio.wait_for(stuck.task, 5)
    await fine.leave()


async def test_an_idle_stream_is_kept_alive(
    console: Console, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(console_app, "KEEP_ALIVE_S", 0.05)
    page = Page(console.app)
    await eventually(lambda: b"".join(page.chunks).count(b": keep-alive\n\n") >= 2, 5)
    await page.leave()


def test_sse_frames_are_one_json_line() -> None:
    assert frame("stats", {"a": "two\nlines"}) == b'event: stats\ndata: {"a":"two\\nlines"}\n\n'


def test_a_client_that_ends_gets_no_more() -> None:
    hub = Hub(queue_size=2)
    client = hub.connect(frame("a", 1))
    hub.publish("b", 2)
    hub.publish("c", 3)  # full: dropped
    assert client.dropped
    assert hub.dropped == 1
    assert not hub.clients
    assert client.queue.get_nowait() is None


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--port=70000"], "--port 70000: must be within 0..65535"),
        ([], "stack.json not found: is `mesh up` running?"),
    ],
)
def test_the_command_refuses_what_it_cannot_serve(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], says: str
) -> None:
    from hms_tools.cli import main

    assert main(["console", f"--state-dir={tmp_path}", *argv]) == 2
    assert says in capsys.readouterr().err


async def test_the_manifests_give_the_event_topology(http: httpx.AsyncClient) -> None:
    """/api/manifests: every deployment of services/ and, per event type, who publishes and
    who subscribes, as the manifests declare (whether or not anything flowed)."""
    answer = await http.get("/api/manifests")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    names = {d["name"] for d in body["deployments"]}
    assert {"housing", "notify", "audit", "payments"} <= names
    events = {e["type"]: e for e in body["events"]}
    voucher = events["hms.housing.v1.VoucherSubmitted"]
    assert voucher["publishers"] == ["housing"]
    assert voucher["subscribers"] == ["audit", "notify"]
    assert events["hms.payments.v1.PaymentRefunded"]["subscribers"] == ["audit"]
    assert {
        "caller": "licensing",
        "callee": "payments",
        "service": "hms.payments.v1.PaymentService",
    } in body["calls"]
