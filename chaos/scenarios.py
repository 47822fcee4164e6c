"""The chaos scenarios. Each starts a stack of its own, puts steady load on it (chaos.load:
REST through the gateway and gRPC through a mesh channel, idempotent methods only, a fixed rate
well below saturation), does one thing to it, and records what the callers saw:

- calls, and failures by outcome (a gRPC code, an HTTP status, a connection error);
- p50/p99 latency of the calls that succeeded, before, during and after the disturbance
  (`during` runs from the disturbance to recovery);
- recovery: when every replica is registered and SERVING again, measured from the moment the
  replaced replica's process came back (its restart, its replacement, etcd's return).

A scenario's `act` runs the disturbance and sets the marks (`run.mark("event")` and
`run.mark("recovered")`); `measure` turns the records into figures. Targets are checked in
`met`, so the runner can say which scenario missed its target and why.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from chaos import ScenarioFailed
from chaos.events import outbox_through_outage
from chaos.load import Recorder, Target, grpc_target, http_target, run_load
from hms.eligibility.v1 import eligibility_pb2, eligibility_pb2_grpc
from hms.notify.v1 import notify_pb2, notify_pb2_grpc
from hms.testing.v1 import echo_pb2, echo_pb2_grpc
from hms_tools.devjwt import mint_token
from hms_tools.stack import OPS_IDENTITY, Stack, StackConfig
from hms_tools.supervisor import Replica, ReplicaState, Supervisor
from mesh import tls
from mesh.client import ClientConfig, MeshChannel
from mesh.registry import keys
from mesh.registry.etcd import Etcd, EtcdError

__all__ = ["SCENARIOS", "Run", "Scenario", "run_scenario"]

#: Calls per second on each load stream, and callers (connections) per stream.
RATE = 40.0
WORKERS = 4
#: Load before the disturbance (the "before" window, after one second of warm-up) and after
#: recovery (the "after" window).
BEFORE_S = 6.0
AFTER_S = 6.0
WARMUP_S = 1.0
#: The lease TTL of every service: a kill -9 leaves its keys for up to this long.
LEASE_TTL = 10

CHECK = eligibility_pb2.CheckRequest(
    applicant_id="CHAOS-1", annual_income_pence=2_800_000, household_size=2, residence_months=24
)
CHECK_JSON = (
    b'{"applicantId":"CHAOS-1","annualIncomePence":"2800000","householdSize":2,'
    b'"residenceMonths":24}'
)
ECHO = echo_pb2.EchoRequest(message="chaos")
ECHO_JSON = b'{"message":"chaos"}'

ECHO_STREAMS = ("rest echo", "grpc echo")
ECHO = "hms.testing.v1.EchoService"
ALL_STREAMS = (*ECHO_STREAMS, "rest eligibility", "grpc eligibility", "grpc notify")


@dataclass
class Run:
    """One scenario's stack, its load, and the marks its act sets."""

    stack: Stack
    channel: MeshChannel
    recorders: dict[str, Recorder]
    report: Callable[[str], None]
    marks: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def supervisor(self) -> Supervisor:
        if self.stack.supervisor is None:
            raise ScenarioFailed("the stack is not running")
        return self.stack.supervisor

    def mark(self, name: str) -> float:
        self.marks[name] = now = time.monotonic()
        self.report(f"  [{now - self.marks['load']:6.1f} s] {name}")
        return now

    async def hold(self, seconds: float) -> None:
        """Let the load run on for `seconds` (a measuring window, not a wait for a state)."""
        await asyncio.sleep(seconds)

    async def all_serving(
        self, deployment: str, count: int, *, gone: Replica | None = None, timeout: float = 60.0
    ) -> float:
        """Until `count` replicas of `deployment` are SERVING (and `gone` is not one of them);
        the time the last of them became SERVING."""
        until = time.monotonic() + timeout
        while True:
            replicas = self.supervisor.replicas(deployment)
            if (
                len(replicas) == count
                and gone not in replicas
                and all(r.state is ReplicaState.SERVING for r in replicas)
            ):
                return max(r.serving_since or 0.0 for r in replicas)
            if time.monotonic() > until:
                states = [(r.name, r.state.value) for r in replicas]
                raise ScenarioFailed(f"{deployment}: not {count} SERVING in {timeout} s: {states}")
            await asyncio.sleep(0.01)  # polls the supervisor's state: no event for it exists

    def replica(self, deployment: str, index: int) -> Replica:
        return self.supervisor.replicas(deployment)[index]

    async def echo_fault(self, replica: Replica, **fault: int) -> None:
        """SetFault on one replica, called at its own address (not through the balancer)."""
        (instance,) = [i for i in replica.instances if i.service.endswith("EchoService")]
        files = tls.TlsFiles(self.stack.tls_dir, OPS_IDENTITY)
        channel = tls.instance_channel(instance.address, instance.identity, files)
        try:
            stub = echo_pb2_grpc.EchoServiceStub(channel)
            await stub.SetFault(echo_pb2.SetFaultRequest(**fault), timeout=5)
        finally:
            await channel.close()

    async def registered(self, expected: set[str], timeout: float = 60.0) -> float:
        """Until etcd itself (a fresh read, not a cached view) holds every instance id in
        `expected`; the time it did."""
        until = time.monotonic() + timeout
        prefix = keys.services_prefix(self.stack.config.namespace)
        async with Etcd(self.stack.etcd_endpoints, tls=self.stack.etcd_tls()) as etcd:
            while True:
                with contextlib.suppress(EtcdError):
                    _, found = await etcd.get_prefix(prefix)
                    ids = {kv.key.decode().rsplit("/", 1)[-1] for kv in found}
                    if expected <= ids:
                        return time.monotonic()
                if time.monotonic() > until:
                    raise ScenarioFailed(f"not re-registered within {timeout} s")
                await asyncio.sleep(0.05)  # etcd is being polled: it may be restarting


Act = Callable[[Run], Awaitable[None]]


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    act: Act
    scale: Mapping[str, int]
    streams: tuple[str, ...] = ALL_STREAMS
    #: Targets: no failed call; recovery within this many seconds (None: not judged).
    zero_failures: bool = True
    recovery_within_s: float | None = None
    p99_ratio_within: float | None = None


# -- the acts ------------------------------------------------------------------------------


async def _kill_one(run: Run, sig: signal.Signals) -> None:
    victim = run.replica("echo", 0)
    run.mark("event")
    os.kill(victim.proc.pid, sig)
    recovered = await run.all_serving("echo", 3, gone=victim)
    back = next(r for r in run.supervisor.replicas("echo") if r.slot == victim.slot)
    run.marks["returned"] = back.started
    run.marks["recovered"] = recovered
    run.extra["restarted_after_s"] = round(back.started - run.marks["event"], 2)
    run.extra["recovery_s"] = round(recovered - back.started, 2)


async def kill9(run: Run) -> None:
    await _kill_one(run, signal.SIGKILL)


async def sigterm(run: Run) -> None:
    await _kill_one(run, signal.SIGTERM)


async def rolling_restart(run: Run) -> None:
    run.mark("event")
    slowest = 0.0
    for deployment in run.supervisor.deployments:
        await run.supervisor.restart(deployment, lambda line: run.report(f"    {line}"))
        for replica in run.supervisor.replicas(deployment):
            if replica.serving_since is not None:
                slowest = max(slowest, replica.serving_since - replica.started)
    run.mark("recovered")
    run.extra["recovery_s"] = round(slowest, 2)


async def scale_out_and_in(run: Run) -> None:
    run.mark("event")
    await run.supervisor.scale("echo", 3, lambda line: run.report(f"    {line}"))
    new = [r for r in run.supervisor.replicas("echo") if r.slot > 1]
    run.extra["recovery_s"] = round(max((r.serving_since or 0) - r.started for r in new), 2)
    await run.hold(AFTER_S)
    await run.supervisor.scale("echo", 1, lambda line: run.report(f"    {line}"))
    run.mark("recovered")


def _instance_ids(run: Run) -> set[str]:
    return {r.instance_id for d in run.supervisor.deployments for r in run.supervisor.replicas(d)}


async def _etcd_outage(run: Run, *, wipe: bool, outage: float) -> None:
    etcd = run.stack.dev.etcd if run.stack.dev is not None else None
    if etcd is None:
        raise ScenarioFailed("the stack has no etcd")
    expected = _instance_ids(run)
    run.mark("event")
    await asyncio.to_thread(etcd.stop)
    await run.hold(outage)
    if wipe:
        etcd.wipe()
    await asyncio.to_thread(etcd.start)
    back = run.mark("returned")
    recovered = await run.registered(expected)
    run.marks["recovered"] = recovered
    run.extra["outage_s"] = round(back - run.marks["event"], 1)
    run.extra["recovery_s"] = round(recovered - back, 2)


async def etcd_down(run: Run) -> None:
    await _etcd_outage(run, wipe=False, outage=30.0)


async def etcd_rebuilt(run: Run) -> None:
    await _etcd_outage(run, wipe=True, outage=5.0)


async def nats_down(run: Run) -> None:
    nats = run.stack.dev.nats if run.stack.dev is not None else None
    if nats is None:
        raise ScenarioFailed("the stack has no NATS")
    run.mark("event")
    figures = await outbox_through_outage(
        nats,
        run.stack.run_dir / "chaos-events",
        events=5000,
        outage=30.0,
        report=lambda line: run.report(f"    {line}"),
    )
    run.mark("recovered")
    run.extra.update(figures)


async def slow_replica(run: Run) -> None:
    victim = run.replica("echo", 0)
    run.mark("event")
    await run.echo_fault(victim, delay_ms=200)
    await run.hold(10.0)  # the balancer learns the slow replica
    learnt = run.mark("learnt")
    await run.hold(15.0)
    run.mark("recovered")
    await run.echo_fault(victim)  # healthy again
    baseline = _window(run, run.marks["load"] + WARMUP_S, run.marks["event"])
    slowed = _window(run, learnt, run.marks["recovered"])
    run.extra["learnt_p99_ms"] = slowed["p99_ms"]
    run.extra["p99_ratio"] = round(slowed["p99_ms"] / baseline["p99_ms"], 2)


async def failing_replica(run: Run) -> None:
    victim = run.replica("echo", 0)
    run.mark("event")
    await run.echo_fault(victim, fail_code=grpc.StatusCode.UNAVAILABLE.value[0], fail_percent=50)
    await run.hold(20.0)
    run.mark("recovered")
    await run.echo_fault(victim)
    stats = run.channel.stats()
    echo = [s for s in stats.services if s.service == "hms.testing.v1.EchoService"]
    run.extra["ejections"] = echo[0].ejections_total if echo else 0
    run.extra["retries"] = stats.retries


CANARY = "0.2.0"
CANARY_STEPS = (0, 5, 50, 100)  # % of echo's calls to the new version, in turn
CANARY_HOLD_S = 6.0


async def canary(run: Run) -> None:
    """A new version of echo, shifted 0 -> 5 -> 50 -> 100 % with `mesh traffic set`'s write
    (the control plane's root), the load going on; each step's share read off the answers."""
    from hms_tools.devstack import ServiceProcess
    from mesh.client.traffic import TrafficPolicy, traffic_key
    from mesh.controlplane import ClientTls

    stack = run.stack
    old = run.replica("echo", 0).instances[0].version
    instance_id = keys.new_instance_id("echo-9")
    args = [*stack.service_args("echo", 9, instance_id), f"--version={CANARY}"]
    log_path = stack.run_dir / "logs" / "echo-canary.log"
    process = ServiceProcess("echo", args, env=stack.env(), log_path=log_path).start()
    admin: ClientTls | None = stack.control_plane.admin if stack.control_plane else None
    try:
        await run.registered({instance_id})
        run.mark("event")  # the canary registered: the shifts begin
        shares: dict[str, float] = {}
        async with Etcd(stack.etcd_endpoints, tls=admin) as etcd:
            for percent in CANARY_STEPS:
                policy = TrafficPolicy.of({old: 100 - percent, CANARY: percent})
                await etcd.put(traffic_key(stack.config.namespace, ECHO), policy.to_json())
                run.mark(f"{percent} % to {CANARY}")
                await run.hold(CANARY_HOLD_S)
                shares[f"{percent}%"] = await _share_of(run, process.pid)
            run.extra["canary_share_by_step"] = shares
            await etcd.delete(traffic_key(stack.config.namespace, ECHO))
        run.mark("recovered")  # the split cleared: every version takes calls again
    finally:
        process.terminate()  # drains: its calls finish elsewhere
        await asyncio.to_thread(process.wait, 30)


async def _share_of(run: Run, pid: int, calls: int = 400) -> float:
    """The share of `calls` echo calls (through the run's channel) that `pid` answered."""
    stub = echo_pb2_grpc.EchoServiceStub(run.channel)
    answered = 0
    for _ in range(calls):
        reply = await stub.Echo(echo_pb2.EchoRequest(message="x"), timeout=5)
        answered += reply.pid == pid
    return round(answered / calls, 3)


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("1_kill9_one_of_three", "kill -9 one of three replicas", kill9,
             {"echo": 3}, recovery_within_s=3.0),
    Scenario("2_sigterm_one_of_three", "SIGTERM one of three replicas", sigterm,
             {"echo": 3}, recovery_within_s=3.0),
    Scenario("3_rolling_restart_all", "rolling restart of every deployment", rolling_restart,
             {"echo": 3, "eligibility": 2}, recovery_within_s=3.0),
    Scenario("4_scale_1_3_1", "scale 1 -> 3 -> 1", scale_out_and_in,
             {"echo": 1}, recovery_within_s=3.0),
    Scenario("5a_etcd_down_30s", "etcd down 30 s, back on the same data", etcd_down,
             {"echo": 3}),
    Scenario("5b_etcd_rebuilt_empty", "etcd rebuilt empty", etcd_rebuilt, {"echo": 3}),
    Scenario("6_nats_down_30s", "NATS down 30 s under 5,000 outbox events", nats_down,
             {"echo": 1}, zero_failures=True),
    Scenario("7_slow_replica", "one replica of three 200 ms slow", slow_replica,
             {"echo": 3}, streams=ECHO_STREAMS, zero_failures=False, p99_ratio_within=2.0),
    Scenario("8_failing_replica", "one replica of three failing half its calls",
             failing_replica, {"echo": 3}, streams=ECHO_STREAMS),
    Scenario("9_canary", "a new version shifted 0 -> 5 -> 50 -> 100 %", canary,
             {"echo": 3}, streams=ECHO_STREAMS),
)  # fmt: skip


# -- running one ---------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _targets(stack: Stack, channel: MeshChannel) -> AsyncIterator[dict[str, Target]]:
    gateway = stack.info["gateway"]
    echo = echo_pb2_grpc.EchoServiceStub(channel)
    check = eligibility_pb2_grpc.EligibilityServiceStub(channel)
    notify = notify_pb2_grpc.NotifyServiceStub(channel)
    listing = notify_pb2.ListNotificationsRequest(page_size=5)
    # The stack's gateway checks tokens: one signed with its development key, holding the
    # scope Check needs (Echo needs none).
    token = mint_token(stack.state_dir, "chaos", ["eligibility:check"])
    bearer = {"authorization": f"Bearer {token}"}
    async with contextlib.AsyncExitStack() as stacked:
        targets = {
            "rest echo": http_target(gateway, "POST", "/v1/echo", ECHO_JSON, bearer),
            "rest eligibility": http_target(
                gateway, "POST", "/v1/eligibility:check", CHECK_JSON, bearer
            ),
            "grpc echo": grpc_target(lambda: echo.Echo(ECHO, timeout=5)),
            "grpc eligibility": grpc_target(lambda: check.Check(CHECK, timeout=5)),
            "grpc notify": grpc_target(lambda: notify.ListNotifications(listing, timeout=5)),
        }
        yield {name: await stacked.enter_async_context(t) for name, t in targets.items()}


def _window(run: Run, start: float, end: float) -> dict[str, Any]:
    merged = Recorder([r for rec in run.recorders.values() for r in rec.records])
    return merged.window(start, end)


def measure(scenario: Scenario, run: Run, ended: float) -> dict[str, Any]:
    marks = run.marks
    event = marks.get("event", ended)
    recovered = marks.get("recovered", ended)
    whole = _window(run, marks["load"], ended)
    figures: dict[str, Any] = {
        "title": scenario.title,
        "requests": whole["calls"],
        "failed": whole["failed"],
        "failed_total": sum(whole["failed"].values()),
        "before": _latency(_window(run, marks["load"] + WARMUP_S, event)),
        "during": _latency(_window(run, event, recovered)),
        "after": _latency(_window(run, recovered, ended)),
        "streams": {
            name: {"calls": len(rec.records), "failed": rec.failures()}
            for name, rec in run.recorders.items()
        },
        **run.extra,
    }
    figures["misses"] = met(scenario, figures)
    return figures


def _latency(window: dict[str, Any]) -> dict[str, Any]:
    return {"calls": window["calls"], "p50_ms": window["p50_ms"], "p99_ms": window["p99_ms"]}


def met(scenario: Scenario, figures: Mapping[str, Any]) -> list[str]:
    """What the scenario missed of its targets ([] when it met them all)."""
    misses = []
    if scenario.zero_failures and figures["failed_total"]:
        misses.append(f"{figures['failed_total']} failed calls: {figures['failed']}")
    recovery = figures.get("recovery_s")
    if scenario.recovery_within_s is not None and (
        recovery is None or recovery > scenario.recovery_within_s
    ):
        misses.append(f"recovery {recovery} s > {scenario.recovery_within_s} s")
    ratio = figures.get("p99_ratio")
    if scenario.p99_ratio_within is not None and (
        ratio is None or ratio > scenario.p99_ratio_within
    ):
        misses.append(f"p99 ratio {ratio} > {scenario.p99_ratio_within}")
    if "applied" in figures:
        wanted = {"applied": figures["events"], "applied_twice": 0, "out_of_order": 0}
        for name, want in wanted.items():
            if figures.get(name) != want:
                misses.append(f"{name} {figures.get(name)} (want {want})")
    return misses


def open_policy(state_dir: Path) -> Path:
    """An authorization policy that allows every mesh identity: the scenarios measure
    availability, and their gRPC load calls as the operators' identity, which the platform's
    matrix does not let call eligibility or notify."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / "open-policy.toml"
    path.write_text('mode = "enforce"\ndefault = "allow"\n')
    return path


async def run_scenario(
    scenario: Scenario, state_dir: Path, report: Callable[[str], None] = print
) -> dict[str, Any]:
    report(f"{scenario.key}: {scenario.title}")
    deployments = ("echo", "eligibility", "notify")
    config = StackConfig(
        state_dir=state_dir,
        deployments=deployments,
        scale=dict(scenario.scale),
        lease_ttl=LEASE_TTL,
        policy=open_policy(state_dir),
    )
    stack = Stack(config, report=lambda line: report(f"    stack: {line.splitlines()[0]}"))
    await stack.start()
    stop = asyncio.Event()
    try:
        files = tls.TlsFiles(stack.tls_dir, OPS_IDENTITY)
        client = ClientConfig(etcd=tuple(stack.etcd_endpoints), tls=files)
        async with await MeshChannel.connect(client) as channel, _targets(stack, channel) as ts:
            recorders = {name: Recorder() for name in scenario.streams}
            run = Run(stack, channel, recorders, report)
            run.marks["load"] = time.monotonic()
            load = asyncio.gather(
                *(
                    run_load(ts[name], rate=RATE, workers=WORKERS, until=stop, recorder=rec)
                    for name, rec in recorders.items()
                )
            )
            try:
                await run.hold(BEFORE_S)
                await scenario.act(run)
                await run.hold(AFTER_S)
            finally:
                stop.set()
                await load
            ended = time.monotonic()
    finally:
        await stack.stop()
    figures = measure(scenario, run, ended)
    verdict = "met" if not figures["misses"] else "MISSED: " + "; ".join(figures["misses"])
    report(f"  {figures['requests']} calls, failed {figures['failed'] or 0}; targets {verdict}")
    return figures
