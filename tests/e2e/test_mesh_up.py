"""`mesh up` as a user runs it: the whole stack, `mesh ls`, the demo scenario, then SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Iterable
from pathlib import Path

import grpc
import httpx
import pytest

from hms.eligibility.v1 import eligibility_pb2, eligibility_pb2_grpc
from hms.testing.v1 import echo_pb2, echo_pb2_grpc
from hms_tools.authz_matrix import compose_policy
from hms_tools.flows import callable_by, run_flows, wait_for_routes
from hms_tools.stack import Stack, StackConfig, discover_services, read_manifests
from mesh.client import ClientConfig, MeshChannel
from mesh.testing import eventually
from mesh.tls import TlsFiles

pytestmark = pytest.mark.integration


def _wait_until_ready(proc: subprocess.Popen[str], timeout: float) -> str:
    """Read `mesh up`'s output until it says the stack is ready; returns what it printed."""
    assert proc.stdout is not None
    printed: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()  # returns at each line; "" only when mesh up exited
        printed.append(line)
        if line.startswith("stack ready"):
            return "".join(printed)
        if not line:
            raise AssertionError(f"mesh up exited {proc.wait()}: {''.join(printed)}")
    raise AssertionError(f"mesh up not ready within {timeout} s: {''.join(printed)}")


def test_mesh_up_ls_scenario_and_clean_stop(tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESH_")}
    up = subprocess.Popen(
        [sys.executable, "-m", "hms_tools.cli", "up", "--state-dir", str(state)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        _wait_until_ready(up, 60)
        info = json.loads((state / "stack.json").read_text())
        # What the manifests declare, each with its replicas (services/*/service.toml with a
        # main.py); test backends (echo, mirror) are never started by mesh up.
        manifests = read_manifests()
        assert set(info["services"]) == set(discover_services()) == set(manifests)
        for deployment, service in info["services"].items():
            assert len(service["replicas"]) == manifests[deployment].replicas, deployment
        # One authorization policy for every service, composed from the manifests' [[accepts]].
        assert Path(info["policy"]).read_text() == compose_policy(manifests.values())
        assert (Path(info["tls_dir"]) / "ops.pem").exists()

        ls = subprocess.run(
            [sys.executable, "-m", "hms_tools.cli", "ls", "--state-dir", str(state)],
            capture_output=True, text=True, timeout=30, env=env, check=False,
        )  # fmt: skip
        assert ls.returncode == 0, ls.stderr
        lines = ls.stdout.splitlines()
        assert lines[0].split() == [
            "SERVICE",
            "DEPLOYMENT",
            "ADDRESS",
            "VERSION",
            "IDENTITY",
            "TTL",
        ]
        assert any("hms.notify.v1.NotifyService" in line and "spiffe://hms.local/svc/notify" in line
                   for line in lines)  # fmt: skip

        # mesh up made the event streams, so no service has to.
        events = subprocess.run(
            [sys.executable, "-m", "hms_tools.cli", "events", "ls", "--state-dir", str(state)],
            capture_output=True, text=True, timeout=30, env=env, check=False,
        )  # fmt: skip
        assert events.returncode == 0, events.stderr
        streams = {line.split()[0] for line in events.stdout.splitlines() if line.strip()}
        assert {"HMS_EVENTS", "HMS_DLQ"} <= streams, events.stdout

        # The gateway mesh up started, its URL in stack.json, with its gate on: no token is a
        # 401; `mesh token` signs one with the stack's key, and the demo's flows pass with it.
        assert info["gateway"].startswith("http://127.0.0.1:")
        refused = httpx.post(f"{info['gateway']}/v1/eligibility:check", json={}, timeout=10)
        assert refused.status_code == 401, refused.text

        def mesh_token(subject: str, scopes: Iterable[str]) -> str:
            flags = [flag for scope in scopes for flag in ("--scope", scope)]
            minted = subprocess.run(
                [sys.executable, "-m", "hms_tools.cli", "token", "--sub", subject, *flags,
                 "--state-dir", str(state)],
                capture_output=True, text=True, timeout=30, env=env, check=False,
            )  # fmt: skip
            assert minted.returncode == 0, minted.stderr
            return minted.stdout.strip()

        asyncio.run(wait_for_routes(info["gateway"], callable_by(manifests.values())))
        report = asyncio.run(run_flows(info["gateway"], mesh_token))
        assert report.failures == []
        assert len(report.cases) == 3
        pids = [r["pid"] for s in info["services"].values() for r in s["replicas"]]
    finally:
        up.send_signal(signal.SIGTERM)
        output, _ = up.communicate(timeout=60)
    assert up.returncode == 0, output
    assert "stopped" in output
    assert not (state / "stack.json").exists()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


async def _status(call: Awaitable[object]) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def _calls_as(stack: Stack, identity: str) -> tuple[grpc.StatusCode, grpc.StatusCode]:
    """eligibility's ListRules and echo's Echo, called through the mesh as `identity`."""
    client = ClientConfig(etcd=(stack.etcd_endpoint,), tls=TlsFiles(stack.tls_dir, identity))
    async with await MeshChannel.connect(client) as channel:
        rules = eligibility_pb2_grpc.EligibilityServiceStub(channel).ListRules(
            eligibility_pb2.ListRulesRequest(), timeout=10
        )
        echo = echo_pb2_grpc.EchoServiceStub(channel).Echo(
            echo_pb2.EchoRequest(message="hi"), timeout=10
        )
        return await _status(rules), await _status(echo)


async def test_every_service_enforces_the_policy_the_manifests_compose(tmp_path: Path) -> None:
    """eligibility's manifest accepts the gateway for every method and passport and housing
    for Check, not the operators: a stack of eligibility (and echo, a test backend without a
    manifest) hands it that policy, and echo the mesh."""
    config = StackConfig(
        state_dir=tmp_path / "state", deployments=("eligibility", "echo"), gateway=False
    )
    stack = Stack(config, report=lambda _: None)
    info = await stack.start()
    try:
        policy = await asyncio.to_thread(Path(info["policy"]).read_text)
        assert policy.startswith("# Written by `mesh up`")
        assert '"echo (no manifest): every mesh identity"' in policy

        ok, denied = grpc.StatusCode.OK, grpc.StatusCode.PERMISSION_DENIED
        assert await _calls_as(stack, "gateway") == (ok, ok)
        assert await _calls_as(stack, "ops") == (denied, ok)
    finally:
        await stack.stop()


async def test_the_matrix_in_audit_mode_logs_what_it_would_refuse(tmp_path: Path) -> None:
    """`mesh up --policy-mode audit`: the call the matrix refuses above (ops -> eligibility)
    goes through, and eligibility logs that it would have refused it, naming the caller."""
    config = StackConfig(
        state_dir=tmp_path / "state",
        deployments=("eligibility",),
        gateway=False,
        policy_mode="audit",
    )
    stack = Stack(config, report=lambda _: None)
    info = await stack.start()
    try:
        policy = await asyncio.to_thread(Path(info["policy"]).read_text)
        assert 'mode = "audit"' in policy
        client = ClientConfig(etcd=(stack.etcd_endpoint,), tls=TlsFiles(stack.tls_dir, "ops"))
        async with await MeshChannel.connect(client) as channel:
            rules = eligibility_pb2_grpc.EligibilityServiceStub(channel)
            answer = await rules.ListRules(eligibility_pb2.ListRulesRequest(), timeout=10)
        assert answer.rules
        log = Path(info["services"]["eligibility"]["replicas"][0]["log"])

        def said() -> bool:
            text = log.read_text()
            return "authz audit, would deny" in text and "spiffe://hms.local/svc/ops" in text

        await eventually(said, 10)
    finally:
        await stack.stop()
