"""Whose data, through the real platform: a citizen's token acts for that citizen only; staff
(`caseworker`) act for anyone. Scopes say what a token may do, these checks whose data."""

from __future__ import annotations

import pytest

from .conftest import Platform

pytestmark = pytest.mark.integration

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(range(64))
ALICE, BOB = "C10001", "C10003"  # two verified citizens of the seeded register


def _upload(platform: Platform, owner: str, subject: str | None) -> str:
    answer = platform.call(
        "POST",
        f"/v1/documents?owner={owner}&kind=PHOTO",
        scopes=["documents:write"],
        raw=PNG,
        content_type="image/png",
        subject=subject,
    )
    assert answer.status == 200, answer.body
    return str(answer.json()["documentId"])


def test_a_citizen_acts_for_themself_only(platform: Platform) -> None:
    own = _upload(platform, ALICE, ALICE)
    read = platform.call("GET", f"/v1/documents/{own}", scopes=["documents:read"], subject=ALICE)
    assert read.status == 200
    assert read.body == PNG

    # Bob holds the same scopes: he may not upload in Alice's name ...
    refused = platform.call(
        "POST",
        f"/v1/documents?owner={ALICE}&kind=PHOTO",
        scopes=["documents:write"],
        raw=PNG,
        content_type="image/png",
        subject=BOB,
    )
    assert refused.status == 403, refused.body
    assert refused.json()["message"].startswith(f"owner: '{ALICE}' is not the signed-in user")
    # ... nor read her document: as for an id that does not exist.
    hidden = platform.call("GET", f"/v1/documents/{own}", scopes=["documents:read"], subject=BOB)
    assert hidden.status == 404, hidden.body
    assert hidden.json()["message"] == f"document {own!r} not found"
    listed = platform.call(
        "GET", f"/v1/documents?owner={ALICE}", scopes=["documents:read"], subject=BOB
    )
    assert listed.status == 403, listed.body


def test_staff_act_for_any_citizen(platform: Platform) -> None:
    own = _upload(platform, ALICE, None)  # a caseworker uploads for Alice
    read = platform.call("GET", f"/v1/documents/{own}", scopes=["documents:read"])
    assert read.status == 200
    assert read.body == PNG
    report = platform.call(
        "POST", "/v1/reports/identity-check", scopes=["reports:create"], json_body={"id": BOB}
    )
    assert report.json() == {"report": f"ID {BOB} is verified"}


def test_a_citizen_cannot_apply_in_another_citizens_name(platform: Platform) -> None:
    before = platform.events_last_sequence()
    refused = platform.call(
        "POST",
        "/v1/housing/applications",
        scopes=["housing:apply"],
        subject=BOB,
        json_body={
            "citizenId": ALICE,
            "annualIncomePence": "1000000",
            "householdSize": 1,
            "residenceMonths": 24,
            "documentIds": ["anything"],
        },
    )
    assert refused.status == 403, refused.body
    assert "citizen_id" in refused.json()["message"]
    assert platform.events_after(before) == []
