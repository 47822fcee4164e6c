"""The live endpoints of one gRPC service, kept current from the registry watch, and the
choice of which one takes the next call (outlier detection, health, P2C over peak EWMA)."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import Counter
from collections.abc import Awaitable, Callable

from mesh.aio import cancel_and_wait
from mesh.client.balance import pick_p2c
from mesh.client.endpoint import DRAIN_GRACE, ChannelFactory, Endpoint
from mesh.client.semver import VersionRange
from mesh.client.traffic import Locality, TrafficPolicy, select, version_matches
from mesh.registry.keys import Instance
from mesh.registry.watch import Change, ChangeKind
from mesh.resilience.outlier import OutlierConfig, OutlierDetector
from mesh.tracerecords import DRAINING, UNREACHABLE, DecisionSink

__all__ = ["Admit", "Probe", "ServicePool"]

#: Why an instance may not be used (who may serve what: mesh.authz.serving), or None.
Admit = Callable[[Instance], str | None]

#: Is something listening at this address? (mesh.client.reach.tcp_reachable)
Probe = Callable[[str], Awaitable[bool]]
#: Probes in flight at once in one pool: a flood of keys is probed a few at a time.
PROBES_AT_ONCE = 32

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=256)
def version_range(text: str) -> VersionRange:
    """`text` as a range (parsed once per distinct text); text that is no range pins that
    very version string."""
    try:
        return VersionRange.parse(text)
    except ValueError:
        return VersionRange.exact(text)


class ServicePool:
    def __init__(
        self,
        service: str,
        make_channel: ChannelFactory,
        *,
        outlier: OutlierConfig,
        clock: Callable[[], float],
        rand: Callable[[], float],
        watch_health: bool = True,
        drain_grace: float = DRAIN_GRACE,
        probe: Probe | None = None,
        admit: Admit | None = None,
        decisions: DecisionSink | None = None,
        locality: Locality | None = None,
    ) -> None:
        self.service = service
        self.endpoints: dict[str, Endpoint] = {}
        self.detector = OutlierDetector(outlier)
        self._make_channel = make_channel
        self._clock = clock
        self._rand = rand
        self._watch_health = watch_health
        self._drain_grace = drain_grace
        self._probe = probe
        self._admit = admit
        #: Where ejections, readmissions, draining and unreachable instances are told
        #: (svc.mesh: mesh.tracerecords); None: nowhere, at no cost.
        self.decisions = decisions
        self._refused: set[tuple[str, str]] = set()
        self._probing: dict[str, asyncio.Task[None]] = {}
        self._probe_slots = asyncio.Semaphore(PROBES_AT_ONCE)
        self._changed = asyncio.Event()
        self._closing: set[asyncio.Task[None]] = set()
        #: The service's version split, read live from etcd (None: none).
        self.policy: TrafficPolicy | None = None
        self.locality = locality or Locality()
        #: Attempts per (version, status code name): a canary's errors against the old's.
        self.version_attempts: Counter[tuple[str, str]] = Counter()
        #: Picks whose drawn split subset had no ready instance (its share went elsewhere).
        self.split_redistributed = 0

    # -- membership, from the registry watch ----------------------------------------------

    def apply(self, change: Change) -> None:
        instance = change.instance
        key = instance.instance_id
        old = self.endpoints.get(key)
        if old is not None and (change.kind is ChangeKind.REMOVED or old.instance != instance):
            probing = self._probing.pop(key, None)
            if probing is not None:
                probing.cancel()
            del self.endpoints[key]
            self.detector.remove(key)
            self._close_later(old)
        if change.kind is not ChangeKind.REMOVED and key not in self.endpoints:
            refused = self._admit(instance) if self._admit is not None else None
            if refused is not None:
                if (key, instance.identity) not in self._refused:
                    self._refused.add((key, instance.identity))
                    log.warning("ignoring registry entry %s of %s: %s", key, self.service, refused)
                self._changed.set()
                return
            endpoint = Endpoint(
                instance,
                self._make_channel,
                self._clock,
                watch_health=self._watch_health,
                drain_grace=self._drain_grace,
                on_draining=self._draining if self.decisions is not None else None,
            )
            self.endpoints[key] = endpoint
            self.detector.add(key)
            if self._probe is not None:
                self._probing[key] = asyncio.create_task(
                    self._probe_until_reachable(endpoint), name=f"mesh-probe:{key}"
                )
        self._changed.set()

    async def _probe_until_reachable(self, endpoint: Endpoint) -> None:
        """Probe a new instance's address; while nothing answers, keep it gated and probe
        again as each gate ends. A few probes at a time, so a flood of keys is bounded."""
        assert self._probe is not None
        while True:
            async with self._probe_slots:
                ok = await self._probe(endpoint.instance.address)
            if ok:
                endpoint.reach.succeeded()
                return
            delay = endpoint.reach.failed(self._clock())
            endpoint.reach.hold()  # opens only when a probe answers
            if endpoint.reach.failures == 1:
                self.report(UNREACHABLE, endpoint, "nothing accepts a connection at its address")
            await asyncio.sleep(delay)

    # -- decisions, told to whoever listens (svc.mesh) -------------------------------------

    def report(self, kind: int, endpoint: Endpoint, reason: str) -> None:
        """Tell the decision sink, if any, what was decided about `endpoint`."""
        if self.decisions is not None:
            instance = endpoint.instance
            self.decisions(kind, self.service, instance.instance_id, instance.address, reason)

    def _draining(self, endpoint: Endpoint) -> None:
        self.report(DRAINING, endpoint, "its health check says NOT_SERVING: no new calls")

    def _close_later(self, endpoint: Endpoint) -> None:
        # A departing instance gets no new call from now on (it left `endpoints`); the calls
        # already on it finish within the drain grace, as its server keeps answering them.
        task = asyncio.create_task(endpoint.close(drain=True))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        """Close every channel now (the caller's whole channel is going away)."""
        await cancel_and_wait(*self._probing.values())
        self._probing.clear()
        for endpoint in self.endpoints.values():
            await endpoint.close(drain=False)
        self.endpoints.clear()
        if self._closing:
            await asyncio.wait(list(self._closing))

    # -- choosing ------------------------------------------------------------------------

    def pick(self, tried: set[str], version: str | None = None) -> Endpoint | None:
        """The endpoint for the next attempt, or None when no instance can take it.

        A retry goes to an instance this call has not tried, when there is one. A fresh
        instance (no completed call yet) gets the next call as a warm-up, so a new replica
        takes traffic at once instead of waiting for its seeded estimate to decay. Traffic
        shaping comes first (mesh.client.traffic): `version`, a semver range, keeps the
        matching instances; the service's split draws a version subset; the caller's zone is
        kept while it has capacity. Among those the balancer chooses.
        """
        now = self._clock()
        ready = [e for e in self.endpoints.values() if e.serving and e.reach.usable(now)]
        eligible = [e for e in ready if self.detector.eligible(e.key, now)]
        choice = select(
            eligible,
            version_of=lambda e: e.instance.version,
            zone_of=lambda e: e.instance.zone,
            load_of=lambda e: float(e.outstanding),
            pin=version_range(version) if version else None,
            policy=self.policy,
            locality=self.locality,
            rand=self._rand,
        )
        if choice.redistributed:
            self.split_redistributed += 1
        shaped = choice.candidates
        # `eligible` compares without claiming an ejected instance's single probe call;
        # `available` then claims it for the one chosen.
        usable = [e for e in shaped if e.key not in tried] or list(shaped)
        while usable:
            chosen = self._choose(usable)
            if self.detector.available(chosen.key, now):
                return chosen
            usable.remove(chosen)
        return None

    def versions(self) -> list[str]:
        """The versions registered instances run, sorted, each once."""
        return sorted({e.instance.version for e in self.endpoints.values()})

    def matches(self, version: str) -> bool:
        """Does a registered instance run a version in the range `version`?"""
        pin = version_range(version)
        return any(version_matches(pin, e.instance.version) for e in self.endpoints.values())

    def _choose(self, usable: list[Endpoint]) -> Endpoint:
        warming = [e for e in usable if not e.observed and e.outstanding == 0]
        if warming:
            return warming[0]
        return pick_p2c(
            usable,
            cost=lambda e: e.ewma.cost(e.outstanding),
            weight=lambda e: float(e.instance.weight),
            rand=self._rand,
        )

    def any_serving(self, version: str | None = None) -> bool:
        """Is some registered instance (of a version in the range `version`) serving, not
        draining? Ejected ones count."""
        pin = version_range(version) if version else None
        return any(
            e.serving and (pin is None or version_matches(pin, e.instance.version))
            for e in self.endpoints.values()
        )

    def why_unavailable(self, version: str | None = None) -> str:
        """`no ready instance of X: 2 ejected, 1 draining` (what an UNAVAILABLE says)."""
        if not self.endpoints:
            return f"no instance of {self.service} is registered"
        if version is not None and not self.matches(version):
            return (
                f"no instance of {self.service} at version {version} is registered "
                f"(registered: {', '.join(self.versions())})"
            )
        now = self._clock()
        draining = sum(not e.serving for e in self.endpoints.values())
        unreachable = sum(e.serving and not e.reach.usable(now) for e in self.endpoints.values())
        ejected = sum(
            e.serving and e.reach.usable(now) and not self.detector.eligible(e.key, now)
            for e in self.endpoints.values()
        )
        parts = [
            f"{ejected} ejected" * bool(ejected),
            f"{unreachable} unreachable" * bool(unreachable),
            f"{draining} draining" * bool(draining),
        ]
        detail = ", ".join(p for p in parts if p) or "all busy"
        return f"no ready instance of {self.service}: {detail}"

    async def wait_changed(self, timeout: float) -> bool:
        """Wait (bounded) for the membership to change; True if it did."""
        self._changed.clear()
        try:
            async with asyncio.timeout(timeout):
                await self._changed.wait()
        except TimeoutError:
            return False
        return True
