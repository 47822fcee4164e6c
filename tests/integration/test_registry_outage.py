"""The registry against a real etcd that dies, loses its data, compacts, and is meddled with."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter

import pytest

from hms_tools.devstack import EtcdProcess
from mesh.registry import keys
from mesh.registry.etcd import Etcd, WatchCompacted
from mesh.registry.registration import Registration
from mesh.registry.watch import Change, ChangeKind, Discovery

from .conftest import ServiceFactory, wait_for_deployment

pytestmark = pytest.mark.integration


async def registry_counts(etcd: Etcd) -> Counter[tuple[str, str]]:
    """How many keys each (service, deployment) has right now."""
    _, items = await etcd.get_prefix(keys.services_prefix("hms"))
    counts: Counter[tuple[str, str]] = Counter()
    for kv in items:
        instance = keys.decode("hms", kv.key, kv.value)
        counts[(instance.service, instance.deployment)] += 1
    return counts


async def _next_keepalive(etcd: Etcd, lease: int, timeout: float = 10) -> None:
    """Return once the lease's TTL has gone down and back up: a keepalive was answered.
    (Each check is an etcd round trip; etcd reports TTLs in whole seconds.)"""
    async with asyncio.timeout(timeout):
        lowest = await etcd.time_to_live(lease)
        while (ttl := await etcd.time_to_live(lease)) <= lowest:
            lowest = min(lowest, ttl)


EXPECTED = {
    ("hms.testing.v1.EchoService", "echo"): 1,
    ("hms.eligibility.v1.EligibilityService", "eligibility"): 1,
}


@pytest.mark.parametrize(
    "wipe",
    [pytest.param(False, id="same-data-dir"), pytest.param(True, id="empty-data-dir")],
)
async def test_services_register_again_within_2s_of_etcd_returning_exactly_once(
    wipe: bool,
    etcd: EtcdProcess,
    etcd_client: Etcd,
    start_service: ServiceFactory,
    discovery: Discovery,
) -> None:
    procs = [start_service("echo", ttl=5), start_service("eligibility", ttl=5)]
    for proc, name in zip(procs, ["echo", "eligibility"], strict=True):
        await wait_for_deployment(discovery, name, proc)
    assert await registry_counts(etcd_client) == EXPECTED

    await asyncio.to_thread(etcd.stop)
    if wipe:
        etcd.wipe()
    # Stale beats empty: while etcd is down the watcher keeps the instances it knew.
    assert {i.deployment for i in discovery.instances()} == {"echo", "eligibility"}
    lists_before = discovery.lists
    await asyncio.to_thread(etcd.start)
    answering_at = time.monotonic()

    def once_each(instances: list[keys.Instance]) -> bool:
        return Counter((i.service, i.deployment) for i in instances) == EXPECTED

    # Only a view listed after the restart counts: the stale one would match at once.
    await discovery.wait_for(lambda xs: discovery.lists > lists_before and once_each(xs), 2.0)
    assert time.monotonic() - answering_at < 2.0
    assert await registry_counts(etcd_client) == EXPECTED
    # Exactly once, and it stays so through two keepalive rounds of every service.
    _, items = await etcd_client.get_prefix(keys.services_prefix("hms"))
    for lease in {kv.lease for kv in items}:
        for _ in range(2):
            await _next_keepalive(etcd_client, lease)
            assert await registry_counts(etcd_client) == EXPECTED
    await discovery.wait_for(lambda xs: {i.deployment for i in xs} == {"echo", "eligibility"}, 5)
    assert all(p.running for p in procs)


async def test_a_deleted_key_is_written_back(
    etcd_client: Etcd, start_service: ServiceFactory, discovery: Discovery
) -> None:
    proc = start_service("echo", ttl=10)
    instance = await wait_for_deployment(discovery, "echo", proc)
    changes: list[Change] = []
    discovery.subscribe(changes.append)

    assert await etcd_client.delete(instance.key("hms")) == 1

    await discovery.wait_for(
        lambda xs: instance in xs and any(c.kind is ChangeKind.REMOVED for c in changes), 5
    )
    assert [c.kind for c in changes] == [ChangeKind.REMOVED, ChangeKind.ADDED]
    assert await registry_counts(etcd_client) == {("hms.testing.v1.EchoService", "echo"): 1}


def _instance(n: int) -> keys.Instance:
    return keys.Instance(
        service="hms.testing.v1.EchoService",
        instance_id=f"echo-{n}",
        address=f"127.0.0.1:{20000 + n}",
        deployment="echo",
    )


async def test_watcher_sees_adds_and_removes_in_order_across_etcd_restart(
    etcd: EtcdProcess, etcd_client: Etcd, discovery: Discovery
) -> None:
    seen: list[tuple[ChangeKind, str]] = []
    discovery.subscribe(lambda c: seen.append((c.kind, c.instance.instance_id)))
    registrations = {n: Registration(etcd_client, "hms", [_instance(n)], ttl=5) for n in (1, 2, 3)}

    async def present(*ids: int) -> None:
        wanted = {f"echo-{n}" for n in ids}
        await discovery.wait_for(lambda xs: {i.instance_id for i in xs} == wanted, 10)

    try:
        for n in (1, 2, 3):
            registrations[n].start()
            await present(*range(1, n + 1))
        await registrations[2].stop()
        await present(1, 3)

        await asyncio.to_thread(etcd.stop)
        await asyncio.to_thread(etcd.start)  # same data dir: the leases survive
        await registrations[1].stop()
        await present(3)
        registrations[4] = Registration(etcd_client, "hms", [_instance(4)], ttl=5)
        registrations[4].start()
        await present(3, 4)
    finally:
        for registration in registrations.values():
            await registration.stop()
    await present()

    assert seen == [
        (ChangeKind.ADDED, "echo-1"),
        (ChangeKind.ADDED, "echo-2"),
        (ChangeKind.ADDED, "echo-3"),
        (ChangeKind.REMOVED, "echo-2"),
        (ChangeKind.REMOVED, "echo-1"),
        (ChangeKind.ADDED, "echo-4"),
        (ChangeKind.REMOVED, "echo-3"),
        (ChangeKind.REMOVED, "echo-4"),
    ]
    assert discovery.lists >= 2  # it listed again after the restart


async def test_watch_from_a_compacted_revision_raises_watch_compacted(
    etcd_client: Etcd,
) -> None:
    """The wrapper turns etcd's compaction answer into WatchCompacted, on which Discovery lists
    again (that reaction is unit-tested on the fake; this proves the real etcd answer)."""
    for n in range(1, 5):
        await etcd_client.put(_instance(n).key("hms"), keys.encode(_instance(n)))
    revision, _ = await etcd_client.get_prefix(b"/")
    await etcd_client.compact(revision)
    with pytest.raises(WatchCompacted) as compacted:
        async for _events in etcd_client.watch(keys.services_prefix("hms"), 1):
            pass
    assert compacted.value.compact_revision == revision


async def test_malformed_values_are_skipped_and_logged(
    etcd_client: Etcd, discovery: Discovery, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="mesh.registry.watch")
    bad = b"/hms/services/hms.testing.v1.EchoService/garbage-1"
    await etcd_client.put(bad, b"{not json")
    await etcd_client.put(_instance(1).key("hms"), keys.encode(_instance(1)))
    await discovery.wait_for(lambda xs: [i.instance_id for i in xs] == ["echo-1"], 5)
    assert any(bad.decode() in r.getMessage() for r in caplog.records)
    # A second watcher starting from a snapshot that holds the bad value also skips it.
    fresh = Discovery(etcd_client, "hms")
    await fresh.start(timeout=5)
    assert [i.instance_id for i in fresh.instances()] == ["echo-1"]
    await fresh.stop()
