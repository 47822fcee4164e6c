"""`mesh up` passing the gateway its options: a real stack (etcd, NATS, the eligibility service,
the gateway) started with ``StackConfig(gateway_args=("--strict",))`` refuses an unknown JSON
field; a flag the gateway does not take fails `mesh up` at once with the gateway's own words.
The stack's gateway is gated with its development key (tools/devjwt.py): calls carry a token
from `mint_token`, as `mesh token` prints it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from hms_tools.devjwt import mint_token
from hms_tools.errors import OperatorError
from hms_tools.stack import Stack, StackConfig

pytestmark = pytest.mark.integration

CHECK = "/v1/eligibility:check"
APPLICANT = {
    "applicantId": "HV-1",
    "annualIncomePence": "2800000",
    "householdSize": 2,
    "residenceMonths": 24,
}


@pytest.fixture
async def strict_stack(tmp_path: Path) -> AsyncIterator[Stack]:
    config = StackConfig(
        state_dir=tmp_path / "state",
        deployments=("eligibility",),
        gateway_args=("--strict",),
        lease_ttl=2,
        control=False,
    )
    stack = Stack(config, report=lambda text: None)
    await stack.start()
    try:
        yield stack
    finally:
        await stack.stop()


async def test_a_strict_gateway_refuses_an_unknown_json_field(strict_stack: Stack) -> None:
    token = mint_token(strict_stack.state_dir, "maya", ["eligibility:check"])
    async with httpx.AsyncClient(
        base_url=strict_stack.info["gateway"],
        timeout=10,
        headers={"authorization": f"Bearer {token}"},
    ) as http:
        typo = await http.post(CHECK, json={**APPLICANT, "housholdSize": 2})
        assert typo.status_code == 400, typo.text
        assert typo.json() == {
            "code": 3,
            "message": "request body: unknown field 'housholdSize'",
            "details": [],
        }
        fine = await http.post(CHECK, json=APPLICANT)
        assert fine.status_code == 200, fine.text
        # The stack's gateway is gated: without the token, nothing.
        bare = await http.post(CHECK, json=APPLICANT, headers={"authorization": ""})
        assert bare.status_code == 401, bare.text
        assert fine.json()["applicantId"] == "HV-1"
        # and what every gateway says of a value that does not fit, in JSON terms
        lots = await http.post(CHECK, json={**APPLICANT, "annualIncomePence": "lots"})
        assert lots.status_code == 400, lots.text
        assert lots.json()["message"] == (
            "request body is not valid: annualIncomePence: expected an integer "
            '(a JSON number or a string of digits), got "lots"'
        )
        flag = await http.post(CHECK, json={**APPLICANT, "householdSize": True})
        assert flag.status_code == 400, flag.text
        assert flag.json()["message"] == (
            "request body is not valid: householdSize: expected an integer "
            "(a JSON number or a string of digits), got true"
        )


async def test_no_gate_runs_the_stacks_gateway_without_the_gate(tmp_path: Path) -> None:
    config = StackConfig(
        state_dir=tmp_path / "state",
        deployments=("eligibility",),
        gateway_args=("--no-gate",),
        lease_ttl=2,
        control=False,
    )
    stack = Stack(config, report=lambda text: None)
    await stack.start()
    try:
        async with httpx.AsyncClient(base_url=stack.info["gateway"], timeout=10) as http:
            open_check = await http.post(CHECK, json=APPLICANT)
            assert open_check.status_code == 200, open_check.text
            document = (await http.get("/openapi.json")).json()
            assert "securitySchemes" not in document["components"]
        assert not (tmp_path / "state" / "jwt").exists()  # no development key was made
    finally:
        await stack.stop()


async def test_a_flag_the_gateway_does_not_take_fails_the_stack_with_its_words(
    tmp_path: Path,
) -> None:
    config = StackConfig(
        state_dir=tmp_path / "state",
        deployments=("eligibility",),
        gateway_args=("--port=eighty",),
        lease_ttl=2,
        ready_timeout=60,
        control=False,
    )
    stack = Stack(config, report=lambda text: None)
    began = time.monotonic()
    with pytest.raises(OperatorError) as caught:
        await stack.start()
    # Well before the 60 s ready timeout: the gateway's exit is seen as it happens.
    assert time.monotonic() - began < 30
    message = str(caught.value)
    assert message.startswith(
        "the gateway exited before it was ready (status 2): "
        "mesh gateway: error: argument --port: invalid int value: 'eighty' (log: "
    ), message
    # start() stopped what it had started
    assert stack.gateway is None
    assert stack.supervisor is None
    assert not (tmp_path / "state" / "stack.json").exists()


def test_mesh_up_with_an_unknown_gateway_flag_exits_2_with_the_gateways_message(
    tmp_path: Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESH_")}
    up = subprocess.run(
        [
            sys.executable, "-m", "hms_tools.cli", "up", "--state-dir", str(tmp_path / "state"),
            "--only", "eligibility", "--gateway-arg=--strict", "--gateway-arg=--bogus",
        ],
        capture_output=True, text=True, timeout=90, env=env, check=False,
    )  # fmt: skip
    assert up.returncode == 2, up.stdout + up.stderr
    last = up.stderr.strip().splitlines()[-1]
    assert last.startswith(
        "mesh up: the gateway exited before it was ready (status 2): "
        "mesh: error: unrecognized arguments: --bogus (log: "
    ), up.stderr
    assert "Traceback" not in up.stderr
