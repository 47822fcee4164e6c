"""Registration against FakeEtcd: one lease for every key, written back after each way of
losing them (lease lost, key deleted, etcd down, etcd wiped), and it never gives up."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import pytest

from mesh.registry import keys
from mesh.registry.keys import Instance
from mesh.registry.registration import Registration
from mesh.resilience.backoff import Backoff, BackoffPolicy
from mesh.testing import FakeEtcd, eventually

NS = "hms"
NOTIFY = "hms.notify.v1.NotifyService"
HEALTH = "grpc.health.v1.Health"
INSTANCES = [
    Instance(NOTIFY, "notify-1", "10.0.0.7:50051", "notify"),
    Instance(HEALTH, "notify-1", "10.0.0.7:50051", "notify"),
]
EXPECTED = {i.key(NS): keys.encode(i) for i in INSTANCES}
PREFIX = keys.services_prefix(NS)

Start = Callable[..., Awaitable[Registration]]


def fast_backoff() -> Backoff:
    return Backoff(BackoffPolicy(base=0.001, cap=0.01), rand=lambda: 0.5)


@pytest.fixture
def etcd() -> FakeEtcd:
    return FakeEtcd()


@pytest.fixture
async def start(etcd: FakeEtcd) -> AsyncIterator[Start]:
    """Start a registration and wait until its keys are written; stop it afterwards."""
    started: list[Registration] = []

    async def start(instances: Sequence[Instance] = INSTANCES) -> Registration:
        registration = Registration(etcd, NS, instances, ttl=2, backoff=fast_backoff())
        started.append(registration)
        registration.start()
        await registration.wait_registered(timeout=2)
        return registration

    yield start
    for registration in started:
        await registration.stop()


def stored(etcd: FakeEtcd) -> dict[bytes, bytes]:
    return {key: kv.value for key, kv in etcd.kvs(PREFIX).items()}


def held_on(etcd: FakeEtcd, lease: int | None) -> bool:
    """Exactly our keys are stored, with our values, all on `lease`."""
    kvs = etcd.kvs(PREFIX)
    return (
        lease is not None
        and stored(etcd) == EXPECTED
        and all(kv.lease == lease for kv in kvs.values())
        and etcd.leases().get(lease) == set(EXPECTED)
    )


def one_key_per_service(etcd: FakeEtcd) -> bool:
    return all(len(etcd.kvs(keys.service_prefix(NS, i.service))) == 1 for i in INSTANCES)


async def test_registers_every_key_on_one_lease(etcd: FakeEtcd, start: Start) -> None:
    registration = await start()
    assert held_on(etcd, registration.lease_id)
    assert etcd.leases() == {registration.lease_id: set(EXPECTED)}
    assert etcd.calls["grant"] == 1
    assert etcd.calls["put_all"] == 1  # every key in one transaction
    assert registration.writes == 1
    await eventually(lambda: etcd.calls["keepalive"] == 1 and etcd.calls["watch"] == 1)


async def test_stop_revokes_the_lease_and_the_keys_vanish(etcd: FakeEtcd, start: Start) -> None:
    registration = await start()
    await registration.stop()
    assert etcd.kvs() == {}
    assert etcd.leases() == {}
    assert registration.lease_id is None
    assert etcd.calls["revoke"] == 1


async def test_stop_while_etcd_is_down_leaves_the_keys_to_their_lease(
    etcd: FakeEtcd, start: Start, caplog: pytest.LogCaptureFixture
) -> None:
    registration = await start()
    lease = registration.lease_id
    etcd.go_down()
    await registration.stop()
    assert "could not revoke lease" in caplog.text
    etcd.come_back()
    assert held_on(etcd, lease)  # they go when the lease expires


async def test_lost_lease_is_replaced_and_the_same_keys_written_again(
    etcd: FakeEtcd, start: Start
) -> None:
    registration = await start()
    for _ in range(3):
        old = registration.lease_id
        assert old is not None
        etcd.expire_lease(old)
        assert etcd.kvs() == {}
        await eventually(lambda old=old: registration.lease_id != old)
        await eventually(lambda: held_on(etcd, registration.lease_id))
        assert one_key_per_service(etcd)
    assert etcd.calls["grant"] == 4
    assert len(etcd.leases()) == 1


async def test_key_deleted_by_someone_else_is_written_back_on_the_same_lease(
    etcd: FakeEtcd, start: Start
) -> None:
    registration = await start()
    lease = registration.lease_id
    notify_key = INSTANCES[0].key(NS)
    await etcd.delete(notify_key)
    assert notify_key not in etcd.kvs()
    await eventually(lambda: held_on(etcd, lease))
    assert registration.lease_id == lease
    assert etcd.calls["grant"] == 1
    assert registration.writes == 2


async def test_deleting_another_instances_key_changes_nothing(etcd: FakeEtcd, start: Start) -> None:
    registration = await start()
    other = Instance(NOTIFY, "notify-2", "10.0.0.8:50051", "notify")
    await etcd.put(other.key(NS), keys.encode(other))
    await etcd.delete(other.key(NS))
    # Then one of ours: the guard sees events in order, so when ours is back, the other
    # deletion has been seen and ignored.
    await etcd.delete(INSTANCES[1].key(NS))
    await eventually(lambda: held_on(etcd, registration.lease_id))
    assert registration.writes == 2


async def test_two_instances_of_one_deployment_hold_separate_keys_and_leases(
    etcd: FakeEtcd, start: Start
) -> None:
    second = [Instance(i.service, "notify-2", "10.0.0.8:50051", "notify") for i in INSTANCES]
    first_registration = await start()
    second_registration = await start(second)
    assert first_registration.lease_id != second_registration.lease_id
    assert all(len(etcd.kvs(keys.service_prefix(NS, i.service))) == 2 for i in INSTANCES)
    await second_registration.stop()
    assert held_on(etcd, first_registration.lease_id)


async def test_etcd_down_then_back_keeps_the_lease_that_still_exists(
    etcd: FakeEtcd, start: Start
) -> None:
    registration = await start()
    lease = registration.lease_id
    etcd.go_down()
    await eventually(lambda: etcd.refused >= 3)
    with pytest.raises(TimeoutError):  # not registered while etcd cannot be reached
        await registration.wait_registered(timeout=0.01)
    etcd.come_back()
    await registration.wait_registered(timeout=2)
    await eventually(lambda: registration.writes == 2)
    assert registration.lease_id == lease
    assert held_on(etcd, lease)
    assert etcd.calls["grant"] == 1
    assert one_key_per_service(etcd)


async def test_lease_expired_during_the_outage_is_replaced(etcd: FakeEtcd, start: Start) -> None:
    registration = await start()
    old = registration.lease_id
    assert old is not None
    etcd.go_down()
    await eventually(lambda: etcd.refused >= 1)
    etcd.expire_lease(old)
    etcd.come_back()
    await eventually(lambda: registration.lease_id not in (None, old))
    await eventually(lambda: held_on(etcd, registration.lease_id))
    assert etcd.leases().keys() == {registration.lease_id}


async def test_etcd_back_wiped_registers_again_on_a_new_lease(etcd: FakeEtcd, start: Start) -> None:
    registration = await start()
    old = registration.lease_id
    etcd.go_down()
    await eventually(lambda: etcd.refused >= 1)
    etcd.come_back(wipe=True)
    await eventually(lambda: registration.lease_id not in (None, old))
    await eventually(lambda: held_on(etcd, registration.lease_id))
    assert etcd.leases().keys() == {registration.lease_id}
    assert one_key_per_service(etcd)
    # And it is guarded again on the new store: a deletion is written back.
    await etcd.delete(INSTANCES[0].key(NS))
    await eventually(lambda: held_on(etcd, registration.lease_id))


async def test_never_gives_up_however_long_etcd_is_down(
    etcd: FakeEtcd, start: Start, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "mesh.registry.registration")
    registration = await start()
    etcd.go_down()
    await eventually(lambda: etcd.refused >= 60, timeout=5)
    etcd.come_back()
    await eventually(lambda: held_on(etcd, registration.lease_id))
    assert "etcd unavailable" in caplog.text
    assert one_key_per_service(etcd)


async def test_registers_once_etcd_is_up_when_started_while_it_is_down(etcd: FakeEtcd) -> None:
    etcd.go_down()
    registration = Registration(etcd, NS, INSTANCES, ttl=2, backoff=fast_backoff())
    registration.start()
    try:
        await eventually(lambda: etcd.refused >= 5)
        assert etcd.kvs() == {}
        etcd.come_back()
        await registration.wait_registered(timeout=2)
        assert held_on(etcd, registration.lease_id)
    finally:
        await registration.stop()


@pytest.mark.parametrize(
    ("instances", "ttl", "problem"),
    [
        pytest.param(INSTANCES, 1, "ttl must be >= 2", id="ttl-too-short"),
        pytest.param([], 10, "nothing to register", id="no-instances"),
    ],
)
def test_invalid_registration_is_refused(
    etcd: FakeEtcd, instances: list[Instance], ttl: int, problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        Registration(etcd, NS, instances, ttl=ttl)
