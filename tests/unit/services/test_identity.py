"""IdentityService handlers and the citizen register, called directly (no server)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hms.identity.v1 import identity_pb2
from hms_services.identity.service import CITIZEN_ID_FORM, IdentityService
from hms_services.identity.store import SEED, Citizen, CitizenRegister, Standing
from mesh.errors import InvalidArgument
from mesh.testing import FakeContext

# The handler uses nothing of the context, and raises mesh errors rather than abort.
CONTEXT = FakeContext(allow_abort=False)
SEEDED = {c.citizen_id: c for c in SEED}


@pytest.fixture(scope="module")
def service() -> Iterator[IdentityService]:
    with CitizenRegister(":memory:") as register:
        yield IdentityService(register)


async def verify(service: IdentityService, citizen_id: str) -> identity_pb2.VerifyCitizenResponse:
    return await service.VerifyCitizen(
        identity_pb2.VerifyCitizenRequest(citizen_id=citizen_id), CONTEXT
    )


def is_citizen_id(value: str) -> bool:
    """The register's form, said without a regular expression: "C" and 5 to 9 ASCII digits."""
    digits = value[1:]
    return value[:1] == "C" and 5 <= len(digits) <= 9 and all(ch in "0123456789" for ch in digits)


# --- validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("citizen_id", "problem"),
    [
        pytest.param("", "is required", id="missing"),
        pytest.param("   ", "is required", id="blank"),
        pytest.param("\t\n", "is required", id="whitespace"),
        pytest.param("12345", "got '12345'", id="no-letter"),
        pytest.param("c12345", "got 'c12345'", id="lower-case-letter"),
        pytest.param("D12345", "got 'D12345'", id="other-letter"),
        pytest.param("C", "got 'C'", id="letter-only"),
        pytest.param("C1234", "got 'C1234'", id="four-digits"),
        pytest.param("C1234567890", "got 'C1234567890'", id="ten-digits"),
        pytest.param("C12A45", "got 'C12A45'", id="letter-among-digits"),
        pytest.param("C-12345", "got 'C-12345'", id="sign"),
        pytest.param(" C12345", "got ' C12345'", id="leading-space"),
        pytest.param("C12345 ", "got 'C12345 '", id="trailing-space"),
        pytest.param("C12345\n", "got 'C12345\\n'", id="trailing-newline"),
        pytest.param("C\u0661\u0662\u0663\u0664\u0665", "got 'C", id="arabic-indic-digits"),
        pytest.param("C\uff11\uff12\uff13\uff14\uff15", "got 'C", id="full-width-digits"),
        pytest.param("C12345; DROP TABLE citizens", "got 'C12345; DROP", id="injection"),
    ],
)
async def test_verify_rejects_a_malformed_citizen_id(
    service: IdentityService, citizen_id: str, problem: str
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await verify(service, citizen_id)
    [(field, description)] = caught.value.violations
    assert field == "citizen_id"
    assert problem in description
    assert CITIZEN_ID_FORM in description  # says what it should look like
    assert caught.value.message.startswith("citizen_id: ")


async def test_a_huge_citizen_id_is_refused_without_repeating_it(service: IdentityService) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await verify(service, "X" * 1_000_000)
    assert [f for f, _ in caught.value.violations] == ["citizen_id"]
    assert "1000000 characters" in caught.value.message
    assert len(caught.value.message) < 200


# --- answers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("citizen_id", "status"),
    [
        pytest.param("C12345", identity_pb2.VERIFIED, id="C12345-verified"),
        pytest.param("C10001", identity_pb2.VERIFIED, id="C10001-verified"),
        pytest.param("C10002", identity_pb2.VERIFIED, id="C10002-verified"),
        pytest.param("C22222", identity_pb2.SUSPENDED, id="C22222-suspended"),
        pytest.param("C00000", identity_pb2.UNKNOWN, id="five-digits-unknown"),
        pytest.param("C123456789", identity_pb2.UNKNOWN, id="nine-digits-unknown"),
        pytest.param("C012345", identity_pb2.UNKNOWN, id="leading-zero-is-another-id"),
    ],
)
async def test_verify_answers_the_standing(
    service: IdentityService, citizen_id: str, status: identity_pb2.VerificationStatus
) -> None:
    response = await verify(service, citizen_id)
    assert response.status == status
    assert response.citizen_id == citizen_id


@given(citizen_id=st.text(max_size=16))
async def test_any_text_is_refused_or_answered_by_its_form(
    service: IdentityService, citizen_id: str
) -> None:
    if not is_citizen_id(citizen_id):
        with pytest.raises(InvalidArgument) as caught:
            await verify(service, citizen_id)
        assert [f for f, _ in caught.value.violations] == ["citizen_id"]
        return
    response = await verify(service, citizen_id)
    seeded = SEEDED.get(citizen_id)  # random text can spell a seeded id ("C22222" did)
    expected = seeded.standing.value if seeded is not None else "UNKNOWN"
    assert identity_pb2.VerificationStatus.Name(response.status) == expected


@given(citizen_id=st.from_regex(r"C[0-9]{5,9}", fullmatch=True))
async def test_every_well_formed_id_is_answered(service: IdentityService, citizen_id: str) -> None:
    response = await verify(service, citizen_id)
    seeded = SEEDED.get(citizen_id)
    if seeded is None:
        assert response.status == identity_pb2.UNKNOWN
    else:
        assert identity_pb2.VerificationStatus.Name(response.status) == seeded.standing.value
    assert response.citizen_id == citizen_id


# --- the register -------------------------------------------------------------------------


def test_a_new_register_is_seeded(tmp_path: Path) -> None:
    with CitizenRegister(tmp_path / "identity.sqlite3") as register:
        assert [register.get(c.citizen_id) for c in SEED] == list(SEED)
        assert register.get("C00000") is None
    assert {"C12345", "C10001", "C10002", "C22222"} <= set(SEEDED)
    assert SEEDED["C22222"].standing is Standing.SUSPENDED


def test_a_reopened_register_is_not_seeded_again(tmp_path: Path) -> None:
    path = tmp_path / "identity.sqlite3"
    CitizenRegister(path).close()
    # What an operator changed stays changed: no reseeding over it, no row brought back.
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE citizens SET standing = 'SUSPENDED' WHERE citizen_id = 'C10001'")
        conn.execute("DELETE FROM citizens WHERE citizen_id = 'C10002'")
    conn.close()
    with CitizenRegister(path) as register:
        assert register.get("C10001") == Citizen("C10001", "Maya Patel", Standing.SUSPENDED)
        assert register.get("C10002") is None


def test_two_registers_opening_one_new_file_seed_it_once(tmp_path: Path) -> None:
    path = tmp_path / "identity.sqlite3"
    with CitizenRegister(path), CitizenRegister(path) as second:
        assert second.get("C12345") is not None
    with sqlite3.connect(path) as conn:
        (rows,) = conn.execute("SELECT count(*) FROM citizens").fetchone()
    conn.close()
    assert rows == len(SEED)


def test_a_register_of_another_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "identity.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 7")
    conn.close()
    with pytest.raises(RuntimeError, match="schema version 7"):
        CitizenRegister(path)


def test_a_standing_outside_the_vocabulary_is_refused_by_the_file(tmp_path: Path) -> None:
    path = tmp_path / "identity.sqlite3"
    CitizenRegister(path).close()
    with sqlite3.connect(path) as conn, pytest.raises(sqlite3.IntegrityError):
        conn.execute("UPDATE citizens SET standing = 'MAYBE' WHERE citizen_id = 'C12345'")
    conn.close()
