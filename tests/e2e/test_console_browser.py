"""The mesh console in a real browser: headless Chromium (Debian's chromium and chromium-driver,
driven by selenium) on `mesh console` over a real stack (etcd and NATS secured, a few services
with their manifests' authorization, the gateway with its JWT gate).

The page must show every service, lose a killed replica and gain a new one within 3 s, open a
REST request's trace by the id the gateway returned and show every hop, and say clearly when a
trace id is unknown and when NATS or etcd is down. Screenshots of each step are saved under the
test's tmp dir (their folder is printed).

Skipped, with the reason, only where Chromium, chromedriver or selenium are missing (`.ci/run`
installs them where apt is available).
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pytest

from hms_tools.control import send_request
from hms_tools.devjwt import mint_token
from hms_tools.flows import PAY_STUB_PDF
from hms_tools.stack import Stack, StackConfig
from mesh.testing import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")

webdriver = pytest.importorskip(
    "selenium.webdriver", reason="selenium is not installed (pip install -e '.[dev]')"
)
if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
    pytest.skip(
        f"Chromium or chromedriver missing ({CHROMIUM}, {CHROMEDRIVER}): "
        "apt-get install -y chromium chromium-driver (.ci/run does where apt is available)",
        allow_module_level=True,
    )

T = TypeVar("T")

#: Deployments of the stack: housing calls eligibility and documents and publishes an event
#: that notify takes; eligibility runs two replicas so one can be killed.
DEPLOYMENTS = ("documents", "eligibility", "housing", "notify")
REPLICATED = "eligibility"
#: What the page must do within: show an instance gone or come (the issue's 3 s).
LIVE_WITHIN_S = 3.0
START_TIMEOUT = 180.0
#: The console's own start (it connects to etcd, NATS and the gateway).
CONSOLE_TIMEOUT = 60.0
#: Chromium's flags: headless, and none of its own network traffic (this machine's network is
#: closed; without them connections are refused while it tries).
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # Containers often give /dev/shm 64 MiB, which Chromium's renderer can outgrow.
    "--disable-dev-shm-usage",
    "--window-size=1440,1000",
)
CITIZEN = "C12345"


class Running:
    """The stack, on an event loop of its own in a background thread for the whole module."""

    def __init__(self, stack: Stack, loop: asyncio.AbstractEventLoop) -> None:
        self.stack = stack
        self.loop = loop

    def run(self, work: Coroutine[Any, Any, T], timeout: float = 120.0) -> T:
        return asyncio.run_coroutine_threadsafe(work, self.loop).result(timeout)

    @property
    def state_dir(self) -> Path:
        return self.stack.state_dir

    def info(self) -> dict[str, Any]:
        return dict(json.loads((self.state_dir / "stack.json").read_text()))

    def replicas(self, deployment: str) -> list[dict[str, Any]]:
        return list(self.info()["services"][deployment]["replicas"])

    def services(self) -> set[str]:
        """Every gRPC service the stack's replicas registered."""
        return {
            instance["service"]
            for deployment in self.info()["services"].values()
            for replica in deployment["replicas"]
            for instance in replica["instances"]
        }

    def rest(
        self,
        method: str,
        path: str,
        scopes: list[str],
        body: bytes,
        content_type: str = "application/json",
    ) -> tuple[int, bytes, dict[str, str]]:
        """One request through the gateway with a development token holding `scopes`."""
        address = urlsplit(self.stack.info["gateway"])
        token = mint_token(self.state_dir, CITIZEN, scopes)  # the citizen acts for herself
        connection = http.client.HTTPConnection(address.hostname, address.port, timeout=15)
        try:
            connection.request(
                method,
                path,
                body=body,
                headers={"authorization": f"Bearer {token}", "content-type": content_type},
            )
            response = connection.getresponse()
            headers = {k.lower(): v for k, v in response.getheaders()}
            return response.status, response.read(), headers
        finally:
            connection.close()


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    state_dir = tmp_path_factory.mktemp("console") / "state"
    with pytest.MonkeyPatch.context() as env:
        # A developer's MESH_* variables (another stack's etcd, NATS) must not reach this one.
        for name in [n for n in os.environ if n.startswith("MESH_")]:
            env.delenv(name)
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="console-stack", daemon=True)
        thread.start()
        config = StackConfig(
            state_dir=state_dir,
            deployments=DEPLOYMENTS,
            scale={REPLICATED: 2},
            # A killed replica's registration lasts its lease: 2 s (etcd's shortest).
            lease_ttl=2,
            extra_env={"MESH_TRACE_SAMPLE": "1.0"},
        )
        stack = Stack(config, report=lambda line: print(f"[stack] {line}"))
        starting = asyncio.run_coroutine_threadsafe(stack.start(), loop)
        try:
            starting.result(START_TIMEOUT)
            yield Running(stack, loop)
        finally:
            starting.cancel()
            asyncio.run_coroutine_threadsafe(stack.stop(), loop).result(120)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            if not thread.is_alive():
                loop.close()


@pytest.fixture(scope="module")
def console_url(running: Running) -> Iterator[str]:
    """`mesh console` on the stack, as its own process; its URL as it prints it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESH_")}
    log_path = running.state_dir.parent / "console.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "hms_tools.cli", "console", "--state-dir", str(running.state_dir),
         "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    said: list[str] = []
    found = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        with log_path.open("w") as log:
            for raw in proc.stdout:
                line = raw.decode(errors="replace")
                said.append(line)
                log.write(line)
                log.flush()
                if re.search(r"https?://\S+", line):
                    found.set()

    reader = threading.Thread(target=read, name="console-output", daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + CONSOLE_TIMEOUT
        while not found.wait(0.1):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(
                    f"`mesh console` printed no URL (status {proc.poll()}): {''.join(said)}"
                )
        match = next(m for line in said if (m := re.search(r"https?://[^\s/]+", line)))
        yield match.group(0)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        reader.join(5)
        if proc.stdout is not None:
            proc.stdout.close()


def serving(row: str) -> bool:
    """Does an instance's row say its health is SERVING?"""
    return "serving" in row and "not serving" not in row


class Page:
    """The console page in headless Chromium, read through small scripts (no stale elements)."""

    def __init__(self, driver: Any, url: str, shots: Path) -> None:
        self.driver = driver
        self.url = url
        self.shots = shots

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def view(self, name: str) -> None:
        """Open a view by its link in the navigation, as a person would."""
        from selenium.webdriver.common.by import By

        self.driver.find_element(By.CSS_SELECTOR, f'nav a[href="#{name}"]').click()
        self.wait(lambda: self.showing(name), 5, f"the {name} view to show")

    def showing(self, name: str) -> bool:
        return not self.js(f"return document.getElementById('view-{name}').hidden")

    def wait(self, condition: Callable[[], Any], timeout: float, what: str) -> float:
        """Poll `condition` until true; the seconds it took. On timeout: a screenshot and the
        page's status bar in the failure."""
        started = time.monotonic()
        try:
            wait_until(lambda: bool(condition()), timeout, interval=0.05)
        except AssertionError:
            shot = self.shot(f"failed-{re.sub(r'[^a-z0-9]+', '-', what.lower())[:40]}")
            raise AssertionError(
                f"not within {timeout} s: {what}; status bar: {self.status()!r}; screenshot {shot}"
            ) from None
        return time.monotonic() - started

    def status(self) -> str:
        return str(self.js("return document.getElementById('status-bar').innerText"))

    def shot(self, name: str) -> Path:
        path = self.shots / f"{name}.png"
        self.driver.save_screenshot(str(path))
        return path

    def instance_rows(self) -> dict[str, str]:
        """Instance id -> its row's text, for every instance the services view lists."""
        return dict(
            self.js(
                "return [...document.querySelectorAll('#services-cards tr[data-instance-id]')]"
                ".map(r => [r.dataset.instanceId, r.innerText])"
            )
        )

    def services(self) -> set[str]:
        return set(
            self.js(
                "return [...document.querySelectorAll('#services-cards article[data-service]')]"
                ".filter(a => !a.classList.contains('vanished')).map(a => a.dataset.service)"
            )
        )

    def trace_detail(self) -> str:
        return str(self.js("return document.getElementById('trace-detail').innerText"))

    def drawn(self, attribute: str) -> set[str]:
        """The values of `attribute` on the topology's elements (data-node, data-edge)."""
        script = (
            "return [...document.querySelectorAll(`#topology-figure [${arguments[0]}]`)]"
            ".map(e => e.getAttribute(arguments[0]))"
        )
        return set(self.js(script, attribute))

    def banners(self) -> str:
        return str(self.js("return document.getElementById('banners').innerText"))

    def open_trace(self, trace_id: str) -> None:
        """Type the id into the search box and press Enter."""
        from selenium.webdriver.common.by import By
        from selenium.webdriver.common.keys import Keys

        box = self.driver.find_element(By.ID, "trace-search")
        box.clear()
        box.send_keys(trace_id, Keys.ENTER)

    def waterfall(self) -> list[dict[str, str]]:
        return list(
            self.js(
                "return [...document.querySelectorAll('#trace-detail li.row')].map(r => ({"
                "span: r.dataset.spanId || '', side: r.dataset.side || '', "
                "deployment: r.dataset.deployment || '', event: r.dataset.event || '', "
                "text: r.innerText}))"
            )
        )


@pytest.fixture(scope="module")
def page(console_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Page]:
    from selenium.webdriver.chrome.service import Service

    shots = tmp_path_factory.mktemp("console-screenshots")
    profile = tmp_path_factory.mktemp("chromium-profile")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        driver.set_page_load_timeout(30)
        driver.get(f"{console_url}/#services")
        print(f"console screenshots: {shots}")
        yield Page(driver, console_url, shots)
        # The page's own console: a script error would have shown in the status bar too.
        # An unknown trace id is a 404 the page expects; anything else is a fault.
        errors = [
            e
            for e in driver.get_log("browser")
            if e.get("level") == "SEVERE" and "/api/traces/" not in e.get("message", "")
        ]
        assert errors == [], errors
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def test_the_page_shows_every_service_and_instance(running: Running, page: Page) -> None:
    expected = running.services()
    assert len(expected) == len(DEPLOYMENTS)
    page.wait(lambda: expected <= page.services(), 15, f"every service listed: {sorted(expected)}")
    ids = {r["instance_id"] for d in DEPLOYMENTS for r in running.replicas(d)}
    page.wait(lambda: ids <= set(page.instance_rows()), 15, f"every instance listed: {ids}")
    rows = page.instance_rows()
    for deployment in DEPLOYMENTS:
        for replica in running.replicas(deployment):
            text = rows[replica["instance_id"]]
            assert replica["instances"][0]["address"] in text
    # Health is asked of each instance over mTLS: all of them serve.
    page.wait(lambda: all(serving(row) for row in page.instance_rows().values()), 15, "health")
    assert "live" in page.js("return document.getElementById('live-pill').innerText")
    assert page.banners() == ""
    page.shot("01-services")


def test_a_killed_replica_is_gone_from_the_page_within_3_s(running: Running, page: Page) -> None:
    page.view("services")
    victim = running.replicas(REPLICATED)[0]
    page.wait(lambda: victim["instance_id"] in page.instance_rows(), 10, "the victim listed")

    os.kill(victim["pid"], signal.SIGKILL)  # no goodbye: the registry forgets it with its lease
    took = page.wait(
        lambda: victim["instance_id"] not in page.instance_rows(),
        LIVE_WITHIN_S,
        f"killed replica {victim['instance_id']} gone from the page",
    )
    print(f"killed replica gone from the page after {took:.2f} s")
    departed = page.js("return document.querySelector('.departed')?.innerText || ''")
    assert victim["instance_id"] in departed  # and said where it went
    page.shot("02-replica-killed")

    # The supervisor starts it again in its slot, under a new instance id: the page shows it.
    def replaced() -> str | None:
        slot = next(r for r in running.replicas(REPLICATED) if r["slot"] == victim["slot"])
        fresh = slot["state"] == "serving" and slot["instance_id"] != victim["instance_id"]
        return slot["instance_id"] if fresh else None

    page.wait(lambda: replaced() is not None, 60, "the supervisor's replacement serving")
    page.wait(lambda: replaced() in page.instance_rows(), LIVE_WITHIN_S, "the replacement listed")


def test_a_replica_scaled_up_is_on_the_page_within_3_s(running: Running, page: Page) -> None:
    page.view("services")
    before = running.replicas(REPLICATED)
    lines: list[str] = []
    request = {"command": "scale", "deployment": REPLICATED, "replicas": len(before) + 1}
    # Returns once the new replica is registered and its health says SERVING.
    asyncio.run(send_request(running.stack.control_path, request, lines.append))
    added = [r for r in running.replicas(REPLICATED) if r["slot"] == len(before) + 1]
    assert len(added) == 1, lines
    new = added[0]
    took = page.wait(lambda: new["instance_id"] in page.instance_rows(), LIVE_WITHIN_S,
                     f"scaled-up replica {new['instance_id']} on the page")  # fmt: skip
    print(f"new replica on the page {took:.2f} s after it served")
    assert new["instances"][0]["address"] in page.instance_rows()[new["instance_id"]]
    page.shot("03-replica-added")


def _apply_for_a_voucher(running: Running) -> str:
    """A pay stub, then an application over REST; the application's trace id."""
    status, body, _ = running.rest(
        "POST", f"/v1/documents?owner={CITIZEN}&kind=PAY_STUB", ["documents:write"],
        PAY_STUB_PDF, "application/pdf",
    )  # fmt: skip
    assert status == 200, body
    document_id = json.loads(body)["documentId"]
    application = {
        "citizenId": CITIZEN,
        "annualIncomePence": "2800000",
        "householdSize": 2,
        "residenceMonths": 30,
        "documentIds": [document_id],
    }
    status, body, headers = running.rest(
        "POST", "/v1/housing/applications", ["housing:apply"], json.dumps(application).encode()
    )
    assert status == 200, body
    parts = headers.get("traceparent", "").split("-")
    assert len(parts) == 4, headers
    assert re.fullmatch(r"[0-9a-f]{32}", parts[1]), headers
    return parts[1]


def wait_for_trace(
    page: Page, trace_id: str, hops: set[tuple[str, str]], event: str | None, timeout: float
) -> list[dict[str, str]]:
    """Open the trace until its waterfall has every (side, deployment) of `hops` and `event`
    (records come in batches, so the first look may find part of it or nothing); its rows."""

    def complete() -> bool:
        page.open_trace(trace_id)
        with contextlib.suppress(AssertionError):
            page.wait(
                lambda: page.js(
                    "const d = document.getElementById('trace-detail');"
                    "return !!d.querySelector('li.row, #trace-missing') "
                    "&& d.dataset.traceId === arguments[0]",
                    trace_id,
                ),
                5,
                "an answer",
            )
        rows = page.waterfall()
        seen = {(r["side"], r["deployment"]) for r in rows}
        return hops <= seen and (event is None or event in [r["event"] for r in rows])

    page.wait(complete, timeout, f"trace {trace_id} with {sorted(hops)} and event {event}")
    return page.waterfall()


def test_a_rest_requests_trace_shows_every_hop(running: Running, page: Page) -> None:
    trace_id = _apply_for_a_voucher(running)
    page.view("traces")
    # gateway -> housing; housing -> eligibility and documents (each hop's client and server
    # side); the event housing published in the same transaction, and notify's handler of it.
    hops = {
        ("gateway", "gateway"),
        ("server", "housing"),
        ("client", "housing"),
        ("server", "eligibility"),
        ("server", "documents"),
        ("handler", "notify"),
    }
    wait_for_trace(page, trace_id, hops, "hms.housing.v1.VoucherSubmitted", 30)
    rows = page.waterfall()
    shown = page.js("return document.getElementById('trace-id').innerText")
    assert shown == trace_id
    # What the page draws is what the console knows of the trace: every span, every event.
    trace = page.js("return fetch('/api/traces/' + arguments[0]).then(r => r.json())", trace_id)
    assert sorted(r["span"] for r in rows if r["span"]) == sorted(
        s["span_id"] for s in trace["spans"]
    )
    assert [r["event"] for r in rows if r["event"]] == [e["type"] for e in trace["events"]]
    assert "hms.housing.v1.VoucherSubmitted" in [e["type"] for e in trace["events"]]
    # The handler is drawn after the event it took.
    sides = [r["side"] or "event" for r in rows]
    assert sides.index("handler") > sides.index("event"), sides
    routes = [r["text"] for r in rows if r["side"] == "gateway"]
    assert any("POST /v1/housing/applications" in text for text in routes), routes
    page.shot("04-trace-waterfall")


def test_traffic_and_topology_show_the_calls(running: Running, page: Page) -> None:
    _apply_for_a_voucher(running)
    page.view("traffic")
    method = "hms.housing.v1.HousingService/SubmitApplication"
    listed = 'return !!document.querySelector(`#traffic-body tr[data-method="${arguments[0]}"]`)'
    page.wait(lambda: page.js(listed, method), 10, f"{method} in the traffic table")
    page.shot("06-traffic")
    page.view("topology")
    calls = {"gateway->housing", "housing->eligibility", "housing->documents"}
    page.wait(lambda: calls <= page.drawn("data-edge"), 10, f"edges {sorted(calls)} drawn")
    nodes = page.drawn("data-node")
    assert {"gateway", *DEPLOYMENTS} <= nodes
    page.shot("07-topology")
    # Below the traffic: the event topology the manifests declare (nothing need have flowed).
    declared = (
        "return [...document.querySelectorAll('#topology-declared tbody tr')]"
        ".map((row) => [...row.cells].map((cell) => cell.textContent))"
    )
    page.wait(lambda: page.js(declared), 10, "the declared event topology")
    rows = {row[0]: (row[1], row[2]) for row in page.js(declared)}
    assert rows["hms.housing.v1.VoucherSubmitted"] == ("housing", "audit, notify")
    assert rows["hms.payments.v1.PaymentRefunded"] == ("payments", "audit")


def test_a_vanished_service_is_a_clear_state(running: Running, page: Page) -> None:
    page.view("services")
    service = "hms.notify.v1.NotifyService"
    card = f'#services-cards article[data-service="{service}"]'
    scale = {"command": "scale", "deployment": "notify"}
    asyncio.run(send_request(running.stack.control_path, {**scale, "replicas": 0}, print))
    try:
        vanished = f"return document.querySelector('{card}.vanished')?.innerText || ''"
        page.wait(lambda: "No instance is registered" in page.js(vanished), 10, "notify vanished")
        page.shot("08-service-vanished")
    finally:
        asyncio.run(send_request(running.stack.control_path, {**scale, "replicas": 1}, print))
    page.wait(lambda: service in page.services(), LIVE_WITHIN_S, "notify back")


def test_an_unknown_trace_id_says_no_such_trace(page: Page) -> None:
    page.view("traces")
    unknown = secrets.token_hex(16)
    page.open_trace(unknown)
    page.wait(lambda: "No such trace" in page.trace_detail(), 10, "no such trace")
    page.open_trace("not-a-trace-id")
    page.wait(lambda: "not a trace id" in page.trace_detail(), 10, "not a trace id")
    assert "Error" not in page.status()  # a clear state, not a fault
    page.shot("05-unknown-trace")


def test_the_explorer_sends_a_route_and_opens_its_trace(page: Page) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    page.view("routes")
    route = "POST /v1/eligibility:check"
    listed = 'return !!document.querySelector(`tr[data-route="${arguments[0]}"]`)'
    page.wait(lambda: page.js(listed, route), 15, "the eligibility route listed")
    Select(page.driver.find_element(By.ID, "explore-route")).select_by_value(route)
    body = page.driver.find_element(By.ID, "explore-body")
    body.clear()
    body.send_keys(
        '{"applicantId": "A1", "annualIncomePence": "2800000", "householdSize": 2, '
        '"residenceMonths": 24}'
    )
    checked = page.js(
        "return [...document.querySelectorAll('#explore-scopes input:checked')].map(i => i.value)"
    )
    assert checked == ["eligibility:check"]  # the route's own scopes, picked for it
    page.driver.find_element(By.CSS_SELECTOR, "#explorer button[type=submit]").click()
    status = "return document.getElementById('explore-status')?.innerText"
    page.wait(lambda: page.js(status) == "200", 15, "the explorer's answer 200")
    assert "eligible" in page.js("return document.querySelector('#explore-answer pre').innerText")
    page.shot("09-explorer")
    page.driver.find_element(By.ID, "explore-trace").click()
    page.wait(lambda: page.showing("traces"), 5, "the traces view")
    trace_id = page.js("return document.getElementById('trace-search').value")
    assert trace_id == page.js("return document.getElementById('explore-trace').dataset.traceId")
    hops = {("gateway", "gateway"), ("server", "eligibility")}
    wait_for_trace(page, trace_id, hops, None, 20)
    page.shot("10-explorer-trace")


def test_nats_down_is_a_clear_state_and_the_page_recovers(running: Running, page: Page) -> None:
    nats = running.stack.dev.nats if running.stack.dev is not None else None
    assert nats is not None
    page.view("traffic")
    nats.stop()
    try:
        page.wait(lambda: "NATS is down" in page.banners(), 15, "the NATS banner")
        page.view("services")  # the registry still shows
        assert running.services() <= page.services()
        page.shot("11-nats-down")
    finally:
        nats.start()
    page.wait(lambda: "NATS" not in page.banners(), 60, "the NATS banner gone once it is back")


def test_etcd_down_is_a_clear_state_and_the_page_recovers(running: Running, page: Page) -> None:
    etcd = running.stack.dev.etcd if running.stack.dev is not None else None
    assert etcd is not None
    page.view("services")
    listed = set(page.instance_rows())
    etcd.stop()
    try:
        page.wait(lambda: "etcd" in page.banners(), 15, "the etcd banner")
        # The last known instances stay, said to be stale rather than gone.
        assert set(page.instance_rows()) == listed
        page.shot("12-etcd-down")
    finally:
        etcd.start()
    page.wait(lambda: "etcd" not in page.banners(), 60, "the etcd banner gone once it is back")
