"""Planned operations are invisible to callers, on a real stack (etcd, NATS, mTLS, service
processes, the gateway) under steady load of idempotent calls, REST through the gateway and
gRPC through a mesh channel: a SIGTERM to one of three replicas, `mesh restart`, `mesh scale`.
And what an operator sees when a replica dies: a report, a restart, stack.json following."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest

from chaos.load import Recorder, grpc_target, http_target, run_load
from chaos.scenarios import open_policy
from hms.eligibility.v1 import eligibility_pb2, eligibility_pb2_grpc
from hms_tools.control import send_request
from hms_tools.devjwt import mint_token
from hms_tools.stack import Stack, StackConfig
from hms_tools.supervisor import ReplicaState
from mesh.client import ClientConfig, MeshChannel
from mesh.testing import eventually
from mesh.tls import TlsFiles

pytestmark = pytest.mark.integration

DEPLOYMENT = "eligibility"
CHECK = b'{"applicantId":"A1","annualIncomePence":"2800000","householdSize":2,"residenceMonths":24}'
RATE = 100.0  # calls/s on each path: steady, well below what one replica serves


class Running:
    """A stack of `eligibility` replicas and the gateway, and load running against it."""

    def __init__(self, stack: Stack, reports: list[str]) -> None:
        self.stack = stack
        self.reports = reports
        self.rest = Recorder()
        self.grpc = Recorder()
        self._stop = asyncio.Event()
        self._load: asyncio.Task[Any] | None = None

    @property
    def state_dir(self) -> Path:
        return self.stack.state_dir

    def info(self) -> dict[str, Any]:
        return dict(json.loads((self.state_dir / "stack.json").read_text()))

    def replicas(self) -> list[dict[str, Any]]:
        return list(self.info()["services"][DEPLOYMENT]["replicas"])

    async def start_load(self, exits: AsyncExitStack) -> None:
        files = TlsFiles(self.stack.tls_dir, "ops")
        config = ClientConfig(etcd=tuple(self.stack.etcd_endpoints), tls=files)
        channel = await exits.enter_async_context(await MeshChannel.connect(config))
        stub = eligibility_pb2_grpc.EligibilityServiceStub(channel)
        request = eligibility_pb2.CheckRequest(
            applicant_id="A1", annual_income_pence=2_800_000, household_size=2, residence_months=24
        )
        # The stack's gateway checks tokens: one signed with its development key.
        token = mint_token(self.state_dir, "load", ["eligibility:check"])
        bearer = {"authorization": f"Bearer {token}"}
        rest = await exits.enter_async_context(
            http_target(self.stack.info["gateway"], "POST", "/v1/eligibility:check", CHECK, bearer)
        )
        grpc = await exits.enter_async_context(grpc_target(lambda: stub.Check(request, timeout=5)))
        self._load = asyncio.gather(
            run_load(rest, rate=RATE, workers=4, until=self._stop, recorder=self.rest),
            run_load(grpc, rate=RATE, workers=4, until=self._stop, recorder=self.grpc),
        )
        # Under way on both paths before anything happens to the stack.
        await eventually(lambda: len(self.rest.records) > 20 and len(self.grpc.records) > 20, 20)

    async def stop_load(self) -> None:
        self._stop.set()
        if self._load is not None:
            await self._load

    def assert_nothing_failed(self) -> None:
        assert self.rest.failures() == {}, self.rest.window()
        assert self.grpc.failures() == {}, self.grpc.window()
        assert len(self.rest.records) > 50
        assert len(self.grpc.records) > 50

    async def replicas_serving(self, count: int) -> None:
        def settled() -> bool:
            replicas = self.replicas()
            return len(replicas) == count and all(r["state"] == "serving" for r in replicas)

        await eventually(settled, 60, interval=0.05)


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Running]]]:
    async with AsyncExitStack() as exits:

        async def start(replicas: int, workers: int = 1) -> Running:
            reports: list[str] = []
            config = StackConfig(
                state_dir=tmp_path / "state",
                deployments=(DEPLOYMENT,),
                scale={DEPLOYMENT: replicas},
                workers=workers,
                lease_ttl=2,
                # The load calls as `ops`; these tests are about availability, not the matrix.
                policy=open_policy(tmp_path),
            )
            stack = Stack(config, report=reports.append)
            await stack.start()
            exits.push_async_callback(stack.stop)
            run = Running(stack, reports)
            exits.push_async_callback(run.stop_load)
            await run.start_load(exits)
            return run

        yield start


async def mesh_cli(state_dir: Path, *args: str) -> tuple[int, str]:
    """`mesh ARGS --state-dir STATE` as its own process (the test's loop serves the socket)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESH_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hms_tools.cli", *args, "--state-dir", str(state_dir),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode or 0, out.decode()


async def test_sigterm_to_one_of_three_replicas_fails_no_call(
    running: Callable[..., Awaitable[Running]],
) -> None:
    run = await running(3)
    victim = run.replicas()[0]
    os.kill(victim["pid"], signal.SIGTERM)  # an operator's `kill`, not the supervisor's
    # It drains and exits 0; the supervisor notices and starts it again in its slot.
    await eventually(lambda: any("exit status 0" in r for r in run.reports), 30)
    await eventually(lambda: any("back, SERVING" in r for r in run.reports), 30)
    await run.replicas_serving(3)
    await asyncio.sleep(0.5)  # load after the recovery is part of what must not fail
    await run.stop_load()
    run.assert_nothing_failed()
    assert victim["pid"] not in [r["pid"] for r in run.replicas()]


async def test_rolling_restart_fails_no_call(
    running: Callable[..., Awaitable[Running]],
) -> None:
    run = await running(3)
    before = {r["name"]: r["pid"] for r in run.replicas()}

    status, output = await mesh_cli(run.state_dir, "restart", DEPLOYMENT)

    assert status == 0, output
    lines = output.splitlines()
    assert lines[0] == "restart eligibility: 3 replica(s), one at a time"
    assert lines[-1].startswith("restart eligibility: done in ")
    for name in before:  # each slot: replacement SERVING before the old one is stopped
        steps = [line for line in lines if line.strip().startswith(f"{name}:")]
        assert [s.split(":", 1)[1].split()[0] for s in steps] == [
            "started", "SERVING", "SIGTERM", "exit",
        ], output  # fmt: skip
    after = {r["name"]: r["pid"] for r in run.replicas()}
    assert set(after) == set(before)
    assert not set(after.values()) & set(before.values())
    await run.stop_load()
    run.assert_nothing_failed()
    assert run.reports == []  # nothing crashed


async def test_scale_up_and_down_live_fails_no_call(
    running: Callable[..., Awaitable[Running]],
) -> None:
    run = await running(1)

    status, output = await mesh_cli(run.state_dir, "scale", f"{DEPLOYMENT}=3")
    assert status == 0, output
    assert "scale eligibility: 1 -> 3" in output
    assert [r["name"] for r in run.replicas()] == [f"{DEPLOYMENT}-{n}" for n in (1, 2, 3)]
    assert all(r["state"] == "serving" for r in run.replicas())

    status, output = await mesh_cli(run.state_dir, "scale", f"{DEPLOYMENT}=1")
    assert status == 0, output
    assert "eligibility-3: exit status 0" in output
    assert [r["name"] for r in run.replicas()] == [f"{DEPLOYMENT}-1"]

    await run.stop_load()
    run.assert_nothing_failed()


async def test_a_killed_replica_is_reported_restarted_and_listed(
    running: Callable[..., Awaitable[Running]],
) -> None:
    run = await running(2)
    victim = run.replicas()[1]
    os.kill(victim["pid"], signal.SIGKILL)

    await eventually(lambda: len(run.reports) >= 2, 30)
    crash, back = run.reports[:2]
    assert crash.startswith(f"{victim['name']} (pid {victim['pid']}) exited on its own: ")
    assert "killed by SIGKILL" in crash
    assert "    | " in crash  # the tail of its log
    assert f"{victim['name']}: restarting in " in crash
    assert back.startswith(f"{victim['name']}: back, SERVING at 127.0.0.1:")
    await run.replicas_serving(2)
    replaced = next(r for r in run.replicas() if r["name"] == victim["name"])
    assert replaced["pid"] != victim["pid"]
    assert replaced["restarts"] == 1
    supervisor = run.stack.supervisor
    assert supervisor is not None
    assert [r.state for r in supervisor.replicas(DEPLOYMENT)] == [ReplicaState.SERVING] * 2
    await run.stop_load()
    # kill -9 is not planned: calls in flight on it may fail; the registry forgets it within
    # its lease (2 s here), and calls that never reached it are retried elsewhere.
    failed = sum(run.rest.failures().values()) + sum(run.grpc.failures().values())
    assert failed <= 8, (run.rest.window(), run.grpc.window())


@pytest.mark.parametrize(
    ("request_", "error"),
    [
        pytest.param({"command": "restart", "deployment": "nope"}, "no deployment 'nope'",
                     id="unknown-deployment"),
        pytest.param({"command": "scale", "deployment": DEPLOYMENT, "replicas": -1},
                     "replicas must be >= 0, got -1", id="negative-replicas"),
        pytest.param({"command": "scale", "deployment": DEPLOYMENT, "replicas": "3"},
                     "'replicas' must be a int", id="replicas-not-a-number"),
        pytest.param({"command": "rm", "deployment": DEPLOYMENT}, "unknown command 'rm'",
                     id="unknown-command"),
    ],
)  # fmt: skip
async def test_control_refuses_bad_requests_and_the_stack_serves_on(
    running: Callable[..., Awaitable[Running]], request_: dict[str, Any], error: str
) -> None:
    from hms_tools.control import ControlError

    run = await running(1)
    with pytest.raises(ControlError, match=error):
        await send_request(run.stack.control_path, request_, lambda _: None)
    # A hostile peer: garbage, then a line longer than allowed, then one that never ends.
    for payload in (b"\x00\xff not json\n", b"{" * 100_000 + b"\n"):
        reader, writer = await asyncio.open_unix_connection(str(run.stack.control_path))
        writer.write(payload)
        answer = json.loads(await reader.readline())
        assert "error" in answer
        writer.close()
    await run.replicas_serving(1)
    await eventually(lambda: len(run.rest.records) > 60 and len(run.grpc.records) > 60, 20)
    await run.stop_load()
    run.assert_nothing_failed()
    assert (run.stack.control_path.stat().st_mode & 0o777) == 0o600


async def test_a_rolling_restart_of_replicas_with_workers_fails_no_call(
    running: Callable[..., Awaitable[Running]],
) -> None:
    """`mesh up --workers 2`: each replica of a stateless service is two registered worker
    processes; a restart waits for both of the replacement's workers to serve."""
    run = await running(2, workers=2)
    for replica in run.replicas():
        ids = sorted(i["instance_id"] for i in replica["instances"])
        assert ids == [f"{replica['instance_id']}-w1", f"{replica['instance_id']}-w2"]
        assert len({i["address"] for i in replica["instances"]}) == 2

    status, output = await mesh_cli(run.state_dir, "restart", DEPLOYMENT)

    assert status == 0, output
    assert all(len(r["instances"]) == 2 for r in run.replicas())
    await run.stop_load()
    run.assert_nothing_failed()
    assert run.reports == []
