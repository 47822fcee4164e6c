"""`mesh up` as a user runs it: the whole stack, `mesh ls`, the demo scenario, then SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hms_tools.demo import rest_scenario, scenario

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
        # The domain services only: test backends (echo, mirror) are never started by mesh up.
        assert set(info["services"]) == {"eligibility", "notify"}
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

        failures = asyncio.run(scenario(info["etcd"], Path(info["tls_dir"]), info["namespace"]))
        assert failures == 0
        # The gateway mesh up started, its URL in stack.json: the same scenario over REST.
        assert info["gateway"].startswith("http://127.0.0.1:")
        assert asyncio.run(rest_scenario(info["gateway"])) == 0
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
