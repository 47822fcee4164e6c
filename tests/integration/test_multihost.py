"""Several hosts for real: three network namespaces on a bridge, each with an etcd member, a
NATS node and a replica of eligibility and notify (the full set is `make multihost`: 33
replicas take longer to start than `make test` can spare); host 3 cut off under steady load
and brought back (chaos/multihost.py).

"Failed calls in flight on host 3" are told apart by when they started: the cut's window runs
from one call timeout before the cut (calls already in flight on it) until host 3's replicas
left the registry, plus 1 s for every watcher to hear it (calls sent to them while they were
listed: a call into a black hole fails only at its deadline, so nothing ejects the instance
sooner). Outside that window no call may fail: before the cut, after the window, and all the
time host 3 is coming back.

Skips only where a network namespace cannot be made (not root, no iproute2)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from chaos.multihost import MultiHostConfig, processes_of, run
from chaos.netns import leftovers, probe
from mesh.testing import wait_until

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DEPLOYMENTS = ("eligibility", "notify")


@pytest.fixture(autouse=True)
def namespaces() -> None:
    reason = probe()
    if reason is not None:
        pytest.skip(f"network namespaces cannot be made here: {reason}")


async def test_a_host_cut_off_fails_only_the_calls_in_flight_on_it_and_comes_back() -> None:
    config = MultiHostConfig(deployments=DEPLOYMENTS, before_s=3.0, cut_s=6.0, after_s=3.0)
    made: dict[str, Any] = {}
    figures = await run(config, made=made)
    print("\n" + json.dumps(figures, indent=2))  # the timings: printed, never judged

    for load in ("rest", "grpc"):
        stream = figures[load]
        assert stream["requests"] > 200, stream
        assert stream["failed_outside_cut_window"] == {}, stream["failed_started_at_s"]
        # Each phase had calls that succeeded.
        for phase in ("before", "during", "after", "after_recovered"):
            assert stream[phase]["calls"] > 0, (phase, stream)
        assert stream["after_recovered"]["failed"] == {}, stream
    # The survivors kept etcd's quorum and JetStream's meta leader through the cut (after an
    # election, if the leader was on host 3).
    assert figures["etcd_quorum"]["kept"], figures["etcd_quorum"]
    assert figures["nats_meta_leader"]["kept"], figures["nats_meta_leader"]
    # The registry let host 3's replicas go while it was cut off ...
    assert figures["replicas_left_registry_after_s"] is not None
    # ... and they serve again, its etcd member and NATS node rejoined (run() waits for each
    # of these, and fails if one does not come: these figures exist only if they did).
    for name in (
        "replicas_serving_again_after_s",
        "etcd_member_has_leader_after_s",
        "etcd_member_rejoined_after_s",
        "nats_node_rejoined_after_s",
    ):
        assert figures[name] >= 0, name

    # Nothing left: no namespace, no link, no process, no state directory.
    assert leftovers(made["tag"]) == []
    assert processes_of(made["state_dir"]) == []
    assert not made["state_dir"].exists()


def test_sigterm_in_the_middle_removes_everything() -> None:
    """`python -m chaos.multihost` stopped by SIGTERM once its mesh is up: it exits and leaves
    no namespace, link, process or directory behind."""
    log: list[str] = []
    proc = subprocess.Popen(
        [sys.executable, "-m", "chaos.multihost", "--only", "eligibility", "--no-write"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            log.append(line)
            if line.startswith("gateway on host 1"):
                break
        else:
            pytest.fail("chaos.multihost ended before its gateway was up:\n" + "".join(log))
        tag = log[0].split()[1].removeprefix("hmsbr")
        assert leftovers(tag), log[0]  # it made them
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log.append(rest)
    assert proc.returncode == 130, "".join(log)
    assert "interrupted: everything removed" in rest, "".join(log)
    assert "left behind" not in rest, "".join(log)
    wait_until(lambda: leftovers(tag) == [], 5)
    assert not any(tag in line for line in subprocess.check_output(["ip", "link"], text=True))
