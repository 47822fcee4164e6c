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

from services.demo import scenario

pytestmark = pytest.mark.integration


def _wait_for_file(path: Path, proc: subprocess.Popen[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(
                f"mesh up exited {proc.returncode}: {proc.stdout.read() if proc.stdout else ''}"
            )
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} not written within {timeout} s")
        time.sleep(0.1)  # polling for the file, bounded by the deadline


def test_mesh_up_ls_scenario_and_clean_stop(tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESH_")}
    up = subprocess.Popen(
        [sys.executable, "-m", "mesh.cli", "up", "--state-dir", str(state)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        _wait_for_file(state / "stack.json", up, 60)
        info = json.loads((state / "stack.json").read_text())
        assert set(info["services"]) >= {"eligibility", "notify", "echo"}
        assert (Path(info["tls_dir"]) / "ops.pem").exists()

        ls = subprocess.run(
            [sys.executable, "-m", "mesh.cli", "ls", "--state-dir", str(state)],
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

        failures = asyncio.run(scenario(info["etcd"], Path(info["tls_dir"]), info["namespace"]))
        assert failures == 0
        pids = [s["pid"] for s in info["services"].values()]
    finally:
        up.send_signal(signal.SIGTERM)
        output, _ = up.communicate(timeout=60)
    assert up.returncode == 0, output
    assert "stopped" in output
    assert not (state / "stack.json").exists()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
