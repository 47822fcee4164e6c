"""Discovery against FakeEtcd: snapshot then watch, malformed entries skipped, relist on
compaction and after outages (stale beats empty), wait_for, and listeners isolated."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from mesh.registry import keys
from mesh.registry.keys import Instance
from mesh.registry.watch import Change, ChangeKind, Discovery
from mesh.resilience.backoff import Backoff, BackoffPolicy
from mesh.testing import FakeEtcd, eventually

NS = "hms"
NOTIFY = "hms.notify.v1.NotifyService"
A = Instance(NOTIFY, "notify-a", "10.0.0.1:50051", "notify")
B = Instance(NOTIFY, "notify-b", "10.0.0.2:50051", "notify")
C = Instance(NOTIFY, "notify-c", "10.0.0.3:50051", "notify")
A2 = Instance(NOTIFY, "notify-a", "10.0.0.1:50051", "notify", version="1.1.0", weight=5)
PREFIX = keys.service_prefix(NS, NOTIFY)
GARBAGE_KEY = PREFIX + b"notify-x"

ADDED, UPDATED, REMOVED = ChangeKind.ADDED, ChangeKind.UPDATED, ChangeKind.REMOVED


class Recorder:
    """A listener that keeps every change, as (kind, instance)."""

    def __init__(self) -> None:
        self.changes: list[tuple[ChangeKind, Instance]] = []

    def __call__(self, change: Change) -> None:
        self.changes.append((change.kind, change.instance))


StartDiscovery = Callable[..., Awaitable[tuple[Discovery, Recorder]]]


def fast_backoff() -> Backoff:
    return Backoff(BackoffPolicy(base=0.001, cap=0.01), rand=lambda: 0.5)


@pytest.fixture
def etcd() -> FakeEtcd:
    return FakeEtcd()


@pytest.fixture
async def start(etcd: FakeEtcd) -> AsyncIterator[StartDiscovery]:
    """Start a Discovery with a Recorder subscribed from the first snapshot; stop it after."""
    started: list[Discovery] = []

    async def start(
        service: str | None = NOTIFY, timeout: float | None = 2
    ) -> tuple[Discovery, Recorder]:
        discovery = Discovery(etcd, NS, service, backoff=fast_backoff())
        started.append(discovery)
        recorder = Recorder()
        discovery.subscribe(recorder)
        await discovery.start(timeout)
        return discovery, recorder

    yield start
    for discovery in started:
        await discovery.stop()


async def put(etcd: FakeEtcd, *instances: Instance) -> None:
    for instance in instances:
        await etcd.put(instance.key(NS), keys.encode(instance))


async def test_snapshot_then_watch_gives_every_change_in_order(
    etcd: FakeEtcd, start: StartDiscovery
) -> None:
    await put(etcd, B, A)
    discovery, seen = await start()
    assert discovery.instances() == [A, B]
    assert seen.changes == [(ADDED, A), (ADDED, B)]
    assert discovery.lists == 1

    await put(etcd, C)
    await put(etcd, A2)
    await etcd.delete(B.key(NS))
    await put(etcd, A2)  # the same value again: no change
    await put(etcd, C)

    await eventually(lambda: discovery.revision == etcd.revision)
    assert seen.changes[2:] == [(ADDED, C), (UPDATED, A2), (REMOVED, B)]
    assert discovery.instances() == [A2, C]
    assert discovery.lists == 1


async def test_discovery_of_one_service_sees_only_that_service(
    etcd: FakeEtcd, start: StartDiscovery
) -> None:
    lookalike = Instance(NOTIFY + "Admin", "notify-a", "10.0.0.1:50052", "notify")
    other = Instance("hms.fees.v1.FeeService", "fees-1", "10.0.0.9:50051", "fees")
    await put(etcd, A, lookalike, other)
    one, _ = await start(NOTIFY)
    every, _ = await start(None)
    fees2 = Instance(other.service, "fees-2", "10.0.0.9:50052", "fees")
    await put(etcd, fees2, C)  # C last: once one has seen it, it has seen everything
    await eventually(lambda: one.revision == etcd.revision == every.revision)
    assert one.instances() == [A, C]
    assert every.instances(NOTIFY) == [A, C]
    assert every.instances(other.service) == [other, fees2]
    assert len(every.instances()) == 5


def body(**fields: Any) -> bytes:
    return json.dumps({"address": "10.0.0.9:50051", "deployment": "notify", **fields}).encode()


MALFORMED = [
    pytest.param(GARBAGE_KEY, b"{not json", id="not-json"),
    pytest.param(GARBAGE_KEY, b"[]", id="not-an-object"),
    pytest.param(GARBAGE_KEY, body(address="no-port"), id="bad-address"),
    pytest.param(GARBAGE_KEY, body(weight=True), id="bool-weight"),
    pytest.param(GARBAGE_KEY, b'{"address": "10.0.0.9:1"}', id="no-deployment"),
    pytest.param(PREFIX + b"-bad-id", body(), id="bad-instance-id"),
    pytest.param(PREFIX + b"x/y", body(), id="extra-segment"),
    pytest.param(PREFIX + b"\xff", body(), id="non-utf8-key"),
]


def logged_as_skipped(caplog: pytest.LogCaptureFixture, key: bytes) -> bool:
    shown = key.decode(errors="backslashreplace").encode("unicode_escape").decode()
    return any(
        record.levelno == logging.WARNING
        and "malformed registry entry" in record.getMessage()
        and shown in record.getMessage()
        for record in caplog.records
    )


@pytest.mark.parametrize(("key", "raw"), MALFORMED)
async def test_malformed_entry_in_the_snapshot_is_skipped_and_logged_with_its_key(
    etcd: FakeEtcd, start: StartDiscovery, caplog: pytest.LogCaptureFixture, key: bytes, raw: bytes
) -> None:
    await put(etcd, A)
    await etcd.put(key, raw)
    discovery, seen = await start()
    assert discovery.instances() == [A]
    assert seen.changes == [(ADDED, A)]
    assert logged_as_skipped(caplog, key)


@pytest.mark.parametrize(("key", "raw"), MALFORMED)
async def test_malformed_entry_in_the_watch_is_skipped_and_logged_with_its_key(
    etcd: FakeEtcd, start: StartDiscovery, caplog: pytest.LogCaptureFixture, key: bytes, raw: bytes
) -> None:
    discovery, seen = await start()
    await etcd.put(key, raw)
    await put(etcd, A)
    await eventually(lambda: discovery.instances() == [A])
    assert seen.changes == [(ADDED, A)]
    assert logged_as_skipped(caplog, key)


async def test_valid_entry_overwritten_with_garbage_is_removed(
    etcd: FakeEtcd, start: StartDiscovery, caplog: pytest.LogCaptureFixture
) -> None:
    await put(etcd, A, B)
    discovery, seen = await start()
    await etcd.put(A.key(NS), b"garbage")
    await eventually(lambda: discovery.instances() == [B])
    assert seen.changes[-1] == (REMOVED, A)
    assert logged_as_skipped(caplog, A.key(NS))
    await put(etcd, A)  # made valid again: back
    await eventually(lambda: discovery.instances() == [A, B])
    assert seen.changes[-1] == (ADDED, A)


async def test_compacted_watch_lists_again_and_loses_no_event(
    etcd: FakeEtcd, start: StartDiscovery, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "mesh.registry.watch")
    await put(etcd, A, B)

    async def change_then_compact() -> None:
        # Between the snapshot and the watch: two changes, then their history compacted, so
        # the watch from snapshot + 1 cannot start.
        await put(etcd, C)
        await etcd.delete(A.key(NS))
        await etcd.compact(etcd.revision)

    etcd.after_list.append(change_then_compact)
    discovery, seen = await start()
    await eventually(lambda: discovery.lists == 2)
    assert discovery.instances() == [B, C]
    assert seen.changes == [(ADDED, A), (ADDED, B), (REMOVED, A), (ADDED, C)]
    assert "compacted" in caplog.text
    # And the new watch follows from the new snapshot.
    await etcd.delete(B.key(NS))
    await eventually(lambda: discovery.instances() == [C])
    assert discovery.lists == 2


async def test_etcd_down_keeps_serving_the_last_known_instances(
    etcd: FakeEtcd, start: StartDiscovery
) -> None:
    await put(etcd, A, B)
    discovery, seen = await start()
    etcd.go_down()
    await eventually(lambda: etcd.refused >= 5)
    assert discovery.instances() == [A, B]  # stale beats empty
    assert discovery.instances(NOTIFY) == [A, B]
    etcd.come_back()
    await eventually(lambda: discovery.lists == 2)
    assert seen.changes == [(ADDED, A), (ADDED, B)]  # nothing changed: nothing emitted
    await put(etcd, C)  # and the watch is live again
    await eventually(lambda: discovery.instances() == [A, B, C])


async def test_etcd_back_wiped_with_a_different_set_removes_lost_and_adds_new(
    etcd: FakeEtcd, start: StartDiscovery
) -> None:
    await put(etcd, A, B, A, B)  # a longer history than the wiped store will have
    discovery, seen = await start()
    old_revision = discovery.revision
    etcd.go_down()
    await eventually(lambda: etcd.refused >= 1)
    etcd.come_back(wipe=True)
    # Nothing awaits in between, so discovery cannot list before the new set is in.
    await put(etcd, B, C)
    await eventually(lambda: discovery.lists == 2)
    assert discovery.instances() == [B, C]
    assert seen.changes[2:] == [(REMOVED, A), (ADDED, C)]
    assert discovery.revision == etcd.revision < old_revision
    await etcd.delete(B.key(NS))  # the watch follows the new store's revisions
    await eventually(lambda: discovery.instances() == [C])
    assert seen.changes[-1] == (REMOVED, B)


async def test_started_while_etcd_is_down_catches_up_when_it_returns(
    etcd: FakeEtcd, start: StartDiscovery
) -> None:
    await put(etcd, A)
    etcd.go_down()
    discovery, seen = await start(timeout=0)
    assert discovery.instances() == []
    await eventually(lambda: etcd.refused >= 3)
    etcd.come_back()
    await discovery.wait_for(lambda instances: instances == [A], timeout=2)
    assert seen.changes == [(ADDED, A)]


async def test_wait_for_returns_once_the_predicate_holds(
    etcd: FakeEtcd, start: StartDiscovery
) -> None:
    discovery, _ = await start()
    waiter = asyncio.create_task(discovery.wait_for(lambda xs: len(xs) == 2, timeout=2))
    await put(etcd, A)
    await put(etcd, B)
    assert await waiter == [A, B]
    # Already true: returns at once.
    assert await discovery.wait_for(lambda xs: A in xs, timeout=0.001) == [A, B]


async def test_wait_for_raises_timeout_error_when_the_predicate_never_holds(
    etcd: FakeEtcd, start: StartDiscovery
) -> None:
    await put(etcd, A)
    discovery, seen = await start()
    with pytest.raises(TimeoutError):
        await discovery.wait_for(lambda xs: len(xs) == 3, timeout=0.02)
    await put(etcd, B)  # the timed-out wait left nothing behind: changes still flow
    await eventually(lambda: len(seen.changes) == 2)


async def test_a_raising_listener_does_not_stop_the_others(
    etcd: FakeEtcd, start: StartDiscovery, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(_change: Change) -> None:
        raise RuntimeError("listener bug")

    discovery, _ = await start()
    discovery.subscribe(broken)
    after = Recorder()
    unsubscribe = discovery.subscribe(after)
    await put(etcd, A)
    await eventually(lambda: after.changes == [(ADDED, A)])
    assert "discovery listener failed" in caplog.text
    unsubscribe()
    await put(etcd, B)
    await eventually(lambda: discovery.instances() == [A, B])
    assert after.changes == [(ADDED, A)]


async def test_changes_iterates_every_change_in_order(
    etcd: FakeEtcd, start: StartDiscovery
) -> None:
    discovery, _ = await start()

    async def first(n: int) -> list[tuple[ChangeKind, Instance]]:
        got = []
        async for change in discovery.changes():
            got.append((change.kind, change.instance))
            if len(got) == n:
                break
        return got

    # Created first, the reader runs (and subscribes) before the discovery task wakes for the
    # first change: the loop's ready queue is first in, first out.
    reader = asyncio.create_task(first(3))
    await put(etcd, A)
    await put(etcd, A2)
    await etcd.delete(A.key(NS))
    assert await reader == [(ADDED, A), (UPDATED, A2), (REMOVED, A2)]


# -- regressions: bugs found while writing these tests -------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(body(address="10.0.0.9:\u00b2"), id="superscript-port"),
        pytest.param(b"[" * 100_000, id="deeply-nested-json"),
    ],
)
async def test_a_value_that_breaks_decode_does_not_stop_discovery(
    etcd: FakeEtcd, start: StartDiscovery, raw: bytes
) -> None:
    discovery, _ = await start()
    await etcd.put(GARBAGE_KEY, raw)
    await put(etcd, A)
    await discovery.wait_for(lambda xs: xs == [A], timeout=0.2)


async def test_stop_does_not_swallow_the_callers_cancellation(start: StartDiscovery) -> None:
    discovery, _ = await start()
    stopper = asyncio.create_task(discovery.stop())
    await asyncio.sleep(0)  # the stopper has cancelled the discovery task and awaits it
    stopper.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopper
