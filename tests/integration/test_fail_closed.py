"""Failing closed, against real processes: each attack of the trust-boundary findings is made,
and shown refused (docs/security.md, "Failing closed").

1. A policy file truncated under a running service (to 0 bytes, to half, between two rules)
   leaves the policy in force; the service logs that it kept it. A service does not start
   with such a file.
2. A service holds the TLS directory; with the CA key in it (as before), it mints any identity
   and is let in as that identity. `mesh certs init` moves the key out, and the same attack
   finds nothing to sign with.
3. Another user on the machine reads keys and plants files in a TLS directory made under
   umask 000 (0777, keys 0644, as before). `mesh certs` makes 0700/0600/0644 whatever the
   umask, fixes what it finds looser and refuses a file another user put there.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from hms.testing.v1 import echo_pb2, echo_pb2_grpc
from hms_tools import certs
from mesh.registry import keys
from mesh.registry.watch import Discovery
from mesh.testing import eventually

from .conftest import ServiceFactory, clean_env, mesh_channel, wait_for_deployment

pytestmark = pytest.mark.integration

OPS = certs.spiffe_id("ops")
NOTIFY = certs.spiffe_id("notify")
ELIGIBILITY = certs.spiffe_id("eligibility")

# An enforcing allow-list: notify may call Echo; eligibility is denied by a rule, ops (and
# everyone else) by default.
ALLOW_LIST = f"""\
mode = "enforce"

[[deny]]
name = "not-eligibility"
callers = ["{ELIGIBILITY}"]
methods = ["*"]

[[allow]]
name = "notify-only"
callers = ["{NOTIFY}"]
methods = ["/hms.testing.v1.EchoService/*"]
"""


async def outcome(instance: keys.Instance, tls_dir: Path, name: str) -> str:
    """One Echo call to `instance` as the certificate `name` in `tls_dir`: OK or the code."""
    async with mesh_channel(instance, tls_dir, name) as channel:
        try:
            await echo_pb2_grpc.EchoServiceStub(channel).Echo(
                echo_pb2.EchoRequest(message="x"), timeout=5
            )
        except grpc.aio.AioRpcError as exc:
            return exc.code().name
    return "OK"


async def who_gets_in(instance: keys.Instance, tls_dir: Path) -> dict[str, str]:
    return {
        name: await outcome(instance, tls_dir, name) for name in ("notify", "eligibility", "ops")
    }


ENFORCED = {"notify": "OK", "eligibility": "PERMISSION_DENIED", "ops": "PERMISSION_DENIED"}


# --- 1. the policy file -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "problem"),
    [
        pytest.param(lambda text: 0, "is empty: a policy must say what it allows", id="0-bytes"),
        pytest.param(
            # Half the file is valid TOML: the deny rule without the allow-list after it.
            lambda text: len(text) // 2,
            "has no allow rules and no default, so it would allow every call no deny rule matches",
            id="half-its-bytes",
        ),
        pytest.param(
            lambda text: text.rindex("methods"),
            'allow[0] "notify-only": methods: is required',
            id="inside-the-allow-rule",
        ),
    ],
)
async def test_a_truncated_policy_keeps_denying(  # noqa: PLR0917 - fixtures
    tls_dir: Path,
    tmp_path: Path,
    start_service: ServiceFactory,
    discovery: Discovery,
    size: object,
    problem: str,
) -> None:
    policy = tmp_path / "authz.toml"
    policy.write_text(ALLOW_LIST)
    proc = start_service("echo", extra=(f"--policy={policy}",))
    instance = await wait_for_deployment(discovery, "echo", proc)
    assert await who_gets_in(instance, tls_dir) == ENFORCED

    assert callable(size)
    os.truncate(policy, size(ALLOW_LIST))  # in place: a writer cut short, a full disk
    kept = (
        "ERROR echo mesh.authz.interceptor: keeping the previous authorization policy: "
        f"{policy}: {problem}"
    )

    async def still_denied_and_kept() -> bool:
        # The file is looked at when a call comes (at most once a second): calls drive it,
        # and each one, until the log says the policy was kept, must still be refused.
        assert await outcome(instance, tls_dir, "ops") == "PERMISSION_DENIED"
        return kept in proc.log_tail(100_000)

    await eventually(still_denied_and_kept, timeout=15, interval=0.05)
    assert await who_gets_in(instance, tls_dir) == ENFORCED  # before the fix: all OK
    assert proc.running


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        pytest.param("", "is empty", id="empty"),
        pytest.param(ALLOW_LIST[: len(ALLOW_LIST) // 2], "has no allow rules", id="half"),
        pytest.param("# to do\n", "has no rules and no default", id="comment-only"),
    ],
)
async def test_a_service_does_not_start_with_a_policy_that_allows_nothing_explicitly(
    tmp_path: Path, start_service: ServiceFactory, content: str, problem: str
) -> None:
    policy = tmp_path / "authz.toml"
    policy.write_text(content)
    proc = start_service("echo", extra=(f"--policy={policy}",))
    async with asyncio.timeout(20):
        status = await proc.exited()
    assert status != 0
    assert (
        f"ERROR echo mesh.authz.interceptor: refusing to start: authorization policy "
        f"{policy}: {problem}"
    ) in proc.log_tail(100_000)


# --- 2. the CA key, out of the TLS directory --------------------------------------------------

# What a compromised service can do with the directory it is given: look for the CA key among
# its files and, if it is there, mint a certificate for any identity (here: ops).
MINT = """
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

tls_dir, out, identity = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
ca = x509.load_pem_x509_certificate((tls_dir / "ca.pem").read_bytes())


def spki(key):
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


ca_key = None
for path in sorted(tls_dir.iterdir()):
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), None)
    except (OSError, ValueError, TypeError):
        continue
    if spki(key.public_key()) == spki(ca.public_key()):
        ca_key = key
if ca_key is None:
    sys.exit(f"no CA key among the files of {tls_dir}")
key = ec.generate_private_key(ec.SECP256R1())
now = datetime.now(UTC)
deployment = identity.rsplit("/", 1)[1]
cert = (
    x509.CertificateBuilder()
    .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "forged")]))
    .issuer_name(ca.subject)
    .public_key(key.public_key())
    .serial_number(x509.random_serial_number())
    .not_valid_before(now - timedelta(minutes=5))
    .not_valid_after(now + timedelta(hours=1))
    .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    .add_extension(
        x509.SubjectAlternativeName(
            [
                x509.UniformResourceIdentifier(identity),
                x509.DNSName(f"{deployment}.svc.hms.local"),
            ]
        ),
        critical=False,
    )
    .sign(ca_key, hashes.SHA256())
)
out.mkdir(exist_ok=True)
(out / "ca.pem").write_bytes((tls_dir / "ca.pem").read_bytes())
(out / f"{deployment}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
(out / f"{deployment}-key.pem").write_bytes(
    key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
)
print(f"minted {identity}")
"""


def mint(tls_dir: Path, out: Path, identity: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", MINT, str(tls_dir), str(out), identity],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def mesh_certs(*argv: str, umask: int = 0o022) -> subprocess.CompletedProcess[str]:
    """The `mesh certs` command as an operator runs it, under `umask`."""
    return subprocess.run(
        [sys.executable, "-m", "hms_tools.cli", "certs", *argv],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env=clean_env(),
        umask=umask,
    )


async def test_a_service_given_the_tls_dir_cannot_mint_an_identity(
    tmp_path: Path, start_service: ServiceFactory, discovery: Discovery
) -> None:
    state = tmp_path / "state"
    tls_dir = state / "tls"
    # A TLS directory as made before the CA key moved out: ca-key.pem among the certificates.
    certs.ensure(tls_dir, ["echo", "notify"], ca_dir=tmp_path / "made-by")
    (tmp_path / "made-by" / certs.CA_KEY).rename(tls_dir / certs.CA_KEY)
    policy = tmp_path / "authz.toml"
    policy.write_text(f'[[allow]]\ncallers = ["{OPS}"]\nmethods = ["*"]\n')  # ops only
    proc = start_service("echo", extra=(f"--tls-dir={tls_dir}", f"--policy={policy}"))
    instance = await wait_for_deployment(discovery, "echo", proc)
    assert await outcome(instance, tls_dir, "notify") == "PERMISSION_DENIED"

    # The attack, before: notify's process, given the TLS directory, becomes ops.
    forged = tmp_path / "forged"
    minted = mint(tls_dir, forged, OPS)
    assert minted.returncode == 0, minted.stderr
    assert await outcome(instance, forged, "ops") == "OK"
    shutil.rmtree(forged)

    # The control: `mesh certs init` moves the key out of what services read.
    init = mesh_certs("init", "--tls-dir", str(tls_dir))
    assert init.returncode == 0, init.stderr
    assert f"moved the CA key {tls_dir}/ca-key.pem to {state}/ca/ca-key.pem" in init.stderr
    assert sorted(p.name for p in tls_dir.iterdir()) == [
        "ca.pem",
        "echo-key.pem",
        "echo.pem",
        "notify-key.pem",
        "notify.pem",
    ]

    # The attack, after: nothing in the TLS directory signs.
    minted = mint(tls_dir, forged, OPS)
    assert minted.returncode == 1
    assert f"no CA key among the files of {tls_dir}" in minted.stderr
    assert not forged.exists()
    assert await outcome(instance, tls_dir, "notify") == "PERMISSION_DENIED"
    # The CA still works for the operator: a certificate issued now is accepted.
    issued = mesh_certs("issue", "ops", "--tls-dir", str(tls_dir))
    assert issued.returncode == 0, issued.stderr
    assert await outcome(instance, tls_dir, "ops") == "OK"


# --- 3. modes, whatever the umask; another user's files ---------------------------------------

NOBODY = 65534

# Another user on the machine: read every key it can, then try to plant a certificate.
PEEK = """
import sys
from pathlib import Path

for directory in map(Path, sys.argv[1:]):
    try:
        paths = sorted(directory.glob("*-key.pem"))
    except OSError:
        paths = []
    for path in paths:
        try:
            path.read_bytes()
            print(f"read {path}")
        except OSError:
            pass
    try:
        (directory / "planted.pem").write_text("an attacker's CA")
        print(f"planted {directory / 'planted.pem'}")
    except OSError:
        pass
"""


def pick_python_for_nobody() -> str:
    """An interpreter user `nobody` may run (this venv may sit in a private home)."""
    for candidate in (sys.executable, "/usr/bin/python3"):
        try:
            probe = subprocess.run(
                [candidate, "-c", "pass"], user=NOBODY, group=NOBODY, extra_groups=[],
                capture_output=True, timeout=30, check=False, cwd="/",
            )  # fmt: skip
        except OSError:
            continue
        if probe.returncode == 0:
            return candidate
    pytest.skip("no Python interpreter that user nobody may run")


def as_nobody(*directories: Path) -> list[str]:
    """What user `nobody` could read or plant in `directories`, as lines."""
    done = subprocess.run(
        [pick_python_for_nobody(), "-c", PEEK, *map(str, directories)],
        user=NOBODY, group=NOBODY, extra_groups=[],
        capture_output=True, text=True, timeout=30, check=True, cwd="/",
    )  # fmt: skip
    return done.stdout.splitlines()


@pytest.fixture
def machine_dir() -> Iterator[Path]:
    """A directory other users may traverse, as a home or project directory is: pytest's
    own temporary directories are private, which would hide what modes inside allow."""
    path = Path(tempfile.mkdtemp(prefix="hms-fail-closed-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path)


def modes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): f"{stat.S_IMODE(p.stat().st_mode):04o}"
        for p in sorted(root.rglob("*"))
    }


SAFE = {
    ".mesh": "0700",
    ".mesh/ca": "0700",
    ".mesh/ca/ca-key.pem": "0600",
    ".mesh/tls": "0700",
    ".mesh/tls/ca.pem": "0644",
    ".mesh/tls/notify-key.pem": "0600",
    ".mesh/tls/notify.pem": "0644",
}


def test_mesh_certs_under_umask_000_makes_private_directories_and_keys(tmp_path: Path) -> None:
    tls_dir = tmp_path / ".mesh" / "tls"
    for argv in (("init",), ("issue", "notify")):
        done = mesh_certs(*argv, "--tls-dir", str(tls_dir), umask=0o000)
        assert done.returncode == 0, done.stderr
    assert modes(tmp_path) == SAFE


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")


@needs_root
def test_another_user_can_read_nothing_of_a_tls_dir_made_under_umask_000(
    machine_dir: Path,
) -> None:
    tls_dir = machine_dir / ".mesh" / "tls"
    for argv in (("init",), ("issue", "notify")):
        done = mesh_certs(*argv, "--tls-dir", str(tls_dir), umask=0o000)
        assert done.returncode == 0, done.stderr
    assert as_nobody(tls_dir, machine_dir / ".mesh" / "ca") == []


@needs_root
def test_a_loose_tls_dir_from_before_is_fixed_and_a_planted_file_refused(
    machine_dir: Path,
) -> None:
    # As `mesh certs init` left it under umask 000 before: everything 0777/0644, the CA key
    # among the certificates.
    state = machine_dir / ".mesh"
    tls_dir, ca_dir = state / "tls", state / "ca"
    certs.ensure(tls_dir, ["notify"], ca_dir=machine_dir / "made-by")
    (machine_dir / "made-by" / certs.CA_KEY).rename(tls_dir / certs.CA_KEY)
    shutil.rmtree(machine_dir / "made-by")
    for path in (state, tls_dir):
        path.chmod(0o777)
    for path in tls_dir.iterdir():
        path.chmod(0o644)

    # The attack, before: another user reads the CA key and plants a file.
    assert as_nobody(tls_dir) == [
        f"read {tls_dir}/ca-key.pem",
        f"read {tls_dir}/notify-key.pem",
        f"planted {tls_dir}/planted.pem",
    ]

    # `mesh certs init` refuses to go on with another user's file among its own...
    refused = mesh_certs("init", "--tls-dir", str(tls_dir))
    assert refused.returncode == 2
    assert (
        f"mesh certs: {tls_dir}/planted.pem (certificate) belongs to uid {NOBODY}, not to this "
        "user (uid 0): another user can read or replace it, so it is refused"
    ) in refused.stderr
    (tls_dir / "planted.pem").unlink()  # what the operator does

    # ...and once it is gone, moves the key out and tightens every mode, saying so.
    fixed = mesh_certs("init", "--tls-dir", str(tls_dir))
    assert fixed.returncode == 0, fixed.stderr
    for line in (
        f"{state} is writable by other users (mode 0777)",
        f"{tls_dir} was mode 0777, now 0700",
        f"moved the CA key {tls_dir}/ca-key.pem to {ca_dir}/ca-key.pem",
        f"{tls_dir}/notify-key.pem was mode 0644, now 0600",
    ):
        assert line in fixed.stderr
    assert "CA already exists" in fixed.stdout
    assert {k: v for k, v in modes(machine_dir).items() if k != ".mesh"} == {
        k: v for k, v in SAFE.items() if k != ".mesh"
    }

    # The attack, after: nothing to read, nowhere to plant.
    assert as_nobody(tls_dir, ca_dir) == []
