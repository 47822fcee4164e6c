"""Every REST route of the platform (docs/platform.md) against every kind of bad input that
applies to it, on one real stack: malformed input, a JSON value of the wrong type, a missing
field, an unknown id, an oversize request, a wrong content type, no token, a token without the
scope. Each answers its status with a `google.rpc.Status` whose message names what was wrong,
and a refused POST writes nothing: no event reaches the stream (proved by a successful request
on the same service afterwards, whose event the outbox relay can only publish after any the
refusal would have written) and, where a GET lists what the route writes, nothing to read.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from hms_tools.flows import PAY_STUB_PDF, PNG, Answer
from hms_tools.stack import STACK_BODY_LIMIT

from .conftest import Platform

pytestmark = pytest.mark.integration

#: documents' own limit on a file (services/documents/service.py).
DOCUMENT_LIMIT = 10 * 1024 * 1024
#: The gateway's request target limit (`--max-request-line`, docs/gateway.md).
REQUEST_LINE_LIMIT = 8192

CITIZEN = "C12345"
PASSPORT = "123456789"
#: A citizen id of the register's form that the register does not hold.
UNKNOWN_CITIZEN = "C99998"
#: Owners no request of this module writes for except the refused ones: their lists stay empty.
QUIET_OWNER = "C70002"
QUIET_APPLICANT = "C70001"

#: google.rpc.Code of each error status (gateway/errors.py, grpc-gateway's table).
CODES = {400: {3, 9}, 401: {16}, 403: {7}, 404: {5}, 413: {8}, 414: {8}, 415: {3}}

MALFORMED_JSON = b'{"citizenId": '
FORM_BODY = b"citizenId=C12345&licenceType=STREET_TRADING"
MISSING = object()  # a field left out of the valid body


@functools.cache
def oversize_json() -> bytes:
    """A well-formed JSON object one byte over the stack's gateway body limit."""
    head, tail = b'{"padding": "', b'"}'
    return head + b"x" * (STACK_BODY_LIMIT + 1 - len(head) - len(tail)) + tail


@dataclass(frozen=True)
class Route:
    """A routed method: a valid request of it, and what its refusals must leave unwritten."""

    method: str
    path: str
    scopes: tuple[str, ...]  # empty: public
    #: A valid JSON body; "{stub}", "{photo}", "{key}" are filled in per request.
    body: Mapping[str, Any] | None = None
    #: A scope of the platform that is not enough for this route.
    other_scope: str = "audit:read"
    #: Its service publishes events: a refusal is followed by a request that publishes.
    publisher: str = ""
    #: A GET that lists what this route writes, which must stay empty after a refusal, and
    #: the scope it needs.
    lists: tuple[str, str] | None = None

    @property
    def name(self) -> str:
        return f"{self.method} {self.path.split('?')[0]}"


IDENTITY = Route("POST", "/v1/identity/verify", ("identity:verify",), {"citizenId": CITIZEN})
UPLOAD = Route(
    "POST",
    f"/v1/documents?owner={QUIET_OWNER}&kind=PAY_STUB",
    ("documents:write",),
    other_scope="documents:read",
    lists=(f"/v1/documents?owner={QUIET_OWNER}", "documents:read"),
)
DOCUMENT = Route("GET", "/v1/documents/{id}", ("documents:read",), other_scope="documents:write")
DOCUMENTS = Route(
    "GET", f"/v1/documents?owner={CITIZEN}", ("documents:read",), other_scope="documents:write"
)
CHECK = Route(
    "POST",
    "/v1/eligibility:check",
    ("eligibility:check",),
    {"applicantId": CITIZEN, "annualIncomePence": "2800000", "householdSize": 2,
     "residenceMonths": 30},
)  # fmt: skip
RULES = Route("GET", "/v1/rules", ())
RULE = Route("GET", "/v1/rules/MAX_INCOME", ())
FEES = Route("POST", "/v1/fees:calculate", (), {"licenceType": "STREET_TRADING"})
APPLY_LICENCE = Route(
    "POST",
    "/v1/licences:apply",
    ("licences:apply",),
    {"citizenId": CITIZEN, "licenceType": "STREET_TRADING", "idempotencyKey": "{key}"},
    other_scope="licences:read",
    publisher="licensing",
)
LICENCE = Route("GET", "/v1/licences/{id}", ("licences:read",), other_scope="licences:apply")
RENEW = Route(
    "POST",
    "/v1/passport/renewals",
    ("passport:renew",),
    {"citizenId": CITIZEN, "passportNumber": PASSPORT, "photoDocumentId": "{photo}"},
    other_scope="passport:read",
    publisher="passport",
)
RENEWAL = Route(
    "GET", "/v1/passport/renewals/{id}", ("passport:read",), other_scope="passport:renew"
)
APPLY_HOUSING = Route(
    "POST",
    "/v1/housing/applications",
    ("housing:apply",),
    {"citizenId": CITIZEN, "annualIncomePence": "2800000", "householdSize": 2,
     "residenceMonths": 30, "documentIds": ["{stub}"]},
    other_scope="housing:read",
    publisher="housing",
)  # fmt: skip
APPLICATION = Route(
    "GET", "/v1/housing/applications/{id}", ("housing:read",), other_scope="housing:apply"
)
REPORT = Route("POST", "/v1/reports/identity-check", ("reports:create",), {"id": CITIZEN})
NOTIFICATIONS = Route(
    "GET",
    f"/v1/notifications?applicantId={CITIZEN}",
    ("notifications:read",),
    other_scope="notifications:send",
)
SEND = Route(
    "POST",
    "/v1/notifications",
    ("notifications:send",),
    {"applicantId": QUIET_APPLICANT, "channel": "CHANNEL_EMAIL", "recipient": "a@example.org",
     "subject": "Your case", "body": "It moved on."},
    other_scope="notifications:read",
    lists=(f"/v1/notifications?applicantId={QUIET_APPLICANT}", "notifications:read"),
)  # fmt: skip
AUDIT = Route(
    "GET", "/v1/audit/entries?subject=lic-1", ("audit:read",), other_scope="reports:create"
)

ROUTES = (IDENTITY, UPLOAD, DOCUMENT, DOCUMENTS, CHECK, RULES, RULE, FEES, APPLY_LICENCE,
          LICENCE, RENEW, RENEWAL, APPLY_HOUSING, APPLICATION, REPORT, NOTIFICATIONS, SEND,
          AUDIT)  # fmt: skip
JSON_POSTS = tuple(r for r in ROUTES if r.body is not None)
PATH_ID_GETS = (DOCUMENT, LICENCE, RENEWAL, APPLICATION)


@dataclass(frozen=True)
class Case:
    """One bad request of a route and what it must answer."""

    route: Route
    kind: str
    expect: int
    #: What the answer's message must contain (the field, the scope, the id, the limit...).
    names: tuple[str, ...] = ()
    path: str | None = None
    #: Fields changed in (or, as MISSING, left out of) the route's valid body.
    changes: Mapping[str, Any] = field(default_factory=dict)
    raw: bytes | Callable[[], bytes] | None = None
    #: None: the route's own (a PDF for an upload, JSON for the rest).
    content_type: str | None = None
    #: The token's scopes: None for no token, "route" for the route's own.
    scopes: tuple[str, ...] | str | None = "route"
    #: For an answer that is not an error: what its JSON must say.
    answers: Mapping[str, Any] | None = None
    label: str = ""

    @property
    def id(self) -> str:
        return f"{self.route.name} {self.kind}{'-' + self.label if self.label else ''}"


def _json_post_cases(route: Route) -> list[Case]:
    """What the gateway refuses of any JSON route before its service sees it."""
    return [
        Case(route, "malformed", 400, ("not JSON", "line 1, column 15"),
             raw=MALFORMED_JSON),
        Case(route, "malformed", 400, ("request body is not valid", "expected a JSON object"),
             raw=b'["not", "an", "object"]', label="array"),
        Case(route, "oversize", 413, ("request body", f"limit of {STACK_BODY_LIMIT} bytes"),
             raw=oversize_json),
        # The gateway reads a JSON route's body as JSON whatever its Content-Type (as
        # grpc-gateway does): a form is refused as a body that is not JSON.
        Case(route, "content-type", 400, ("not JSON", "line 1, column 1"),
             raw=FORM_BODY, content_type="application/x-www-form-urlencoded"),
    ]  # fmt: skip


def _path_id_cases(route: Route, noun: str, field_name: str) -> list[Case]:
    template = route.path
    return [
        Case(route, "malformed", 400, ("malformed percent escape", template.format(id="%zz")),
             path=template.format(id="%zz")),
        Case(route, "missing", 400, (f"{field_name}: is required",),
             path=template.format(id="%20"), label="blank"),
        Case(route, "unknown-id", 404, (f"{noun} 'nope-0001' not found",),
             path=template.format(id="nope-0001")),
        Case(route, "oversize", 414, (f"limit of {REQUEST_LINE_LIMIT} bytes",),
             path=template.format(id="x" * REQUEST_LINE_LIMIT)),
    ]  # fmt: skip


def _gate_cases(route: Route) -> list[Case]:
    """No token, and a token without the route's scope (public routes serve both)."""
    path = route.path.format(id="nope-0001")
    if not route.scopes:
        return [
            Case(route, "no-token", 200, path=path, scopes=None),
            Case(route, "wrong-scope", 200, path=path, scopes=(route.other_scope,)),
        ]
    scope = route.scopes[0]
    return [
        Case(route, "no-token", 401, ("missing authorization header",), path=path, scopes=None),
        Case(route, "wrong-scope", 403, (f"the token lacks scope '{scope}'",), path=path,
             scopes=(route.other_scope,)),
    ]  # fmt: skip


CASES: list[Case] = [
    # POST /v1/identity/verify
    *_json_post_cases(IDENTITY),
    Case(IDENTITY, "wrong-type", 400, ("citizenId: expected a string, got 12345",),
         changes={"citizenId": 12345}),
    Case(IDENTITY, "missing", 400, ("citizen_id: is required",), changes={"citizenId": MISSING}),
    Case(IDENTITY, "malformed", 400, ("citizen_id: must be", "'12345'"),
         changes={"citizenId": "12345"}, label="citizen-id"),
    # The contract answers a citizen the register does not hold: UNKNOWN, not an error.
    Case(IDENTITY, "unknown-id", 200, changes={"citizenId": UNKNOWN_CITIZEN},
         answers={"citizenId": UNKNOWN_CITIZEN, "status": "UNKNOWN"}),
    *_gate_cases(IDENTITY),
    # POST /v1/documents?owner=&kind= (the raw body is the file)
    Case(UPLOAD, "malformed", 400, ("file: the content is not application/pdf", "GIF89a"),
         raw=b"GIF89a not a pdf"),
    Case(UPLOAD, "wrong-type", 400, ("query parameter 'kind'", "'true'"),
         path=f"/v1/documents?owner={QUIET_OWNER}&kind=true"),
    Case(UPLOAD, "missing", 400, ("owner: is required",), path="/v1/documents?kind=PAY_STUB",
         label="owner"),
    Case(UPLOAD, "missing", 400, ("kind: must be one of PAY_STUB, PHOTO, LICENCE",),
         path=f"/v1/documents?owner={QUIET_OWNER}", label="kind"),
    Case(UPLOAD, "missing", 400, ("file: is empty",), raw=b"", label="file"),
    Case(UPLOAD, "unknown-id", 400, ("query parameter 'kind'", "'PASSPORT'"),
         path=f"/v1/documents?owner={QUIET_OWNER}&kind=PASSPORT"),
    Case(UPLOAD, "oversize", 413,
         (f"file: {DOCUMENT_LIMIT + 1} bytes is over the limit of {DOCUMENT_LIMIT} bytes",),
         raw=lambda: b"%PDF-1.4\n" + bytes(DOCUMENT_LIMIT + 1 - 9)),
    Case(UPLOAD, "oversize", 413, (f"limit of {STACK_BODY_LIMIT} bytes",),
         raw=lambda: b"%PDF-1.4\n" + bytes(STACK_BODY_LIMIT + 1 - 9), label="gateway"),
    Case(UPLOAD, "content-type", 415, ("file.content_type", "PAY_STUB", "'text/plain'"),
         raw=b"just text", content_type="text/plain"),
    Case(UPLOAD, "content-type", 415, ("file.content_type", "PHOTO", "'application/pdf'"),
         path=f"/v1/documents?owner={QUIET_OWNER}&kind=PHOTO", label="photo"),
    *_gate_cases(UPLOAD),
    # GET /v1/documents/{document_id}
    *_path_id_cases(DOCUMENT, "document", "document_id"),
    *_gate_cases(DOCUMENT),
    # GET /v1/documents?owner=
    Case(DOCUMENTS, "wrong-type", 400, ("query parameter 'kind'", "'true'"),
         path=f"/v1/documents?owner={CITIZEN}&kind=true"),
    Case(DOCUMENTS, "missing", 400, ("owner: is required",), path="/v1/documents"),
    Case(DOCUMENTS, "unknown-id", 200, path=f"/v1/documents?owner={UNKNOWN_CITIZEN}",
         answers={"documents": []}),
    Case(DOCUMENTS, "oversize", 414, (f"limit of {REQUEST_LINE_LIMIT} bytes",),
         path="/v1/documents?owner=" + "x" * REQUEST_LINE_LIMIT),
    *_gate_cases(DOCUMENTS),
    # POST /v1/eligibility:check
    *_json_post_cases(CHECK),
    Case(CHECK, "wrong-type", 400, ('householdSize: expected an integer', '"two"'),
         changes={"householdSize": "two"}),
    Case(CHECK, "missing", 400, ("applicant_id: is required",),
         changes={"applicantId": MISSING}),
    Case(CHECK, "unknown-id", 400, ("rule_ids[0]: unknown rule 'NOPE'",),
         changes={"ruleIds": ["NOPE"]}),
    *_gate_cases(CHECK),
    # GET /v1/rules (public; nothing to get wrong but its size)
    Case(RULES, "oversize", 414, (f"limit of {REQUEST_LINE_LIMIT} bytes",),
         path="/v1/rules?x=" + "x" * REQUEST_LINE_LIMIT),
    *_gate_cases(RULES),
    # GET /v1/rules/{rule_id} (public)
    Case(RULE, "malformed", 400, ("malformed percent escape", "/v1/rules/%zz"),
         path="/v1/rules/%zz"),
    Case(RULE, "unknown-id", 404, ("rule 'NOPE' not found", "known rules: MAX_INCOME"),
         path="/v1/rules/NOPE"),
    Case(RULE, "oversize", 414, (f"limit of {REQUEST_LINE_LIMIT} bytes",),
         path="/v1/rules/" + "x" * REQUEST_LINE_LIMIT),
    *_gate_cases(RULE),
    # POST /v1/fees:calculate (public)
    *_json_post_cases(FEES),
    Case(FEES, "wrong-type", 400, ("licenceType: expected a string, got 5",),
         changes={"licenceType": 5}),
    Case(FEES, "missing", 400, ("licence_type: is required",),
         changes={"licenceType": MISSING}),
    Case(FEES, "unknown-id", 400, ("licence_type: unknown licence type 'NOPE'",),
         changes={"licenceType": "NOPE"}),
    # JSON sent as text/plain is read as JSON all the same.
    Case(FEES, "content-type", 200, content_type="text/plain", label="json-as-text",
         answers={"licenceType": "STREET_TRADING", "amountPence": "45000"}),
    *_gate_cases(FEES),
    # POST /v1/licences:apply
    *_json_post_cases(APPLY_LICENCE),
    Case(APPLY_LICENCE, "wrong-type", 400, ("licenceType: expected a string, got 7",),
         changes={"licenceType": 7}),
    Case(APPLY_LICENCE, "missing", 400, ("idempotency_key: is required",),
         changes={"idempotencyKey": MISSING}),
    Case(APPLY_LICENCE, "unknown-id", 400, ("licence_type: unknown licence type 'NOPE'",),
         changes={"licenceType": "NOPE"}),
    *_gate_cases(APPLY_LICENCE),
    # GET /v1/licences/{licence_id}
    *_path_id_cases(LICENCE, "licence", "licence_id"),
    *_gate_cases(LICENCE),
    # POST /v1/passport/renewals
    *_json_post_cases(RENEW),
    Case(RENEW, "wrong-type", 400, ("passportNumber: expected a string, got 123456789",),
         changes={"passportNumber": 123456789}),
    Case(RENEW, "missing", 400, ("photo_document_id: is required",),
         changes={"photoDocumentId": MISSING}),
    Case(RENEW, "unknown-id", 400, ("photo_document_id: document 'nope-0001' not found",),
         changes={"photoDocumentId": "nope-0001"}, label="photo"),
    Case(RENEW, "unknown-id", 404, (f"citizen '{UNKNOWN_CITIZEN}' not found",),
         changes={"citizenId": UNKNOWN_CITIZEN}, label="citizen"),
    *_gate_cases(RENEW),
    # GET /v1/passport/renewals/{renewal_id}
    *_path_id_cases(RENEWAL, "renewal", "renewal_id"),
    *_gate_cases(RENEWAL),
    # POST /v1/housing/applications
    *_json_post_cases(APPLY_HOUSING),
    Case(APPLY_HOUSING, "wrong-type", 400, ("annualIncomePence: expected an integer", '"lots"'),
         changes={"annualIncomePence": "lots"}),
    Case(APPLY_HOUSING, "missing", 400, ("citizen_id: is required",),
         changes={"citizenId": MISSING}),
    # No pay stub named: the contract refuses it (FAILED_PRECONDITION, 400) and keeps no row.
    Case(APPLY_HOUSING, "missing", 400, ("document_ids", "at least one PAY_STUB"),
         changes={"documentIds": MISSING}, label="pay-stub"),
    Case(APPLY_HOUSING, "unknown-id", 400, ("document_ids[0]: document 'nope-0001' not found",),
         changes={"documentIds": ["nope-0001"]}),
    *_gate_cases(APPLY_HOUSING),
    # GET /v1/housing/applications/{application_id}
    *_path_id_cases(APPLICATION, "application", "application_id"),
    *_gate_cases(APPLICATION),
    # POST /v1/reports/identity-check
    *_json_post_cases(REPORT),
    Case(REPORT, "wrong-type", 400, ("id: expected a string, got 12345",),
         changes={"id": 12345}),
    Case(REPORT, "missing", 400, ("id: is required",), changes={"id": MISSING}),
    # The contract reports a citizen the register does not hold, as unknown.
    Case(REPORT, "unknown-id", 200, changes={"id": UNKNOWN_CITIZEN},
         answers={"report": f"ID {UNKNOWN_CITIZEN} is unknown"}),
    *_gate_cases(REPORT),
    # GET /v1/notifications?applicantId=
    Case(NOTIFICATIONS, "malformed", 400, ("page_token: is malformed",),
         path="/v1/notifications?pageToken=zzz"),
    Case(NOTIFICATIONS, "wrong-type", 400, ("query parameter 'pageSize'", "'abc'",
                                            "expected an integer"),
         path="/v1/notifications?pageSize=abc"),
    Case(NOTIFICATIONS, "unknown-id", 200,
         path=f"/v1/notifications?applicantId={UNKNOWN_CITIZEN}",
         answers={"notifications": [], "nextPageToken": ""}),
    Case(NOTIFICATIONS, "oversize", 414, (f"limit of {REQUEST_LINE_LIMIT} bytes",),
         path="/v1/notifications?applicantId=" + "x" * REQUEST_LINE_LIMIT),
    *_gate_cases(NOTIFICATIONS),
    # POST /v1/notifications
    *_json_post_cases(SEND),
    Case(SEND, "wrong-type", 400, ("channel: expected one of CHANNEL_EMAIL", "got true"),
         changes={"channel": True}),
    Case(SEND, "missing", 400, ("recipient: is required",), changes={"recipient": MISSING}),
    # The gateway drops an enum name it does not know (grpc-gateway's DiscardUnknown): the
    # service sees no channel and names the field.
    Case(SEND, "unknown-id", 400, ("channel: must be one of CHANNEL_EMAIL",),
         changes={"channel": "CHANNEL_FAX"}),
    *_gate_cases(SEND),
    # GET /v1/audit/entries?subject=
    Case(AUDIT, "missing", 400, ("subject: is required",), path="/v1/audit/entries"),
    Case(AUDIT, "unknown-id", 200, path="/v1/audit/entries?subject=nope-0001",
         answers={"entries": []}),
    Case(AUDIT, "oversize", 414, (f"limit of {REQUEST_LINE_LIMIT} bytes",),
         path="/v1/audit/entries?subject=" + "x" * REQUEST_LINE_LIMIT),
    *_gate_cases(AUDIT),
]  # fmt: skip


# -- running a case ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Fixtures:
    """Documents of the citizen that valid bodies name."""

    stub: str
    photo: str


@pytest.fixture(scope="module")
def documents(platform: Platform) -> Fixtures:
    ids = []
    for kind, data, content_type in (("PAY_STUB", PAY_STUB_PDF, "application/pdf"),
                                     ("PHOTO", PNG, "image/png")):  # fmt: skip
        answer = platform.call(
            "POST",
            f"/v1/documents?owner={CITIZEN}&kind={kind}",
            scopes=["documents:write"],
            raw=data,
            content_type=content_type,
        )
        assert answer.status == 200, answer.body
        ids.append(answer.json()["documentId"])
    return Fixtures(*ids)


def _filled(value: Any, fixtures: Fixtures, key: str) -> Any:
    """`value` with its placeholders filled in."""
    if isinstance(value, str):
        return value.format(stub=fixtures.stub, photo=fixtures.photo, key=key)
    if isinstance(value, list):
        return [_filled(v, fixtures, key) for v in value]
    if isinstance(value, dict):
        return {k: _filled(v, fixtures, key) for k, v in value.items()}
    return value


def _body(case: Case, fixtures: Fixtures, key: str) -> Any:
    if case.route.body is None:
        return None
    body = dict(case.route.body)
    for name, value in case.changes.items():
        if value is MISSING:
            body.pop(name, None)
        else:
            body[name] = value
    return _filled(body, fixtures, key)


def _send(platform: Platform, case: Case, fixtures: Fixtures, key: str) -> Answer:
    route = case.route
    scopes = route.scopes if case.scopes == "route" else case.scopes
    assert not isinstance(scopes, str)
    path = case.path or route.path.format(id="nope-0001")
    raw = case.raw() if callable(case.raw) else case.raw
    content_type = case.content_type or "application/json"
    if route is UPLOAD:
        raw = PAY_STUB_PDF if raw is None else raw
        content_type = case.content_type or "application/pdf"
    if raw is None and route.body is not None:
        body = _body(case, fixtures, key)
        return platform.call(
            route.method, path, scopes=scopes, json_body=body, content_type=content_type
        )
    return platform.call(route.method, path, scopes=scopes, raw=raw, content_type=content_type)


def _succeed(
    platform: Platform, route: Route, fixtures: Fixtures, key: str
) -> set[tuple[str, str]]:
    """A valid request of `route` (its idempotency key `key`); the events it must publish,
    as (type, aggregate)."""
    body = _filled(dict(route.body or {}), fixtures, key)
    answer = platform.call(route.method, route.path, scopes=route.scopes, json_body=body)
    assert answer.status == 200, f"the valid request after the refusal: {answer.body!r}"
    done = answer.json()
    if route is APPLY_HOUSING:
        return {("hms.housing.v1.VoucherSubmitted", done["applicationId"])}
    if route is RENEW:
        return {("hms.passport.v1.RenewalSubmitted", done["renewalId"])}
    if route is APPLY_LICENCE:
        licence = done["licenceId"]  # the payment's aggregate is its reference, the licence
        return {("hms.payments.v1.PaymentCaptured", licence),
                ("hms.licensing.v1.LicenceIssued", licence)}  # fmt: skip
    raise AssertionError(f"{route.name} publishes nothing")


def _assert_nothing_written(
    platform: Platform, case: Case, fixtures: Fixtures, key: str, before: int
) -> None:
    route = case.route
    if route.publisher:
        # The same idempotency key (for a licence) must still be free, and the only events
        # after the refusal must be those of this valid request.
        expected = _succeed(platform, route, fixtures, key)
        events = platform.wait_for_events(before, expected)
        stray = [e for e in events if (e.type, e.aggregate) not in expected]
        assert not stray, f"{case.id} was refused, yet published {stray}"
    else:
        # No outbox: whatever it wrote would be in the stream (or its list) already.
        assert platform.events_after(before) == [], f"{case.id} was refused, yet published"
    if route.lists is not None:
        path, scope = route.lists
        listed = platform.call("GET", path, scopes=[scope])
        assert listed.status == 200, listed.body
        assert not any(v for v in listed.json().values() if isinstance(v, list)), listed.body


def _assert_error(answer: Answer, case: Case) -> None:
    error = answer.json()
    assert error["code"] in CODES[case.expect], error
    for name in case.names:
        assert name in error["message"], f"{name!r} not in {error['message']!r}"
    challenge = answer.headers.get("www-authenticate", "")
    if case.expect == 401:
        assert challenge.startswith('Bearer realm="hms"'), answer.headers
    if case.expect == 403:
        assert f'scope="{case.route.scopes[0]}"' in challenge, answer.headers


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_answers_its_status_naming_the_problem(
    platform: Platform, documents: Fixtures, case: Case
) -> None:
    key = f"refused-{uuid.uuid4().hex}"
    before = platform.events_last_sequence() if case.route.method == "POST" else 0
    answer = _send(platform, case, documents, key)
    assert answer.status == case.expect, f"{case.id}: {answer.status} {answer.body[:300]!r}"
    if case.expect >= 400:
        _assert_error(answer, case)
    else:
        assert case.answers is None or answer.json() == case.answers, answer.body
    if case.route.method == "POST":
        _assert_nothing_written(platform, case, documents, key, before)


def test_every_routed_method_has_each_kind_that_applies() -> None:
    """The table covers every route of docs/platform.md with the gate, and every JSON route
    with each kind of bad body; an unknown id wherever a route takes one."""
    kinds: dict[str, set[str]] = {}
    for case in CASES:
        kinds.setdefault(case.route.name, set()).add(case.kind)
    assert set(kinds) == {route.name for route in ROUTES}
    for route in ROUTES:
        assert {"no-token", "wrong-scope"} <= kinds[route.name], route.name
    for route in JSON_POSTS:
        wanted = {"malformed", "wrong-type", "missing", "unknown-id", "oversize", "content-type"}
        assert wanted <= kinds[route.name], route.name
    for route in PATH_ID_GETS:
        assert {"malformed", "missing", "unknown-id", "oversize"} <= kinds[route.name]


def test_a_malformed_escape_in_the_query_is_refused(platform: Platform) -> None:
    answer = platform.call("GET", "/v1/documents?owner=%zz", scopes=["documents:read"])
    assert answer.status == 400, answer.body
    assert "owner" in answer.json()["message"]
