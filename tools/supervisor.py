"""Keeps a stack's service processes running: replicas, restarts after a crash, rolling
restarts and scaling, each change visible in the registry before the next step.

A deployment runs as N replicas. Replica `eligibility-2` is *slot* 2 of eligibility: its data
dir and its log belong to the slot and outlive each process in it, so a replacement (after a
crash, or in a rolling restart) takes over the state of the one it replaces. Each process gets
a new registry instance id, which the supervisor passes in (`--instance-id`) so that it knows
the instance when it registers.

- A process that exits without being asked to is reported at once (its name, exit status and
  the tail of its log) and started again in its slot after a backoff that grows while it keeps
  crashing and starts over once a run lasted `stable_after` seconds.
- `restart(deployment)`: one slot at a time, start the replacement, wait until it is
  registered and its health says SERVING, then SIGTERM the old process (which drains: see
  mesh/server/host.py) and wait for it to exit. A replacement that fails to come up stops the
  restart, and the old process keeps serving.
- `scale(deployment, n)`: new slots are started and waited for; surplus slots (the highest
  numbers) are drained and stopped.

Operations on one deployment run one at a time; `progress` callbacks get one line per step.

>>> supervisor = Supervisor(launch, discovery, serving=health_check, report=print)
>>> await supervisor.start({"eligibility": 3, "notify": 1})
>>> await supervisor.restart("eligibility", print)
>>> await supervisor.stop()
"""

from __future__ import annotations

import asyncio
import enum
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from hms_tools.devstack import ServiceProcess
from hms_tools.errors import OperatorError
from mesh.aio import back_off, cancel_and_wait
from mesh.registry import keys
from mesh.registry.watch import Discovery
from mesh.resilience.backoff import Backoff, BackoffPolicy

__all__ = ["Launcher", "OperationFailed", "Replica", "ReplicaState", "Supervisor", "exit_reason"]

log = logging.getLogger(__name__)

Progress = Callable[[str], None]


class Launcher(Protocol):
    def __call__(self, deployment: str, slot: int, instance_id: str) -> ServiceProcess:
        """Start (and return) one process of `deployment` in `slot` under `instance_id`."""


class OperationFailed(OperatorError):
    """A restart or scale could not be completed; the message says which step and why."""


class ReplicaState(enum.Enum):
    STARTING = "starting"  # started, not registered yet
    SERVING = "serving"  # registered, health SERVING
    DRAINING = "draining"  # asked to stop (SIGTERM sent)
    CRASHED = "crashed"  # exited on its own; waiting out its backoff before a restart


@dataclass(eq=False)
class Replica:
    deployment: str
    slot: int
    instance_id: str
    proc: ServiceProcess
    started: float = field(default_factory=time.monotonic)
    restarts: int = 0
    state: ReplicaState = ReplicaState.STARTING
    #: The registry entries once registered (one per gRPC service the process serves).
    instances: list[keys.Instance] = field(default_factory=list)
    exit_status: int | None = None
    #: When it was found registered and SERVING (time.monotonic()).
    serving_since: float | None = None
    exited: asyncio.Future[int] = field(init=False)

    def __post_init__(self) -> None:
        self.exited = asyncio.get_running_loop().create_future()

    @property
    def name(self) -> str:
        return f"{self.deployment}-{self.slot}"

    def describe(self) -> dict[str, object]:
        """The replica as stack.json lists it."""
        return {
            "name": self.name,
            "slot": self.slot,
            "state": self.state.value,
            "pid": self.proc.pid if self.proc.proc is not None else None,
            "instance_id": self.instance_id,
            "restarts": self.restarts,
            "log": str(self.proc.log_path),
            "instances": [
                {
                    "service": i.service,
                    "address": i.address,
                    "identity": i.identity,
                    "instance_id": i.instance_id,
                }
                for i in self.instances
            ],
        }


def exit_reason(status: int) -> str:
    """`exit status 3`, or `killed by SIGKILL` for a negative status."""
    if status < 0:
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    return f"exit status {status}"


class Supervisor:
    def __init__(
        self,
        launch: Launcher,
        registry: Discovery,
        *,
        serving: Callable[[keys.Instance], Awaitable[bool]],
        report: Progress = print,
        changed: Callable[[], None] = lambda: None,
        ready_timeout: float = 60.0,
        grace: float = 15.0,
        backoff: BackoffPolicy = BackoffPolicy(base=0.2, cap=10.0),  # noqa: B008 - frozen
        stable_after: float = 30.0,
        workers: Callable[[str], int] = lambda _deployment: 1,
    ) -> None:
        self._launch = launch
        #: Worker processes per replica of a deployment (`--workers`): each registers as
        #: ``<instance id>-w<i>``, and the replica is ready when all of them are.
        self._workers = workers
        self._registry = registry
        self._serving = serving
        self._report = report
        self._changed = changed
        self.ready_timeout = ready_timeout
        self.grace = grace
        self._backoff_policy = backoff
        self._stable_after = stable_after
        self._replicas: dict[str, list[Replica]] = {}
        self._backoffs: dict[tuple[str, int], Backoff] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False

    # -- reading ----------------------------------------------------------------------------

    @property
    def deployments(self) -> list[str]:
        return sorted(self._replicas)

    def replicas(self, deployment: str) -> list[Replica]:
        if deployment not in self._replicas:
            known = ", ".join(self.deployments) or "none"
            raise OperationFailed(f"no deployment {deployment!r} in this stack (known: {known})")
        return list(self._replicas[deployment])

    def describe(self) -> dict[str, object]:
        return {
            deployment: {"replicas": [r.describe() for r in replicas]}
            for deployment, replicas in sorted(self._replicas.items())
        }

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self, counts: Mapping[str, int]) -> None:
        """Start every replica and wait until all are registered and SERVING."""
        started: list[Replica] = []
        for deployment, count in counts.items():
            self._replicas.setdefault(deployment, [])
            for slot in range(1, count + 1):
                started.append(self._spawn(deployment, slot))
        await asyncio.gather(*(self._until_ready(r) for r in started))
        self._changed()

    async def stop(self) -> None:
        """SIGTERM every replica (they drain), wait for each (SIGKILL after the grace)."""
        self._stopping = True  # from now on an exit is expected, and no crash is restarted
        every = [r for replicas in self._replicas.values() for r in replicas]
        await asyncio.gather(*(self._retire(r) for r in every))
        await cancel_and_wait(*self._tasks)  # crash restarts waiting out their backoff
        self._replicas.clear()

    # -- operations -------------------------------------------------------------------------

    async def restart(self, deployment: str, progress: Progress) -> None:
        """A rolling restart: replacement up and SERVING before each old process stops."""
        async with self._lock(deployment):
            slots = [r.slot for r in self.replicas(deployment)]
            began = time.monotonic()
            progress(f"restart {deployment}: {len(slots)} replica(s), one at a time")
            for slot in slots:
                old = self._in_slot(deployment, slot)
                if old is None:
                    continue  # scaled away meanwhile
                new = self._spawn(deployment, slot, restarts=old.restarts)
                progress(f"  {new.name}: started pid {new.proc.pid}, waiting until SERVING")
                await self._ready_or_abandon(new, progress)
                progress(
                    f"  {new.name}: SERVING at {_addresses(new)} "
                    f"after {time.monotonic() - new.started:.1f} s"
                )
                if old.state is not ReplicaState.CRASHED:
                    progress(f"  {old.name}: SIGTERM to pid {old.proc.pid}, draining")
                stopped = time.monotonic()
                status = await self._retire(old)
                progress(
                    f"  {old.name}: {exit_reason(status)} after {time.monotonic() - stopped:.1f} s"
                )
            progress(f"restart {deployment}: done in {time.monotonic() - began:.1f} s")

    async def scale(self, deployment: str, count: int, progress: Progress) -> None:
        if count < 0:
            raise OperationFailed(f"replicas must be >= 0, got {count}")
        async with self._lock(deployment):
            current = self.replicas(deployment)
            began = time.monotonic()
            progress(f"scale {deployment}: {len(current)} -> {count}")
            if count > len(current):
                used = {r.slot for r in current}
                free = (n for n in range(1, count + len(current) + 1) if n not in used)
                new = [self._spawn(deployment, next(free)) for _ in range(count - len(current))]
                for replica in new:
                    progress(f"  {replica.name}: started pid {replica.proc.pid}")
                results = await asyncio.gather(
                    *(self._ready_or_abandon(r, progress) for r in new), return_exceptions=True
                )
                for replica in new:
                    if replica.state is ReplicaState.SERVING:
                        progress(f"  {replica.name}: SERVING at {_addresses(replica)}")
                failures = [r for r in results if isinstance(r, BaseException)]
                if failures:
                    raise failures[0]
            else:
                surplus = sorted(current, key=lambda r: r.slot)[count:]
                for replica in surplus:
                    progress(f"  {replica.name}: SIGTERM to pid {replica.proc.pid}, draining")
                statuses = await asyncio.gather(*(self._retire(r) for r in surplus))
                for replica, status in zip(surplus, statuses, strict=True):
                    progress(f"  {replica.name}: {exit_reason(status)}")
            progress(
                f"scale {deployment}: {count} replica(s) after {time.monotonic() - began:.1f} s"
            )

    # -- the pieces -------------------------------------------------------------------------

    def _lock(self, deployment: str) -> asyncio.Lock:
        return self._locks.setdefault(deployment, asyncio.Lock())

    def _in_slot(self, deployment: str, slot: int) -> Replica | None:
        return next((r for r in self._replicas.get(deployment, []) if r.slot == slot), None)

    def _spawn(self, deployment: str, slot: int, *, restarts: int = 0) -> Replica:
        instance_id = keys.new_instance_id(f"{deployment}-{slot}")
        proc = self._launch(deployment, slot, instance_id)
        replica = Replica(deployment, slot, instance_id, proc, restarts=restarts)
        self._replicas.setdefault(deployment, []).append(replica)
        self._track(self._follow(replica))
        self._changed()
        return replica

    def _track(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _follow(self, replica: Replica) -> None:
        """Wait for the process to exit; an exit nobody asked for is a crash."""
        status = await replica.proc.exited()
        replica.exit_status = status
        if not replica.exited.done():
            replica.exited.set_result(status)
        if replica.state is ReplicaState.DRAINING or self._stopping:
            return
        await self._crashed(replica, status)

    async def _crashed(self, replica: Replica, status: int) -> None:
        ran = time.monotonic() - replica.started
        backoff = self._backoffs.setdefault(
            (replica.deployment, replica.slot), Backoff(self._backoff_policy)
        )
        if ran >= self._stable_after:
            backoff.reset()
        replica.state = ReplicaState.CRASHED
        replica.instances = []
        self._changed()
        await back_off(backoff, self._report_crash, replica, status, ran)
        async with self._lock(replica.deployment):
            if self._stopping or self._in_slot(replica.deployment, replica.slot) is not replica:
                return  # stopped, scaled away or replaced by a rolling restart meanwhile
            self._remove(replica)
            new = self._spawn(replica.deployment, replica.slot, restarts=replica.restarts + 1)
        try:
            await self._until_ready(new)
        except OperationFailed as exc:
            self._report(f"{new.name}: {exc}")  # its own exit, if any, is followed as a crash
            return
        self._report(f"{new.name}: back, SERVING at {_addresses(new)} (pid {new.proc.pid})")

    def _report_crash(self, replica: Replica, status: int, ran: float, delay: float) -> None:
        tail = replica.proc.log_tail(1500).rstrip()
        self._report(
            f"{replica.name} (pid {replica.proc.pid}) exited on its own: {exit_reason(status)} "
            f"after {ran:.1f} s; last lines of {replica.proc.log_path}:\n{_indent(tail)}\n"
            f"{replica.name}: restarting in {delay:.1f} s (restart {replica.restarts + 1})"
        )

    def _instance_ids(self, replica: Replica) -> set[str]:
        count = self._workers(replica.deployment)
        if count == 1:
            return {replica.instance_id}
        return {f"{replica.instance_id}-w{i}" for i in range(1, count + 1)}

    async def _until_ready(self, replica: Replica) -> None:
        """Until the replica is registered and SERVING; OperationFailed if it exits first or
        takes longer than the ready timeout."""

        expected = self._instance_ids(replica)

        def mine(instances: list[keys.Instance]) -> bool:
            return expected <= {i.instance_id for i in instances}

        registered = asyncio.ensure_future(self._registry.wait_for(mine, self.ready_timeout))
        try:
            await asyncio.wait({registered, replica.exited}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            await cancel_and_wait(registered)
        if replica.exited.done():
            reason = exit_reason(replica.exited.result())
            raise OperationFailed(
                f"{replica.name} exited before it registered ({reason}); last lines of "
                f"{replica.proc.log_path}:\n{_indent(replica.proc.log_tail(1500))}"
            )
        if registered.cancelled() or registered.exception() is not None:
            raise OperationFailed(
                f"{replica.name} did not register within {self.ready_timeout:.0f} s "
                f"(log: {replica.proc.log_path})"
            )
        mine_now = [i for i in registered.result() if i.instance_id in expected]
        for instance in mine_now:
            if not await self._serving(instance):
                raise OperationFailed(
                    f"{replica.name} registered {instance.service} at {instance.address}, "
                    "but its health check does not say SERVING"
                )
        replica.instances = mine_now
        replica.state = ReplicaState.SERVING
        replica.serving_since = time.monotonic()
        self._changed()

    async def _ready_or_abandon(self, replica: Replica, progress: Progress) -> None:
        try:
            await self._until_ready(replica)
        except OperationFailed:
            progress(f"  {replica.name}: did not come up; stopping it, the others keep serving")
            await self._retire(replica)
            raise

    async def _retire(self, replica: Replica) -> int:
        """SIGTERM (the replica drains), SIGKILL after the grace; its exit status."""
        replica.state = ReplicaState.DRAINING
        self._changed()
        if not replica.exited.done():
            replica.proc.terminate()
            try:
                async with asyncio.timeout(self.grace):
                    await asyncio.shield(replica.exited)
            except TimeoutError:
                log.warning("%s did not stop within %.0f s: SIGKILL", replica.name, self.grace)
                replica.proc.kill()
                await asyncio.shield(replica.exited)
        self._remove(replica)
        return replica.exited.result()

    def _remove(self, replica: Replica) -> None:
        replicas = self._replicas.get(replica.deployment, [])
        if replica in replicas:
            replicas.remove(replica)
            self._changed()


def _addresses(replica: Replica) -> str:
    return ", ".join(sorted({i.address for i in replica.instances})) or "(no address)"


def _indent(text: str) -> str:
    return "\n".join(f"    | {line}" for line in text.splitlines())
