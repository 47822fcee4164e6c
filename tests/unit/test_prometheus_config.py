"""deploy/prometheus: the scrape config and the alert rules pass promtool (`check config`,
`check rules`, and the rules' own unit tests, `test rules` on mesh-alerts.test.yml); every
metric and label the rules name is one the mesh exports, read from a real call through a real
server and mesh channel, so a renamed metric fails here; "failed" in the rules is exactly what
the gateway answers with a 5xx; and a real Prometheus, scraping through the HTTP service
discovery entry, labels the series as docs/observability.md says.

promtool and prometheus come from Debian's `prometheus` package (.ci/run installs it where it
can); without them those tests skip and say so."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from hms_gateway.app import GatewayMetrics
from hms_gateway.errors import http_status
from mesh.client import ClientConfig, MeshChannel
from mesh.registry.keys import Instance
from mesh.telemetry import ClientMetrics, ServerMetrics, ServerMetricsInterceptor, serve_metrics
from mesh.testing import wait_until

PROMETHEUS_DIR = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
CONFIG = PROMETHEUS_DIR / "prometheus.yml"
RULES = PROMETHEUS_DIR / "mesh-alerts.yml"
RULE_TESTS = PROMETHEUS_DIR / "mesh-alerts.test.yml"

#: The labels the HTTP service discovery gives every target (and Prometheus' job).
TARGET_LABELS = frozenset({"job", "service", "deployment", "version", "zone", "instance"})
SERVICE = "hms.test.v1.Echo"
METHOD = f"/{SERVICE}/Say"

needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool not installed (Debian's `prometheus` package: apt-get install prometheus)",
)


def promtool(*args: str) -> str:
    done = subprocess.run(
        ["promtool", *args],
        check=False,  # its output says what is wrong: asserted below with it
        capture_output=True,
        text=True,
        timeout=60,
        cwd=PROMETHEUS_DIR,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"promtool {' '.join(args)} failed:\n{output}"
    return output


@needs_promtool
def test_promtool_checks_the_scrape_config_and_the_rules_it_loads() -> None:
    output = promtool("check", "config", CONFIG.name)
    assert f"SUCCESS: {CONFIG.name} is valid" in output
    assert "SUCCESS: 1 rule files found" in output


@needs_promtool
def test_promtool_checks_the_rules() -> None:
    alerts = [rule["alert"] for group in rules()["groups"] for rule in group["rules"]]
    assert f"SUCCESS: {len(alerts)} rules found" in promtool("check", "rules", RULES.name)


@needs_promtool
def test_the_rules_unit_tests_pass() -> None:
    """mesh-alerts.test.yml: 10 % of requests failing for 15 minutes fires HighErrorRate, 1 %
    does not, nor do NOT_FOUNDs; and each other alert fires on its case and only there."""
    promtool("test", "rules", RULE_TESTS.name)


def test_every_alert_is_unit_tested() -> None:
    alerts = {rule["alert"] for group in rules()["groups"] for rule in group["rules"]}
    tested = {
        case["alertname"]
        for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
        if case["exp_alerts"]  # a case where it fires, not only one where it does not
    }
    assert alerts - tested == set(), "alerts no test of mesh-alerts.test.yml sees fire"
    assert "HighErrorRate" in alerts


# -- the rules name what the mesh exports ----------------------------------------------------


def rules() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(RULES.read_text())
    return loaded


def expressions() -> dict[str, str]:
    return {rule["alert"]: rule["expr"] for group in rules()["groups"] for rule in group["rules"]}


#: A metric the mesh or the gateway exports, with its label matchers if any.
_SELECTOR = re.compile(r"(?<![\w:])((?:mesh|gateway)_[a-z0-9_]+)(?![\w:])\s*(\{[^}]*\})?")
_MATCHER = re.compile(r'([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)\s*"([^"]*)"')
_GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


def selectors(expr: str) -> list[tuple[str, dict[str, str]]]:
    return [
        (name, dict(_MATCHER.findall(matchers or ""))) for name, matchers in _SELECTOR.findall(expr)
    ]


def sample_labels(registry: CollectorRegistry) -> dict[str, set[str]]:
    """Every sample name in `registry`'s exposition, with its label names."""
    exported: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            exported.setdefault(sample.name, set()).update(sample.labels)
    return exported


@pytest.fixture
async def exported() -> dict[str, set[str]]:
    """What one service process exports after one call in and one call out (a real grpc.aio
    server with the mesh's metrics interceptor, called through a mesh channel with client
    metrics), plus the gateway's request metrics after one request."""
    registry = CollectorRegistry()

    async def say(request: bytes, _context: Any) -> bytes:
        return request

    handler = grpc.method_handlers_generic_handler(
        SERVICE, {"Say": grpc.unary_unary_rpc_method_handler(say)}
    )
    server = grpc.aio.server(interceptors=[ServerMetricsInterceptor(ServerMetrics(registry))])
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        upstream = Instance(SERVICE, "echo-1", f"127.0.0.1:{port}", deployment="echo")
        config = ClientConfig(etcd=(), upstreams={SERVICE: (upstream,)}, watch_health=False)
        async with await MeshChannel.connect(config, metrics=ClientMetrics(registry)) as channel:
            assert await channel.unary_unary(METHOD)(b"hi", timeout=5) == b"hi"
            found = sample_labels(registry)  # while the channel knows its instance
    finally:
        await server.stop(None)
    gateway = GatewayMetrics(CollectorRegistry())
    gateway.observe(SERVICE, "Say", 503, 0.01)
    found.update(sample_labels(gateway.registry))
    return found


def test_the_fixture_sees_every_family_the_rules_depend_on(exported: dict[str, set[str]]) -> None:
    """Not a rule check: that the call above did produce the labelled samples the next test
    compares against (a family with no sample would make every name look missing)."""
    assert exported["mesh_server_requests_total"] >= {"service", "method", "code"}
    assert exported["mesh_client_endpoints_ejected"] == {"service"}
    assert exported["gateway_requests_total"] == {"service", "method", "status"}


def test_the_rules_name_only_metrics_and_labels_the_mesh_exports(
    exported: dict[str, set[str]],
) -> None:
    problems = []
    for alert, expr in expressions().items():
        used = selectors(expr)
        if not used:
            problems.append(f"{alert}: names no mesh_* or gateway_* metric")
        for name, matchers in used:
            if name not in exported:
                problems.append(f"{alert}: {name} is not exported (renamed?)")
                continue
            for label in set(matchers) - exported[name] - TARGET_LABELS:
                problems.append(f"{alert}: {name} has no label {label!r}")
        labels = set().union(*(exported.get(name, set()) for name, _ in used)) | TARGET_LABELS
        for grouping in _GROUPING.findall(expr):
            for label in {part.strip() for part in grouping.split(",")} - labels:
                problems.append(f"{alert}: groups by {label!r}, a label none of its metrics has")
    assert problems == [], "\n".join(problems)


def test_the_selectors_are_read_as_written() -> None:
    """The parser the check above relies on: names, matchers, and recorded names left out."""
    expr = 'sum by (service) (rate(mesh_server_requests_total{code=~"A|B", method!="x"}[5m]))'
    assert selectors(expr) == [("mesh_server_requests_total", {"code": "A|B", "method": "x"})]
    assert selectors("job:mesh_server_requests:rate5m > 0 and gateway_requests_total") == [
        ("gateway_requests_total", {})
    ]


def test_failed_means_what_the_gateway_answers_with_a_5xx() -> None:
    server_errors = {code.name for code in grpc.StatusCode if http_status(code) >= 500}
    failed = [
        set(matchers["code"].split("|"))
        for expr in expressions().values()
        for name, matchers in selectors(expr)
        if "code" in matchers
    ]
    assert failed, "no rule selects requests by code"
    assert all(codes == server_errors for codes in failed), (failed, server_errors)


# -- a real Prometheus, through the HTTP service discovery ------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def discovery() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """An HTTP service discovery endpoint answering the target groups put in its list, as
    `mesh console` answers /api/sd."""
    groups: list[dict[str, Any]] = []

    class Answer(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps(groups).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/api/sd", groups
    finally:
        server.shutdown()
        server.server_close()


def query(base: str, promql: str) -> list[dict[str, Any]]:
    url = f"{base}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            result: list[dict[str, Any]] = json.load(answer)["data"]["result"]
            return result
    except (urllib.error.URLError, ConnectionError):
        return []  # not listening yet


@pytest.mark.skipif(
    shutil.which("prometheus") is None,
    reason="prometheus not installed (Debian's `prometheus` package: apt-get install prometheus)",
)
def test_prometheus_scrapes_the_mesh_through_http_sd(
    tmp_path: Path, discovery: tuple[str, list[dict[str, Any]]]
) -> None:
    """prometheus.yml as shipped, but for the discovery url and faster intervals: a target's
    series carry the registry's labels, not others; a mesh_client_* series names the service
    called, and the target's own service stays on metrics that have none."""
    sd_url, groups = discovery
    registry = CollectorRegistry()
    ClientMetrics(registry).requests.labels("hms.identity.v1.IdentityService", "Get", "OK").inc()
    metrics_port = serve_metrics(registry)
    registry_labels = {
        "service": "hms.housing.v1.HousingService",
        "deployment": "housing",
        "version": "1.2.0",
        "zone": "zone-a",
        "instance": "housing-7f3a",
    }
    groups.append(
        {
            "targets": [f"127.0.0.1:{metrics_port}"],
            "labels": {**registry_labels, "unlisted": "dropped by the relabelling"},
        }
    )
    config = yaml.safe_load(CONFIG.read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    (job,) = config["scrape_configs"]
    (sd,) = job["http_sd_configs"]
    sd.update(url=sd_url, refresh_interval="1s")
    config["rule_files"] = [str(RULES)]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    web = f"http://127.0.0.1:{free_port()}"
    log = tmp_path / "prometheus.log"
    command = [
        "prometheus",
        f"--config.file={tmp_path / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp_path / 'data'}",
        f"--web.listen-address={web.removeprefix('http://')}",
    ]
    with log.open("w") as stderr:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        found: list[Any] = []

        def scraped() -> bool:
            assert process.poll() is None, f"prometheus exited:\n{log.read_text()}"
            found[:] = query(web, "mesh_client_requests_total")
            return bool(found)

        try:
            wait_until(scraped, 30, interval=0.2)
        except AssertionError:
            raise AssertionError(f"no series within 30 s:\n{log.read_text()}") from None
        calls = found
        (up,) = query(web, "up")
    finally:
        process.terminate()
        process.wait(timeout=10)
    (call,) = calls
    assert call["metric"] == {
        **registry_labels,
        "__name__": "mesh_client_requests_total",
        "job": "hms-mesh",
        "service": "hms.identity.v1.IdentityService",
        "method": "Get",
        "code": "OK",
    }
    assert up["metric"] == {**registry_labels, "__name__": "up", "job": "hms-mesh"}
