"""`python -m chaos.multihost` (or `make multihost`): the mesh on three hosts, one of them cut off.

Three hosts are Linux network namespaces on one bridge (chaos/netns.py). Each runs one member
of a secured etcd cluster, one node of a secured NATS JetStream cluster (the streams on 3
replicas) and one replica of every service under services/, bound to its host's address; the
gateway runs on host 1. The load generator runs in the root namespace and reaches the hosts
through the bridge: REST through the gateway (POST /v1/eligibility:check, a development JWT)
and gRPC through a mesh channel (eligibility's Check, as housing, which the matrix lets call
it), both at a steady rate, idempotent, nothing retried by the load itself.

The scenario: steady load (before), host 3's link down (during: until its replicas have left
the registry, at least `cut_s`), its link up again (after: until its replicas serve again and
its etcd member and NATS node have rejoined, then `after_s` more). Printed, and written to
chaos/multihost.json and docs/reliability.md ("Several hosts"):

- calls and failures by outcome for each load, p50/p99 before, during and after;
- failures *outside the cut's window*: the window runs from one call timeout before the cut
  (calls in flight on host 3 when it went) until its replicas left the registry (the lease
  TTL after the cut, or later: when etcd's leader was on host 3, the new leader renews every
  lease for a full TTL) plus `WATCH_SLACK_S` for every watcher to hear it: calls sent to host
  3's replicas while they were listed, which fail only at their deadline (a call into a black
  hole gets no answer, so nothing ejects the instance sooner). Outside it there must be none;
- whether the survivors kept etcd's quorum (members 1 and 2 report a leader among them) and
  NATS its JetStream meta leader (JetStream's API answers: only the meta leader answers it)
  at every sample during the cut;
- how long after the cut host 3's replicas left the registry, and after the link came back:
  until each was registered again, SERVING and answering a call at its own address; until its
  etcd member had a leader and had caught up the leader's raft index; until its NATS node was
  a current replica of both streams again.

Everything it makes (namespaces, veths, bridge, processes, the state directory) is removed at
the end, on failure, on Ctrl-C and on SIGTERM too. Needs root (network namespaces).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import replace_generated
from chaos.load import Recorder, grpc_target, http_target, run_load
from chaos.netns import Hosts, leftovers, probe
from hms.eligibility.v1 import eligibility_pb2, eligibility_pb2_grpc
from hms_tools import certs
from hms_tools.devjwt import mint_token
from hms_tools.devstack import EtcdCluster, NatsCluster, Placement
from hms_tools.stack import HA_SIZE, OPS_IDENTITY, Stack, StackConfig, discover_services
from mesh import tls
from mesh.authz.serving import load_serving
from mesh.client import ClientConfig, MeshChannel
from mesh.controlplane import NatsAccess
from mesh.events import dead_letter_stream, events_stream
from mesh.registry import keys

__all__ = ["MultiHost", "MultiHostConfig", "main", "run"]

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "chaos" / "multihost.json"
DOCS = ROOT / "docs" / "reliability.md"
BEGIN, END = "<!-- multihost:begin -->", "<!-- multihost:end -->"

#: The host that is cut off (0-based: host 3).
CUT = 2
#: The deployment the load calls, and as whom the gRPC load calls it (the matrix allows it).
TARGET = "eligibility"
TARGET_SERVICE = "hms.eligibility.v1.EligibilityService"
GRPC_CALLER = "housing"
#: How long after host 3's replicas left the registry (as the run's own watch saw it) every
#: other watcher (the gateway's, the mesh channel's) is taken to have seen it too.
WATCH_SLACK_S = 1.0
CHECK = eligibility_pb2.CheckRequest(
    applicant_id="HOSTS-1", annual_income_pence=2_800_000, household_size=2, residence_months=24
)
CHECK_JSON = (
    b'{"applicantId":"HOSTS-1","annualIncomePence":"2800000","householdSize":2,'
    b'"residenceMonths":24}'
)


@dataclass(frozen=True)
class MultiHostConfig:
    #: Deployments to run (one replica of each on each host); empty: every one under services/.
    deployments: tuple[str, ...] = ()
    #: Every service's lease TTL: a cut-off host's replicas leave the registry after it.
    lease_ttl: int = 5
    #: Calls/s of each load (REST, gRPC), over `workers` connections; a call's timeout.
    rate: float = 40.0
    workers: int = 4
    call_timeout: float = 5.0
    warmup_s: float = 1.0
    before_s: float = 6.0
    #: The cut lasts at least this long (and until host 3's replicas left the registry).
    cut_s: float = 8.0
    after_s: float = 6.0
    #: How long any one wait for a state may take before the run fails.
    timeout: float = 90.0
    namespace: str = "hms"
    extra: dict[str, str] = field(default_factory=dict)


class MultiHost:
    """The mesh on `hosts`: `Stack` with a placement (tools/devstack.Placement): etcd and NATS
    clusters with a member on each host, every deployment's replica i on host i, the gateway
    on host 1. Everything else (environment, flags, policies, certificates, streams, health
    checks, supervision) is the stack's own."""

    def __init__(
        self, hosts: Hosts, state_dir: Path, config: MultiHostConfig, report: Callable[[str], None]
    ) -> None:
        self.hosts = hosts
        self.config = config
        self.report = report
        count = len(hosts.addresses)
        placement = Placement(
            tuple(hosts.addresses),
            tuple(hosts.prefix(i) for i in range(count)),
            # The stack's own tools run in the root namespace, behind the bridge.
            admin_hosts=(hosts.bridge_address,),
        )
        deployments = config.deployments or tuple(discover_services())
        self.stack = Stack(
            StackConfig(
                state_dir=state_dir,
                namespace=config.namespace,
                deployments=deployments,
                scale=dict.fromkeys(deployments, count),
                lease_ttl=config.lease_ttl,
                ready_timeout=config.timeout,
                control=False,
            ),
            report=report,
            placement=placement,
        )
        self.gateway_url = ""

    @property
    def deployments(self) -> tuple[str, ...]:
        return self.stack.deployments

    @property
    def etcd(self) -> EtcdCluster:
        assert self.stack.dev is not None
        assert isinstance(self.stack.dev.etcd, EtcdCluster)
        return self.stack.dev.etcd

    @property
    def nats(self) -> NatsCluster:
        assert self.stack.dev is not None
        assert isinstance(self.stack.dev.nats, NatsCluster)
        return self.stack.dev.nats

    def address(self, index: int) -> str:
        return self.hosts.addresses[index]

    async def start(self) -> None:
        stack = self.stack
        # The gRPC load calls as GRPC_CALLER, whether or not it runs here.
        certs.ensure(stack.tls_dir, [GRPC_CALLER], ca_dir=stack.ca_dir)
        self.report(f"starting etcd, NATS and {', '.join(stack.deployments)} on each host")
        began = time.monotonic()
        await stack.start()
        replicas = len(self.hosts.addresses) * len(stack.deployments)
        self.report(f"{replicas} replicas SERVING after {time.monotonic() - began:.1f} s")
        self.gateway_url = str(stack.info["gateway"])
        self.report(f"gateway on host 1: {self.gateway_url}")

    async def stop(self) -> None:
        await self.stack.stop()

    # -- what the scenario looks at ----------------------------------------------------------

    def replica_instances(self, index: int) -> list[keys.Instance]:
        """The registry's instances (as the stack's watch sees them) on host `index`."""
        registry = self.stack.registry
        if registry is None:
            return []
        host = self.address(index)
        return [i for i in registry.instances() if i.address.rpartition(":")[0] == host]

    def leader(self) -> int | None:
        """The index of the etcd member that leads now."""
        assert self.etcd is not None
        return self.etcd.leader(timeout=1.0)

    def quorum_without(self, index: int) -> bool:
        """Do the other members report a leader among themselves (etcd's quorum kept)?"""
        assert self.etcd is not None
        others = [m for i, m in enumerate(self.etcd.members) if i != index]
        statuses = [self.etcd.status(m, timeout=1.0) for m in others]
        ids = {int(s.header.member_id) for s in statuses if s is not None}
        return any(s is not None and int(s.leader) in ids for s in statuses)

    def etcd_has_leader(self, index: int) -> bool:
        """Member `index` answers and knows a leader."""
        assert self.etcd is not None
        status = self.etcd.status(self.etcd.members[index], timeout=1.0)
        return status is not None and bool(status.leader)

    def etcd_caught_up(self, index: int) -> bool:
        """Member `index` has a leader and has applied the leader's raft index (as it stood
        just before it was asked)."""
        assert self.etcd is not None
        members = self.etcd.members
        statuses = {
            i: self.etcd.status(m, timeout=1.0) for i, m in enumerate(members) if i != index
        }
        leader_index = None
        for status in statuses.values():
            if status is not None and status.leader == status.header.member_id:
                leader_index = int(status.raftIndex)
        if leader_index is None:
            return False
        mine = self.etcd.status(members[index], timeout=1.0)
        return mine is not None and bool(mine.leader) and int(mine.raftAppliedIndex) >= leader_index

    async def nats_root(self, index: int | None = None) -> Any:
        """A root NATS connection (to node `index` only, or to any)."""
        import nats

        assert self.nats is not None
        assert self.stack.control_plane is not None
        servers = self.nats.urls if index is None else [self.nats.urls[index]]
        options = NatsAccess(self.stack.control_plane.admin).options()
        return await nats.connect(servers, connect_timeout=2, max_reconnect_attempts=-1, **options)

    async def serving_again(self, index: int, caller: tls.TlsFiles) -> bool:
        """Every deployment's replica on host `index` registered, SERVING, and (the load's
        target) answering a call at its own address."""
        instances = self.replica_instances(index)
        found = {i.deployment for i in instances}
        if not set(self.deployments) <= found:
            return False
        for instance in instances:
            if not await self.stack.instance_serving(instance):
                return False
        for instance in instances:
            if instance.service != TARGET_SERVICE:
                continue
            channel = tls.instance_channel(instance.address, instance.identity, caller)
            try:
                stub = eligibility_pb2_grpc.EligibilityServiceStub(channel)
                await stub.Check(CHECK, timeout=2)
            except Exception:
                return False
            finally:
                await channel.close()
        return True


#: What a JetStream request that is not answered raises (no meta leader, no stream leader).
def _nats_errors() -> tuple[type[BaseException], ...]:
    import nats.errors
    import nats.js.errors

    return (TimeoutError, nats.errors.Error, nats.js.errors.Error)


async def _jetstream_answers(js: Any) -> bool:
    """JetStream's API answers (account info is the meta leader's to answer)."""
    try:
        async with asyncio.timeout(1.0):
            await js.account_info()
    except _nats_errors():
        return False
    return True


async def _node_current(js: Any, server: str) -> bool:
    """`server` leads, or is a current replica of, both streams, and the leader heard from it
    within the last second."""
    for spec in (events_stream(), dead_letter_stream()):
        try:
            async with asyncio.timeout(1.0):
                info = await js.stream_info(spec.name)
        except _nats_errors():
            return False
        cluster = info.cluster
        if cluster is None:
            return False
        if cluster.leader == server:
            continue
        peer = next((p for p in cluster.replicas or [] if p.name == server), None)
        if peer is None or not peer.current or peer.offline:
            return False
        if peer.active is None or peer.active > 1_000_000_000:  # nanoseconds since last heard
            return False
    return True


async def _until(
    condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.1
) -> float:
    """Poll `condition` (sync or async) until true; when it became true."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return time.monotonic()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        await asyncio.sleep(interval)  # polling a condition under the deadline above


def _window(recorder: Recorder, start: float, end: float) -> dict[str, Any]:
    return recorder.window(start, end)


@dataclass
class _Cut:
    """What the scenario saw, in time.monotonic() marks."""

    load: float = 0.0
    cut: float = 0.0
    gone: float | None = None
    mended: float = 0.0
    serving: float = 0.0
    etcd_leader: float = 0.0
    etcd: float = 0.0
    nats: float = 0.0
    ended: float = 0.0
    #: (when, survivors' etcd leader, JetStream answers) sampled during the cut.
    samples: list[tuple[float, bool, bool]] = field(default_factory=list)
    etcd_leader_before: int | None = None
    stream_leader_before: str | None = None


def _kept(cut: float, samples: list[tuple[float, bool, bool]], column: int) -> dict[str, Any]:
    """Kept through the cut: once it held (at once, or after an election if the leader was on
    the cut host), it held at every later sample."""
    first = next((i for i, s in enumerate(samples) if s[column]), None)
    held = first is not None and all(s[column] for s in samples[first:])
    return {
        "kept": held,
        "ok_samples": sum(1 for s in samples if s[column]),
        "first_ok_after_s": None if first is None else round(samples[first][0] - cut, 2),
    }


async def _stream_leader(js: Any) -> str | None:
    try:
        info = await js.stream_info(events_stream().name)
    except Exception:
        return None
    return info.cluster.leader if info.cluster is not None else None


async def _during_cut(mesh: MultiHost, js1: Any, seen: _Cut, config: MultiHostConfig) -> None:
    """Sample the survivors' etcd leader and JetStream meta leader until host 3's replicas
    have left the registry, both have a leader, and `cut_s` has passed."""
    on_host = {i.instance_id for i in mesh.replica_instances(CUT)}
    while True:
        quorum = await asyncio.to_thread(mesh.quorum_without, CUT)
        meta = await _jetstream_answers(js1)
        seen.samples.append((time.monotonic(), quorum, meta))
        if seen.gone is None and not {i.instance_id for i in mesh.replica_instances(CUT)} & on_host:
            seen.gone = time.monotonic()
            mesh.report(f"  [{seen.gone - seen.load:6.1f} s] host 3's replicas left the registry")
        # A leader on host 3 is replaced by an election among the survivors (etcd's within
        # about a second; JetStream's meta leader's within several): the cut lasts until both
        # have one again, so that "kept" can be judged after it.
        settled = quorum and meta and seen.gone is not None
        if settled and time.monotonic() - seen.cut >= config.cut_s:
            return
        if time.monotonic() - seen.cut > config.timeout:
            mesh.report(
                "  ending the cut: after "
                f"{config.timeout:.0f} s, replicas gone: {seen.gone is not None}, "
                f"etcd leader among the survivors: {quorum}, JetStream meta leader: {meta}"
            )
            return
        await asyncio.sleep(0.5)  # the sampling period


async def _rejoined(
    mesh: MultiHost, js: Any, caller: tls.TlsFiles, seen: _Cut, config: MultiHostConfig
) -> None:
    """Until host 3's replicas serve again, its etcd member caught up, its NATS node current."""
    server = f"nats-{CUT + 1}"

    async def etcd_leader() -> bool:
        return await asyncio.to_thread(mesh.etcd_has_leader, CUT)

    async def etcd_back() -> bool:
        return await asyncio.to_thread(mesh.etcd_caught_up, CUT)

    seen.serving, seen.etcd_leader, seen.etcd, seen.nats = await asyncio.gather(
        _until(lambda: mesh.serving_again(CUT, caller), config.timeout, "host 3 serving"),
        _until(etcd_leader, config.timeout, "host 3's etcd member has a leader"),
        _until(etcd_back, config.timeout, "host 3's etcd member caught up"),
        _until(lambda: _node_current(js, server), config.timeout, "host 3's NATS node"),
    )
    for name, at in (
        ("host 3's replicas SERVING and answering", seen.serving),
        ("host 3's etcd member has a leader", seen.etcd_leader),
        ("host 3's etcd member caught up", seen.etcd),
        ("host 3's NATS node current", seen.nats),
    ):
        mesh.report(f"  [{at - seen.load:6.1f} s] {name}")


async def scenario(
    mesh: MultiHost, config: MultiHostConfig, report: Callable[[str], None]
) -> dict[str, Any]:
    """Steady load; host 3 cut off; back. The figures (see the module's docstring)."""
    stack, hosts = mesh.stack, mesh.hosts
    caller = tls.TlsFiles(stack.tls_dir, GRPC_CALLER)
    rest, grpc_calls, stop = Recorder(), Recorder(), asyncio.Event()
    seen = _Cut()

    def mark(name: str) -> float:
        now = time.monotonic()
        report(f"  [{now - seen.load:6.1f} s] {name}")
        return now

    async with contextlib.AsyncExitStack() as exits:
        serving = load_serving(stack.serving_path)
        channel = await exits.enter_async_context(
            await MeshChannel.connect(
                ClientConfig(
                    etcd=tuple(stack.etcd_endpoints),
                    tls=caller,
                    # It reads the registry as an operator: GRPC_CALLER may not run here.
                    etcd_tls=stack.etcd_tls(OPS_IDENTITY),
                    serving=serving,
                )
            )
        )
        stub = eligibility_pb2_grpc.EligibilityServiceStub(channel)
        token = mint_token(stack.state_dir, "multihost-load", ["eligibility:check"])
        bearer = {"authorization": f"Bearer {token}"}
        http = await exits.enter_async_context(
            http_target(mesh.gateway_url, "POST", "/v1/eligibility:check", CHECK_JSON, bearer)
        )
        grpc_call = await exits.enter_async_context(
            grpc_target(lambda: stub.Check(CHECK, timeout=config.call_timeout))
        )
        nc = await mesh.nats_root()
        exits.push_async_callback(nc.close)
        js = nc.jetstream()
        # The survivors' view of JetStream: a connection to host 1's node only.
        nc1 = await mesh.nats_root(0)
        exits.push_async_callback(nc1.close)
        server = f"nats-{CUT + 1}"
        await _until(lambda: _node_current(js, server), config.timeout, "NATS streams current")
        seen.etcd_leader_before = await asyncio.to_thread(mesh.leader)
        seen.stream_leader_before = await _stream_leader(js)

        common = {"workers": config.workers, "until": stop, "timeout": config.call_timeout}
        seen.load = time.monotonic()
        load = asyncio.gather(
            run_load(http, rate=config.rate, recorder=rest, **common),
            run_load(grpc_call, rate=config.rate, recorder=grpc_calls, **common),
        )
        try:
            await asyncio.sleep(config.warmup_s + config.before_s)  # the "before" window
            seen.cut = mark("cut: host 3's link down")
            hosts.cut(CUT)
            await _during_cut(mesh, nc1.jetstream(), seen, config)
            seen.mended = mark("mend: host 3's link up")
            hosts.mend(CUT)
            await _rejoined(mesh, js, caller, seen, config)
            await asyncio.sleep(config.after_s)  # the "after" window
            seen.ended = mark("end")
        finally:
            stop.set()
            await load
    return _figures(mesh, config, seen, rest, grpc_calls)


def _figures(
    mesh: MultiHost, config: MultiHostConfig, seen: _Cut, rest: Recorder, grpc_calls: Recorder
) -> dict[str, Any]:
    start, cut, ended = seen.load + config.warmup_s, seen.cut, seen.ended
    # Calls in flight on host 3 when it went, and calls sent to its replicas while the
    # registry still listed them (and a moment for every watcher to hear they left).
    listed_until = max(cut + config.lease_ttl, seen.gone if seen.gone is not None else ended)
    window = (cut - config.call_timeout, listed_until + WATCH_SLACK_S)
    recovered = max(seen.serving, seen.etcd, seen.nats)

    def stream(recorder: Recorder) -> dict[str, Any]:
        outside = recorder.failures(start, window[0])
        for outcome, count in recorder.failures(window[1], ended).items():
            outside[outcome] = outside.get(outcome, 0) + count
        failed_at = [
            [round(r.started - cut, 2), r.outcome]
            for r in recorder.records
            if start <= r.started < ended and r.outcome != "OK"
        ]
        return {
            "requests": sum(1 for r in recorder.records if start <= r.started < ended),
            "failed": recorder.failures(start, ended),
            "failed_in_cut_window": recorder.failures(*window),
            "failed_outside_cut_window": outside,
            #: When each failed call started, seconds from the cut (the first 50).
            "failed_started_at_s": failed_at[:50],
            "before": recorder.window(start, cut),
            "during": recorder.window(cut, seen.mended),
            "after": recorder.window(seen.mended, ended),
            "after_recovered": recorder.window(recovered, ended),
        }

    leader = seen.etcd_leader_before
    return {
        "hosts": mesh.hosts.describe(),
        "deployments": list(mesh.deployments),
        "lease_ttl_s": config.lease_ttl,
        "call_timeout_s": config.call_timeout,
        "rate_per_s": config.rate,
        "cut_window_s": [round(window[0] - cut, 1), round(window[1] - cut, 1)],
        "rest": stream(rest),
        "grpc": stream(grpc_calls),
        "cut_s": round(seen.mended - cut, 2),
        "etcd_leader_before": None if leader is None else f"host {leader + 1}",
        "events_stream_leader_before": seen.stream_leader_before,
        "samples_during_cut": len(seen.samples),
        "etcd_quorum": _kept(cut, seen.samples, 1),
        "nats_meta_leader": _kept(cut, seen.samples, 2),
        "replicas_left_registry_after_s": None if seen.gone is None else round(seen.gone - cut, 2),
        "replicas_serving_again_after_s": round(seen.serving - seen.mended, 2),
        "etcd_member_has_leader_after_s": round(seen.etcd_leader - seen.mended, 2),
        "etcd_member_rejoined_after_s": round(seen.etcd - seen.mended, 2),
        "nats_node_rejoined_after_s": round(seen.nats - seen.mended, 2),
    }


async def run(
    config: MultiHostConfig,
    report: Callable[[str], None] = print,
    *,
    made: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Make the hosts, start the mesh on them, run the scenario, remove everything. `made`
    (if given) is told the run's tag and state directory, to look for leftovers afterwards."""
    reason = probe()
    if reason is not None:
        raise RuntimeError(reason)
    state_dir = Path(tempfile.mkdtemp(prefix="hms-multihost-"))
    hosts = Hosts(HA_SIZE)
    if made is not None:
        made.update(tag=hosts.tag, state_dir=state_dir)
    mesh: MultiHost | None = None
    try:
        await asyncio.to_thread(hosts.create)
        report(hosts.describe())
        mesh = MultiHost(hosts, state_dir / "state", config, report)
        await mesh.start()
        return await scenario(mesh, config, report)
    finally:
        # Cancelled (Ctrl-C, SIGTERM) or failed: everything goes, shielded from a second one.
        cleanup = asyncio.ensure_future(_cleanup(mesh, hosts, state_dir))
        try:
            await asyncio.shield(cleanup)
        except asyncio.CancelledError:
            await cleanup
            raise


def processes_of(state_dir: Path) -> list[int]:
    """Processes whose command line names `state_dir` (every server and service of a run
    does: their data directories are under it)."""
    found = []
    needle = str(state_dir).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if needle in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
    return found


async def _cleanup(mesh: MultiHost | None, hosts: Hosts, state_dir: Path) -> None:
    try:
        if mesh is not None:
            await mesh.stop()
    finally:
        await asyncio.to_thread(hosts.remove)
        shutil.rmtree(state_dir, ignore_errors=True)


# -- the command -----------------------------------------------------------------------------


def render(figures: dict[str, Any]) -> str:
    def ms(w: dict[str, Any]) -> str:
        return f"{w['p50_ms']:.1f} / {w['p99_ms']:.1f}" if w.get("calls") else "-"

    def failed(counts: dict[str, int]) -> str:
        return ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) or "0"

    lines = [
        "<!-- Generated by `python -m chaos.multihost`; edits between the markers are "
        "overwritten. -->",
        "",
        f"{figures['hosts']}; {len(figures['deployments'])} deployments, one replica of each "
        f"on each host; lease TTL {figures['lease_ttl_s']} s, call timeout "
        f"{figures['call_timeout_s']} s, {figures['rate_per_s']:g} calls/s on each load. "
        f"Python {figures.get('python', '?')}, {figures.get('cores', '?')} cores; "
        f"{figures.get('finished', '?')}.",
        "",
        "| load | requests | failed | of which outside the cut's window | p50 / p99 ms before | "
        "during | after |",
        "|---|---:|---|---|---|---|---|",
    ]
    for name, label in (("rest", "REST via the gateway"), ("grpc", "gRPC via a mesh channel")):
        s = figures[name]
        lines.append(
            f"| {label} | {s['requests']} | {failed(s['failed'])} | "
            f"{failed(s['failed_outside_cut_window'])} | {ms(s['before'])} | {ms(s['during'])} | "
            f"{ms(s['after'])} |"
        )

    def kept(what: dict[str, Any]) -> str:
        if not what["kept"]:
            return f"**no** ({what['ok_samples']} of {figures['samples_during_cut']} samples)"
        return f"yes (from {what['first_ok_after_s']} s after the cut on)"

    lines += [
        "",
        f"- host 3 cut off for {figures['cut_s']} s; the cut's window, where calls in flight "
        f"on it may fail, is [{figures['cut_window_s'][0]}, +{figures['cut_window_s'][1]}] s "
        "around the cut",
        f"- before the cut, etcd's leader was on {figures['etcd_leader_before']}, the events "
        f"stream's on {figures['events_stream_leader_before']}",
        f"- the survivors kept etcd's quorum (a leader among them): "
        f"{kept(figures['etcd_quorum'])}; NATS its JetStream meta leader (JetStream answers): "
        f"{kept(figures['nats_meta_leader'])}; sampled every 0.5 s during the cut",
        f"- host 3's replicas left the registry {figures['replicas_left_registry_after_s']} s "
        "after the cut",
        "- once the link was back: host 3's replicas registered, SERVING and answering after "
        f"{figures['replicas_serving_again_after_s']} s; its etcd member knew the leader after "
        f"{figures['etcd_member_has_leader_after_s']} s and had caught up with its raft index "
        f"after {figures['etcd_member_rejoined_after_s']} s; its NATS node a current "
        f"replica of both streams after {figures['nats_node_rejoined_after_s']} s",
    ]
    return "\n".join(lines)


def _print(figures: dict[str, Any]) -> None:
    print()
    print(render(figures).split("\n", 2)[2])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chaos.multihost", description=__doc__)
    parser.add_argument("--only", nargs="*", default=[], help="deployments (default: all)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    config = MultiHostConfig(deployments=tuple(args.only))
    figures = asyncio.run(_main(config))
    if figures is None:
        return 130
    figures.update(
        python=platform.python_version(),
        cores=os.cpu_count(),
        finished=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        command="python -m chaos.multihost"
        + (f" --only {' '.join(args.only)}" if args.only else ""),
    )
    _print(figures)
    if not args.no_write:
        RESULTS.write_text(json.dumps(figures, indent=2) + "\n")
        text = replace_generated(DOCS.read_text(), render(figures), begin=BEGIN, end=END)
        DOCS.write_text(text)
        print(f"\nwritten to {RESULTS.relative_to(ROOT)} and {DOCS.relative_to(ROOT)}")
    outside = sum(sum(figures[s]["failed_outside_cut_window"].values()) for s in ("rest", "grpc"))
    ok = outside == 0 and figures["etcd_quorum"]["kept"] and figures["nats_meta_leader"]["kept"]
    return 0 if ok else 1


async def _main(config: MultiHostConfig) -> dict[str, Any] | None:
    """Run, cancelled cleanly (everything removed) on SIGINT or SIGTERM."""
    made: dict[str, Any] = {}
    task = asyncio.ensure_future(run(config, made=made))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    try:
        return await task
    except asyncio.CancelledError:
        print("interrupted: everything removed", file=sys.stderr)
        return None
    finally:
        left = leftovers(made["tag"]) if made else []
        left += [f"pid {pid}" for pid in processes_of(made["state_dir"])] if made else []
        if left:
            print(f"left behind: {left}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
