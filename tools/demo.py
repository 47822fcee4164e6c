"""The reference scenario, end to end: `make demo` (or `python -m hms_tools.demo`).

A citizen applies for a housing voucher: the eligibility rules are checked, a notification is
sent with the decision, and a caseworker lists what was sent. It starts the whole stack (etcd,
NATS, every service in its own process), calls the services through the mesh channel
(registry, load balancing, deadlines, retries) over mTLS with the `ops` identity, prints each
step and its answer; then an outside caller does the same over REST through the gateway; and
it stops everything.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format

from hms.eligibility.v1 import eligibility_pb2, eligibility_pb2_grpc
from hms.notify.v1 import notify_pb2, notify_pb2_grpc
from hms_tools.stack import OPS_IDENTITY, Stack, StackConfig
from mesh import tls
from mesh.client import ClientConfig, MeshChannel

T = TypeVar("T")

ELIGIBILITY = "hms.eligibility.v1.EligibilityService"
NOTIFY = "hms.notify.v1.NotifyService"


def show(message: Any) -> str:
    return json_format.MessageToJson(
        message, indent=None, preserving_proto_field_name=True, ensure_ascii=False
    )


class Steps:
    """Numbered, printed steps; counts the ones that went wrong."""

    def __init__(self) -> None:
        self.number = 0
        self.failures = 0

    async def run(self, title: str, call: Callable[[], Awaitable[T]]) -> T | None:
        self.number += 1
        started = time.perf_counter()
        try:
            answer = await call()
        except grpc.aio.AioRpcError as exc:
            print(f"{self.number:>2}. {title}\n    -> {exc.code().name}: {exc.details()}")
            return None
        took = (time.perf_counter() - started) * 1000
        print(f"{self.number:>2}. {title}  ({took:.1f} ms)\n    -> {show(answer)}")  # type: ignore[arg-type]
        return answer

    async def expect_error(
        self, title: str, code: grpc.StatusCode, call: Callable[[], Awaitable[object]]
    ) -> None:
        self.number += 1
        try:
            await call()
        except grpc.aio.AioRpcError as exc:
            ok = exc.code() == code
            mark = "as expected" if ok else f"EXPECTED {code.name}"
            print(f"{self.number:>2}. {title}\n    -> {exc.code().name} ({mark}): {exc.details()}")
            self.failures += not ok
            return
        print(f"{self.number:>2}. {title}\n    -> succeeded, EXPECTED {code.name}")
        self.failures += 1


async def scenario(etcd_endpoint: str, tls_dir: Path, namespace: str = "hms") -> int:
    """Runs the scenario against a running stack; returns the number of failed steps."""
    config = ClientConfig(
        etcd=(etcd_endpoint,), namespace=namespace, tls=tls.TlsFiles(tls_dir, OPS_IDENTITY)
    )
    async with await MeshChannel.connect(config) as channel:
        for service in (ELIGIBILITY, NOTIFY):
            pool = await channel.pool(service)
            for endpoint in pool.endpoints.values():
                instance = endpoint.instance
                print(f"found {service} at {instance.address} ({instance.identity})")
        print()
        rules = eligibility_pb2_grpc.EligibilityServiceStub(channel)
        notify = notify_pb2_grpc.NotifyServiceStub(channel)
        return await _steps(rules, notify)


async def _steps(
    rules: eligibility_pb2_grpc.EligibilityServiceStub,
    notify: notify_pb2_grpc.NotifyServiceStub,
) -> int:
    steps = Steps()
    timeout = 5.0
    await steps.run(
        "The caseworker lists the scheme's rules",
        lambda: rules.ListRules(eligibility_pb2.ListRulesRequest(), timeout=timeout),
    )
    applicants = [
        ("HV-1001", 2_800_000, 2, 30, "ada@example.org"),
        ("HV-1002", 6_100_000, 1, 6, "07700900123"),
    ]
    decisions = []
    for applicant_id, income, household, months, contact in applicants:
        check = eligibility_pb2.CheckRequest(
            applicant_id=applicant_id,
            annual_income_pence=income,
            household_size=household,
            residence_months=months,
        )
        decision = await steps.run(
            f"Check {applicant_id}: income £{income / 100:,.0f}, household {household}, "
            f"{months} months at address",
            lambda check=check: rules.Check(check, timeout=timeout),
        )
        if decision is None:
            steps.failures += 1
            continue
        decisions.append(decision)
        failed = [r.message for r in decision.reasons if not r.passed]
        body = "You are eligible." if decision.eligible else "Not eligible: " + "; ".join(failed)
        channel = notify_pb2.CHANNEL_EMAIL if "@" in contact else notify_pb2.CHANNEL_SMS
        send = notify_pb2.SendRequest(
            applicant_id=applicant_id,
            channel=channel,
            recipient=contact,
            subject="Your housing voucher application",
            body=body,
        )
        sent = await steps.run(
            f"Notify {applicant_id} of the decision",
            lambda send=send: notify.Send(send, timeout=timeout),
        )
        steps.failures += sent is None
    await steps.expect_error(
        "A malformed application (negative income) is refused, naming the field",
        grpc.StatusCode.INVALID_ARGUMENT,
        lambda: rules.Check(
            eligibility_pb2.CheckRequest(applicant_id="HV-1003", annual_income_pence=-1),
            timeout=timeout,
        ),
    )
    await steps.expect_error(
        "Asking for a rule that does not exist",
        grpc.StatusCode.NOT_FOUND,
        lambda: rules.GetRule(eligibility_pb2.GetRuleRequest(rule_id="MAX_AGE"), timeout=timeout),
    )
    listed = await steps.run(
        "The caseworker lists the notifications sent",
        lambda: notify.ListNotifications(notify_pb2.ListNotificationsRequest(), timeout=timeout),
    )
    if listed is None or len(listed.notifications) != len(decisions):
        steps.failures += 1
    outcome = [
        f"{d.applicant_id}: {'eligible' if d.eligible else 'not eligible'}" for d in decisions
    ]
    print(f"\nDecisions: {', '.join(outcome)}")
    return steps.failures


def _http(method: str, url: str, body: dict[str, Any] | None = None) -> tuple[int, str]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url, data=data, method=method, headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def rest_scenario(gateway: str, wait: float = 20.0) -> int:
    """An outside caller over REST, through the gateway; returns the number of failed steps."""
    deadline = time.monotonic() + wait
    while True:  # the gateway learns the services' routes by reflection as they register
        status, body = await asyncio.to_thread(_http, "GET", f"{gateway}/readyz")
        if status == 200 and {ELIGIBILITY, NOTIFY} <= set(json.loads(body)["services"]):
            break
        if time.monotonic() > deadline:
            print(f"gateway {gateway} did not learn the services: {body}")
            return 1
        await asyncio.sleep(0.05)
    failures = 0
    print(f"\nREST through the gateway at {gateway}:")
    for title, method, path, payload, expected in (
        (
            "A citizen checks eligibility from the web",
            "POST",
            "/v1/eligibility:check",
            {"applicantId": "HV-2001", "annualIncomePence": "1900000", "householdSize": 3,
             "residenceMonths": 48},
            200,
        ),
        ("A rule that does not exist answers 404", "GET", "/v1/rules/MAX_AGE", None, 404),
        ("Malformed JSON answers 400, naming the problem", "POST", "/v1/eligibility:check",
         {"annualIncomePence": "lots"}, 400),
    ):  # fmt: skip
        status, body = await asyncio.to_thread(_http, method, gateway + path, payload)
        mark = "as expected" if status == expected else f"EXPECTED {expected}"
        failures += status != expected
        print(f"  {title}\n  {method} {path} -> {status} ({mark})\n    {body[:300]}")
    return failures


async def main_async(state_dir: Path) -> int:
    stack = Stack(StackConfig(state_dir=state_dir))
    print(f"Starting etcd, NATS and {', '.join(stack.deployments)} (state in {state_dir}) ...")
    started = time.perf_counter()
    info = await stack.start()
    try:
        print(f"stack up in {time.perf_counter() - started:.1f} s: etcd {info['etcd']}, "
              f"NATS {info['nats']}\n")  # fmt: skip
        failures = await scenario(info["etcd"], Path(info["tls_dir"]), info["namespace"])
        failures += await rest_scenario(info["gateway"])
    finally:
        await stack.stop()
        print("stack stopped")
    print("demo OK" if failures == 0 else f"demo FAILED: {failures} step(s) went wrong")
    return 0 if failures == 0 else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", type=Path, help="default: a new temporary directory")
    args = parser.parse_args(argv)
    if args.state_dir is not None:
        return asyncio.run(main_async(args.state_dir))
    with tempfile.TemporaryDirectory(prefix="hms-demo-") as tmp:
        return asyncio.run(main_async(Path(tmp)))


if __name__ == "__main__":
    sys.exit(main())
