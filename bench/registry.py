"""How fast the registry reflects an instance coming and going, against a real etcd.

- register_to_watch: `Registration.start()` of a fake instance until a `Discovery` in this
  process sees it ADDED: lease grant + txn put + watch delivery. One at a time: each is
  revoked, and its REMOVED seen, before the next starts.
- kill9_to_vanish_ttlN: SIGKILL of a real echo service process until REMOVED, i.e. lease
  expiry: the last keepalive went out up to ttl/3 before the kill and etcd looks for expired
  leases every 500 ms, so expect ttl - ttl/3 .. ttl + 0.5 s.
- sigterm_to_vanish: SIGTERM until REMOVED: the graceful drain revokes the lease first.
- sigterm_to_not_serving / sigterm_to_dropped: the drain as a caller in another process sees
  it. A MeshChannel (caller `ops`, mTLS) in this process, echo replicas (mTLS, drain delay
  1 s) in processes of their own: a keeper registered throughout, and one victim per run,
  started, called through the channel until it answers (so its channel and Health.Watch are
  open), then SIGTERMed. NOT_SERVING: its Endpoint's `serving` turned False (the caller stops
  picking it); dropped: its Endpoint left the pool (the registry watch saw the lease revoked).
  Then the same with a `bench.loadgen` process (mesh, 32 callers) loading the same service,
  each victim signalled once it has answered LOAD_CALLS calls: the `_loaded` figures.

Every wait is on an event (the Discovery's changes, the pool's membership, a process's exit)
or, where there is none, a polled condition (`mesh.testing.eventually`), each with a timeout
that fails the benchmark by name.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from bench import BenchmarkFailed, Figures
from bench.drain import CALLER, CallerDrain
from bench.echo_fleet import (
    CHANGE_TIMEOUT,
    STARTUP_TIMEOUT,
    EchoProcess,
    first_exit,
    in_ms,
    reaped,
    spawn_echo,
    summary,
    within,
)
from hms_tools import certs
from hms_tools.devstack import DevStack
from mesh.aio import cancel_and_wait
from mesh.registry import keys
from mesh.registry.etcd import Etcd
from mesh.registry.registration import Registration
from mesh.registry.watch import Change, ChangeKind, Discovery

NAME = "registry"

T = TypeVar("T")

NAMESPACE = "bench"
FAKE_SERVICE = "hms.bench.v1.Fake"
ADDED, REMOVED = ChangeKind.ADDED, ChangeKind.REMOVED

# Expiry can trail the TTL by etcd's 500 ms expiry check, plus scheduling on a busy machine.
EXPIRY_SLACK = 5.0
# etcd's lessor looks for expired leases every 500 ms (lessor.go, runLoop).
ETCD_EXPIRY_TICK = 0.5

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Plan:
    registrations: int
    warmup: int
    kill9: tuple[tuple[int, int], ...]  # (lease ttl s, runs)
    sigterm: int
    drain: int  # SIGTERMs seen by a caller's MeshChannel: this many idle, as many under load


FULL = Plan(registrations=200, warmup=5, kill9=((2, 5), (10, 2)), sigterm=5, drain=30)
QUICK = Plan(registrations=200, warmup=5, kill9=((2, 3),), sigterm=3, drain=5)


class ChangeClock:
    """Stamps each change the Discovery emits with perf_counter(), as its listener sees it,
    and lets the benchmark wait for one (kind, instance id)."""

    def __init__(self, discovery: Discovery) -> None:
        self._stamps: dict[tuple[ChangeKind, str], float] = {}
        self._events: dict[tuple[ChangeKind, str], asyncio.Event] = {}
        self.close = discovery.subscribe(self._on_change)

    def _on_change(self, change: Change) -> None:
        key = (change.kind, change.instance.instance_id)
        self._stamps.setdefault(key, time.perf_counter())
        self._events.setdefault(key, asyncio.Event()).set()

    async def wait(self, kind: ChangeKind, instance_id: str, timeout: float, after: str) -> float:
        """When `kind` was seen for `instance_id`; BenchmarkFailed after `timeout` s."""
        key = (kind, instance_id)
        try:
            async with asyncio.timeout(timeout):
                await self._events.setdefault(key, asyncio.Event()).wait()
        except TimeoutError:
            raise BenchmarkFailed(
                f"{NAME}: no {kind.name} for {instance_id} within {timeout} s after {after}"
            ) from None
        return self._stamps[key]


async def register_to_watch(etcd: Etcd, clock: ChangeClock, plan: Plan) -> list[float]:
    """Seconds from Registration.start() to ADDED, one fake instance at a time."""
    samples: list[float] = []
    for i in range(plan.warmup + plan.registrations):
        instance = keys.Instance(
            service=FAKE_SERVICE,
            instance_id=keys.new_instance_id("fake"),
            address="127.0.0.1:9",  # nothing listens: only the registry is measured
            deployment="bench-fake",
        )
        registration = Registration(etcd, NAMESPACE, [instance], ttl=10)
        started = time.perf_counter()
        registration.start()
        try:
            added = await clock.wait(ADDED, instance.instance_id, CHANGE_TIMEOUT, "start()")
        finally:
            await within(CHANGE_TIMEOUT, "Registration.stop()", registration.stop())
        await clock.wait(REMOVED, instance.instance_id, CHANGE_TIMEOUT, "stop()")
        if i >= plan.warmup:  # the first ones pay for opening channels and streams
            samples.append(added - started)
    return samples


async def wait_all_registered(discovery: Discovery, fleet: Sequence[EchoProcess]) -> None:
    """Fill in each process's instance id once the Discovery sees it."""
    wanted = {echo.deployment: echo for echo in fleet}

    def all_seen(instances: list[keys.Instance]) -> bool:
        for instance in instances:
            if instance.deployment in wanted:
                wanted[instance.deployment].instance_id = instance.instance_id
        return all(echo.instance_id for echo in fleet)

    # A process that dies at start-up changes nothing in the registry: watch for exits too.
    seen = asyncio.ensure_future(discovery.wait_for(all_seen, STARTUP_TIMEOUT))
    exited = asyncio.ensure_future(first_exit(fleet))
    try:
        await asyncio.wait([seen, exited], return_when=asyncio.FIRST_COMPLETED)
    finally:
        await cancel_and_wait(seen, exited)
    if exited.done() and not exited.cancelled():
        echo = exited.result()
        raise BenchmarkFailed(
            f"{NAME}: {echo.deployment} exited with {echo.proc.returncode}:\n{echo.tail()}"
        )
    try:
        seen.result()
    except TimeoutError:
        missing = [echo for echo in fleet if not echo.instance_id]
        raise BenchmarkFailed(
            f"{NAME}: {[echo.deployment for echo in missing]} not registered within "
            f"{STARTUP_TIMEOUT} s; {missing[0].deployment}'s log:\n{missing[0].tail()}"
        ) from None


async def signal_to_vanish(
    clock: ChangeClock, echo: EchoProcess, sig: signal.Signals, timeout: float
) -> tuple[float, float]:
    """(seconds to REMOVED, seconds to process exit) after sending `sig`."""
    sent = time.perf_counter()
    os.kill(echo.proc.pid, sig)
    try:
        removed = await clock.wait(REMOVED, echo.instance_id, timeout, f"{sig.name}")
    except BenchmarkFailed as exc:
        raise BenchmarkFailed(f"{exc} ({echo.deployment}'s log:\n{echo.tail()})") from None
    await within(CHANGE_TIMEOUT, f"{echo.deployment}'s exit after {sig.name}", echo.proc.wait())
    return removed - sent, time.perf_counter() - sent


async def kill9_to_vanish(
    clock: ChangeClock, victims: Sequence[EchoProcess], rng: random.Random
) -> list[float]:
    """Seconds from SIGKILL to REMOVED, one process at a time.

    etcd revokes expired leases on a ~500 ms tick. Killing the next process the moment the
    previous one vanished would kill on that tick every time, and the samples would come out
    quantised (1.5 or 2.0 s for a 2 s TTL); a random pause of up to one tick before each kill
    samples every phase, as real crashes do.
    """
    samples = []
    for echo in victims:
        await asyncio.sleep(rng.uniform(0, ETCD_EXPIRY_TICK))
        timeout = echo.ttl + EXPIRY_SLACK
        samples.append((await signal_to_vanish(clock, echo, signal.SIGKILL, timeout))[0])
    return samples


async def measure(endpoint: str, work_dir: Path, plan: Plan) -> Figures:
    discovery_etcd, registration_etcd = Etcd([endpoint]), Etcd([endpoint])
    await discovery_etcd.connect()
    await registration_etcd.connect()
    discovery = Discovery(discovery_etcd, NAMESPACE)
    clock = ChangeClock(discovery)
    fleet: list[EchoProcess] = []
    try:
        await discovery.start(timeout=CHANGE_TIMEOUT)
        if discovery.lists == 0:
            raise BenchmarkFailed(f"{NAME}: no registry snapshot within {CHANGE_TIMEOUT} s")
        figures = summary(
            "register_to_watch",
            in_ms(await register_to_watch(registration_etcd, clock, plan)),
            "ms",
            p99=True,
        )
        async with reaped(fleet):
            # Start every process at once (start-up is not measured), then take them down one
            # at a time, so each measure is alone.
            names = [(f"term-{i}", 10) for i in range(plan.sigterm)]
            names += [(f"kill-ttl{t}-{i}", t) for t, runs in plan.kill9 for i in range(runs)]
            for deployment, ttl in names:
                fleet.append(await spawn_echo(endpoint, deployment, ttl, work_dir))
            await wait_all_registered(discovery, fleet)
            graceful = [
                await signal_to_vanish(clock, echo, signal.SIGTERM, CHANGE_TIMEOUT)
                for echo in fleet[: plan.sigterm]
            ]
            figures |= summary("sigterm_to_vanish", in_ms([v for v, _ in graceful]), "ms")
            figures |= summary("sigterm_to_exit", in_ms([e for _, e in graceful]), "ms")
            for ttl, _ in plan.kill9:
                victims = [echo for echo in fleet[plan.sigterm :] if echo.ttl == ttl]
                vanish = await kill9_to_vanish(clock, victims, random.Random())
                figures |= summary(f"kill9_to_vanish_ttl{ttl}", vanish, "s")
        tls_dir = work_dir / "tls"
        await asyncio.to_thread(certs.ensure, tls_dir, ["echo", CALLER])
        figures |= await CallerDrain(endpoint, work_dir, tls_dir).measure(plan)
        return figures
    finally:
        clock.close()
        await within(CHANGE_TIMEOUT, "Discovery.stop()", discovery.stop())
        await discovery_etcd.close()
        await registration_etcd.close()


async def run(quick: bool) -> Figures:
    plan = QUICK if quick else FULL
    with tempfile.TemporaryDirectory(prefix="bench-registry-") as tmp:
        dev = DevStack(Path(tmp), nats=False)
        await asyncio.to_thread(dev.start)
        try:
            return await measure(dev.etcd.endpoint, Path(tmp), plan)
        finally:
            await asyncio.to_thread(dev.stop)
