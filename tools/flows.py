"""The platform's four flows over REST, as a citizen's browser and a caseworker's tool make
them: the reference scenario of `make demo`, also run by the end-to-end tests.

Each step is one HTTP request through the gateway with a token holding the scopes it needs; it
prints the request, the status, the answer and the trace id the gateway returned. After the
flows it waits for the events to be delivered (notifications, audit entries: both come from
NATS, not from the requests) and prints each case's audit trail with the trace id of the
request that caused it; then the failure paths, each of which must be refused with the right
status and leave nothing behind.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hms_tools.manifest import Manifest

__all__ = [
    "Citizen",
    "FlowReport",
    "Rest",
    "TokenMaker",
    "callable_by",
    "run_flows",
    "wait_for_routes",
]

#: Mints a token for (subject, scopes).
TokenMaker = Callable[[str, Iterable[str]], str]

# A 1x1 PNG and a one-page PDF: what the document checks accept for a photo and a pay stub.
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360f8cfc0000003010100c9fe92ef"
    "0000000049454e44ae426082"
)
PAY_STUB_PDF = (
    b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n"
    b"2 0 obj<</Type/Pages/Kids[]/Count 0>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n"
)


@dataclass(frozen=True)
class Citizen:
    """Who the flows act for: ids the platform's seeded registers know."""

    citizen_id: str = "C12345"
    passport_number: str = "123456789"
    #: A citizen whose passport expired too long ago to renew (the ineligible renewal).
    lapsed_citizen_id: str = "C10002"
    lapsed_passport_number: str = "200000002"
    #: A payer the payments service declines.
    declined_payer: str = "C99999"
    licence_type: str = "STREET_TRADING"


@dataclass
class Answer:
    status: int
    body: bytes
    headers: Mapping[str, str]

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def trace_id(self) -> str:
        parts = self.headers.get("traceparent", "").split("-")
        return parts[1] if len(parts) == 4 else ""


@dataclass
class FlowReport:
    """What happened: counts the demo's summary prints and the tests assert on."""

    steps: int = 0
    failures: list[str] = field(default_factory=list)
    cases: dict[str, str] = field(default_factory=dict)  # case id -> trace id of its request

    def fail(self, what: str) -> None:
        self.failures.append(what)
        print(f"    !! {what}")


class Rest:
    """A small HTTP client for the gateway (urllib: the demo needs nothing extra installed)."""

    def __init__(self, gateway: str, tokens: TokenMaker, subject: str = "C12345") -> None:
        self.gateway = gateway.rstrip("/")
        self.tokens = tokens
        self.subject = subject

    def call(
        self,
        method: str,
        path: str,
        *,
        scopes: Iterable[str] | None = (),
        json_body: Any = None,
        raw: bytes | None = None,
        content_type: str = "application/json",
        subject: str | None = None,
    ) -> Answer:
        """`subject`: whose token (default: the citizen the flows act for)."""
        headers = {"content-type": content_type}
        if scopes is not None:  # None: no token at all
            token = self.tokens(subject or self.subject, scopes)
            headers["authorization"] = f"Bearer {token}"
        data = raw if raw is not None else None
        if json_body is not None:
            data = json.dumps(json_body).encode()
        request = urllib.request.Request(
            self.gateway + path, data=data, method=method, headers=headers
        )
        try:
            with urllib.request.urlopen(request, timeout=15) as response:
                return Answer(response.status, response.read(), dict(response.headers.items()))
        except urllib.error.HTTPError as exc:
            return Answer(exc.code, exc.read(), dict(exc.headers.items()))


class Flows:
    def __init__(self, rest: Rest, citizen: Citizen, report: FlowReport) -> None:
        self.rest = rest
        self.citizen = citizen
        self.report = report
        #: The path of the first case read back (another citizen tries it).
        self.first_case = ""

    def step(
        self,
        title: str,
        method: str,
        path: str,
        *,
        expect: int,
        scopes: Iterable[str] | None = (),
        show: bool = True,
        **kwargs: Any,
    ) -> Answer:
        self.report.steps += 1
        started = time.perf_counter()
        answer = self.rest.call(method, path, scopes=scopes, **kwargs)
        took = (time.perf_counter() - started) * 1000
        mark = "" if answer.status == expect else f"  EXPECTED {expect}"
        print(f"{self.report.steps:>2}. {title}")
        print(
            f"    {method} {path} -> {answer.status}{mark} ({took:.0f} ms, trace {answer.trace_id})"
        )
        if show:
            text = answer.body.decode(errors="replace")
            print(f"    {text[:400]}")
        if answer.status != expect:
            self.report.fail(f"{title}: {method} {path} answered {answer.status}, not {expect}")
        return answer

    # -- the four flows ----------------------------------------------------------------------

    def housing_voucher(self) -> None:
        c = self.citizen
        print("\nHousing voucher: a citizen uploads a pay stub and applies")
        stub = self.step(
            "Upload a pay stub (PDF, the raw body)",
            "POST",
            f"/v1/documents?owner={c.citizen_id}&kind=PAY_STUB",
            expect=200,
            scopes=["documents:write"],
            raw=PAY_STUB_PDF,
            content_type="application/pdf",
        )
        if stub.status != 200:
            return
        applied = self.step(
            "Apply for a housing voucher",
            "POST",
            "/v1/housing/applications",
            expect=200,
            scopes=["housing:apply"],
            json_body={
                "citizenId": c.citizen_id,
                "annualIncomePence": "2800000",
                "householdSize": 2,
                "residenceMonths": 30,
                "documentIds": [stub.json()["documentId"]],
            },
        )
        if applied.status == 200:
            application_id = applied.json()["applicationId"]
            self.report.cases[application_id] = applied.trace_id
            self.first_case = f"/v1/housing/applications/{application_id}"
            self.step(
                "Read the application back",
                "GET",
                f"/v1/housing/applications/{application_id}",
                expect=200,
                scopes=["housing:read"],
            )

    def passport_renewal(self) -> None:
        c = self.citizen
        print("\nPassport renewal: a citizen uploads a photo and renews")
        photo = self.step(
            "Upload a photo (PNG)",
            "POST",
            f"/v1/documents?owner={c.citizen_id}&kind=PHOTO",
            expect=200,
            scopes=["documents:write"],
            raw=PNG,
            content_type="image/png",
        )
        if photo.status != 200:
            return
        renewed = self.step(
            "Submit the renewal (identity verified, eligibility checked, photo checked)",
            "POST",
            "/v1/passport/renewals",
            expect=200,
            scopes=["passport:renew"],
            json_body={
                "citizenId": c.citizen_id,
                "passportNumber": c.passport_number,
                "photoDocumentId": photo.json()["documentId"],
            },
        )
        if renewed.status == 200:
            renewal_id = renewed.json()["renewalId"]
            self.report.cases[renewal_id] = renewed.trace_id
            self.step(
                "Read the renewal back",
                "GET",
                f"/v1/passport/renewals/{renewal_id}",
                expect=200,
                scopes=["passport:read"],
            )

    def professional_licence(self) -> None:
        c = self.citizen
        print("\nProfessional licence: fee, payment, the licence PDF, LicenceIssued")
        self.step(
            "Look up the fee (a public method: no token)",
            "POST",
            "/v1/fees:calculate",
            expect=200,
            scopes=None,
            json_body={"licenceType": c.licence_type},
        )
        key = f"demo-{time.time_ns()}"
        request = {"citizenId": c.citizen_id, "licenceType": c.licence_type, "idempotencyKey": key}
        issued = self.step(
            "Apply for the licence",
            "POST",
            "/v1/licences:apply",
            expect=200,
            scopes=["licences:apply"],
            json_body=request,
        )
        if issued.status != 200:
            return
        licence = issued.json()
        self.report.cases[licence["licenceId"]] = issued.trace_id
        again = self.step(
            "The same application again (same idempotency key): the same licence, no charge",
            "POST",
            "/v1/licences:apply",
            expect=200,
            scopes=["licences:apply"],
            json_body=request,
        )
        if again.status == 200 and again.json() != licence:
            self.report.fail("the same idempotency key answered another licence")
        pdf = self.step(
            "Fetch the licence PDF from documents",
            "GET",
            f"/v1/documents/{licence['documentId']}",
            expect=200,
            scopes=["documents:read"],
            show=False,
        )
        kind = pdf.headers.get("content-type", "")
        print(f"    {len(pdf.body)} bytes of {kind}, starts {pdf.body[:8]!r}")
        if pdf.status == 200 and not pdf.body.startswith(b"%PDF-"):
            self.report.fail("the licence document is not a PDF")

    def identity_report(self) -> None:
        print("\nIdentity report: report asks identity through the mesh")
        answer = self.step(
            "Ask for an identity check report",
            "POST",
            "/v1/reports/identity-check",
            expect=200,
            scopes=["reports:create"],
            json_body={"id": self.citizen.citizen_id},
        )
        expected = f"ID {self.citizen.citizen_id} is verified"
        if answer.status == 200 and answer.json().get("report") != expected:
            self.report.fail(f"report said {answer.json()!r}, not {expected!r}")

    # -- what the events did -----------------------------------------------------------------

    async def delivered(self, timeout: float = 20.0) -> None:
        """Wait until notify and audit recorded every case, then print what they hold."""
        c = self.citizen
        print("\nEvents delivered (notify and audit consume them from NATS)")
        cases = dict(self.report.cases)
        # A licence applied twice is one event: one notification per case.
        deadline = time.monotonic() + timeout
        while True:
            listed = self.rest.call(
                "GET",
                f"/v1/notifications?applicantId={c.citizen_id}",
                scopes=["notifications:read"],
            )
            notes = listed.json().get("notifications", []) if listed.status == 200 else []
            trails = {
                case: self.rest.call(
                    "GET", f"/v1/audit/entries?subject={case}", scopes=["audit:read"]
                )
                for case in cases
            }
            audited = all(t.status == 200 and t.json().get("entries") for t in trails.values())
            if len(notes) >= len(cases) and audited:
                break
            if time.monotonic() > deadline:
                self.report.fail(
                    f"after {timeout:.0f} s: {len(notes)} notifications for {len(cases)} cases, "
                    f"audit trails {[case for case, t in trails.items() if t.status == 200]}"
                )
                break
            await asyncio.sleep(0.2)
        print(f"  notifications for {c.citizen_id}: {len(notes)}")
        for note in notes:
            print(f"    - {note.get('subject', '')}: {note.get('body', '')}")
        print("  audit trail of each case (event, source, trace id of the request that caused it)")
        for case, request_trace in cases.items():
            entries = trails[case].json().get("entries", []) if trails[case].status == 200 else []
            print(f"    {case} (request trace {request_trace})")
            for entry in entries:
                same = "same trace" if entry.get("traceId") == request_trace else "OTHER TRACE"
                print(
                    f"      #{entry.get('sequence')} {entry.get('eventType')} from "
                    f"{entry.get('source')}, trace {entry.get('traceId')} ({same})"
                )
                if entry.get("traceId") != request_trace:
                    self.report.fail(f"audit entry of {case} has another trace than its request")

    # -- failure paths -----------------------------------------------------------------------

    def failures(self) -> None:
        c = self.citizen
        print("\nFailure paths: each refused with the right status, nothing half-written")
        self.step(
            "A declined payment issues no licence",
            "POST",
            "/v1/licences:apply",
            expect=400,
            scopes=["licences:apply"],
            subject=c.declined_payer,
            json_body={
                "citizenId": c.declined_payer,
                "licenceType": c.licence_type,
                "idempotencyKey": f"declined-{time.time_ns()}",
            },
        )
        photo = self.rest.call(
            "POST",
            f"/v1/documents?owner={c.lapsed_citizen_id}&kind=PHOTO",
            scopes=["documents:write"],
            subject=c.lapsed_citizen_id,
            raw=PNG,
            content_type="image/png",
        )
        photo_id = photo.json().get("documentId", "") if photo.status == 200 else "none"
        self.step(
            "An ineligible renewal (passport expired too long ago): 400 with the failed rule",
            "POST",
            "/v1/passport/renewals",
            expect=400,
            scopes=["passport:renew"],
            subject=c.lapsed_citizen_id,
            json_body={
                "citizenId": c.lapsed_citizen_id,
                "passportNumber": c.lapsed_passport_number,
                "photoDocumentId": photo_id,
            },
        )
        self.step(
            "Another citizen's token applies in this citizen's name: 403",
            "POST",
            "/v1/housing/applications",
            expect=403,
            scopes=["housing:apply"],
            subject=c.lapsed_citizen_id,
            json_body={
                "citizenId": c.citizen_id,
                "annualIncomePence": "100",
                "householdSize": 1,
                "residenceMonths": 12,
                "documentIds": ["any"],
            },
        )
        if self.first_case:
            self.step(
                "Another citizen reads this citizen's case by its id: 404, as for no such id",
                "GET",
                self.first_case,
                expect=404,
                scopes=["housing:read", "passport:read", "licences:read"],
                subject=c.lapsed_citizen_id,
            )
        self.step(
            "A token without the scope: 403 naming it",
            "POST",
            "/v1/housing/applications",
            expect=403,
            scopes=["housing:read"],
            json_body={"citizenId": c.citizen_id},
        )
        self.step(
            "No token: 401",
            "POST",
            "/v1/housing/applications",
            expect=401,
            scopes=None,
            json_body={"citizenId": c.citizen_id},
        )
        self.step(
            "An oversize upload (10 MiB and 1 KiB, over documents' limit): 413",
            "POST",
            f"/v1/documents?owner={c.citizen_id}&kind=PAY_STUB",
            expect=413,
            scopes=["documents:write"],
            raw=b"%PDF-1.4\n" + bytes(10 * 1024 * 1024 + 1024),
            content_type="application/pdf",
        )
        self.step(
            "Malformed JSON: 400 naming the problem",
            "POST",
            "/v1/housing/applications",
            expect=400,
            scopes=["housing:apply"],
            raw=b'{"citizenId": ',
        )


def callable_by(manifests: Iterable[Manifest], caller: str = "gateway") -> set[str]:
    """The gRPC services of `manifests` that `caller` may call at least one method of: those
    whose routes the gateway learns (payments, which only licensing may call, is not one)."""
    return {s for m in manifests for s in m.serves if m.accepts_from(caller, s)}


async def wait_for_routes(gateway: str, services: Iterable[str], timeout: float = 30.0) -> None:
    """Wait until the gateway has learnt every one of `services` (its /readyz lists them): it
    learns each by reflection once an instance registers."""
    wanted = set(services)
    deadline = time.monotonic() + timeout
    while True:
        answer = await asyncio.to_thread(
            Rest(gateway, _no_token).call, "GET", "/readyz", scopes=None
        )
        learnt = set(answer.json().get("services", [])) if answer.status == 200 else set()
        if wanted <= learnt:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"the gateway at {gateway} did not learn {sorted(wanted - learnt)} in {timeout} s"
            )
        await asyncio.sleep(0.05)


def _no_token(subject: str, scopes: Iterable[str]) -> str:
    raise AssertionError("no token is sent to /readyz")


async def run_flows(gateway: str, tokens: TokenMaker, citizen: Citizen | None = None) -> FlowReport:
    """Run the four flows, the deliveries and the failure paths; returns what happened."""
    report = FlowReport()
    flows = Flows(Rest(gateway, tokens), citizen or Citizen(), report)
    for flow in (
        flows.housing_voucher,
        flows.passport_renewal,
        flows.professional_licence,
        flows.identity_report,
    ):
        await asyncio.to_thread(flow)
    await flows.delivered()
    await asyncio.to_thread(flows.failures)
    return report
