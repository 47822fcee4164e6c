"""`mesh certs k8s-secrets` (tools/k8s_secrets.py): a kubernetes.io/tls Secret per identity of
the cluster, from the local CA; the servers' certificates name their in-cluster DNS names; the
CA key never leaves its directory; a second run gives the same certificates."""

from __future__ import annotations

import base64
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from hms_tools import certs, deploy, k8s
from hms_tools.cli import main
from hms_tools.contracts import REPO
from hms_tools.manifest import manifest_paths

SERVICES = sorted(path.parent.name for path in manifest_paths(REPO / "services"))
IDENTITIES = [*SERVICES, "gateway", "ops", "root", "etcd", "nats"]


def run(tmp_path: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> list[dict[str, Any]]:
    argv = ["certs", "k8s-secrets", "--tls-dir", str(tmp_path / "tls"), *extra]
    assert main(argv) == 0
    return [o for o in yaml.safe_load_all(capsys.readouterr().out) if o]


def decoded(secret: dict[str, Any], key: str) -> bytes:
    return base64.b64decode(secret["data"][key])


def sans(cert: x509.Certificate) -> tuple[list[str], list[str]]:
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return ext.get_values_for_type(x509.DNSName), ext.get_values_for_type(
        x509.UniformResourceIdentifier
    )


@pytest.fixture
def secrets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, dict[str, Any]]:
    found = run(tmp_path, capsys, "--namespace", "citizens")
    return {s["metadata"]["name"]: s for s in found}


def test_one_tls_secret_per_identity(secrets: dict[str, dict[str, Any]]) -> None:
    assert list(secrets) == [f"{n}-tls" for n in IDENTITIES]
    assert set(k8s.identities([])) <= set(IDENTITIES)
    for secret in secrets.values():
        assert secret["type"] == "kubernetes.io/tls"
        assert secret["metadata"]["namespace"] == "citizens"
        assert set(secret["data"]) == {"tls.crt", "tls.key", "ca.crt"}


def test_every_secret_passes_the_kubernetes_schema(secrets: dict[str, dict[str, Any]]) -> None:
    import kubernetes_validate

    for secret in secrets.values():
        kubernetes_validate.validate(secret, "1.30.0", strict=True)


def test_the_secret_keys_are_what_the_pods_mount(secrets: dict[str, dict[str, Any]]) -> None:
    items = deploy.tls_volume("fees")["secret"]["items"]
    assert {i["key"] for i in items} == set(secrets["fees-tls"]["data"])


@pytest.mark.parametrize("name", IDENTITIES)
def test_each_certificate_is_its_identity_signed_by_the_ca(
    name: str, secrets: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    secret = secrets[f"{name}-tls"]
    cert = x509.load_pem_x509_certificate(decoded(secret, "tls.crt"))
    ca = x509.load_pem_x509_certificate(decoded(secret, "ca.crt"))
    assert decoded(secret, "ca.crt") == (tmp_path / "tls" / certs.CA_CERT).read_bytes()
    cert.verify_directly_issued_by(ca)
    # etcd knows a client by its CN; NATS by its SPIFFE ID.
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == name
    dns, uris = sans(cert)
    assert uris == [f"spiffe://hms.local/svc/{name}"]
    key = serialization.load_pem_private_key(decoded(secret, "tls.key"), password=None)
    assert key.public_key() == cert.public_key()
    servers = k8s.server_hosts("citizens")
    assert set(servers.get(name, [])) <= set(dns)


@pytest.mark.parametrize(
    ("name", "host"),
    [
        ("etcd", "etcd"),
        ("etcd", "etcd.citizens.svc"),
        ("etcd", "etcd-0.etcd-peers.citizens.svc"),
        ("etcd", "etcd-2.etcd-peers.citizens.svc"),
        ("nats", "nats"),
        ("nats", "nats-1.nats-peers"),
        ("nats", "nats-2.nats-peers.citizens.svc.cluster.local"),
    ],
)
def test_the_servers_answer_for_their_in_cluster_names(
    name: str, host: str, secrets: dict[str, dict[str, Any]]
) -> None:
    dns, _ = sans(x509.load_pem_x509_certificate(decoded(secrets[f"{name}-tls"], "tls.crt")))
    assert host in dns
    # A client's certificate names none of them: it cannot pass for a server.
    fees, _ = sans(x509.load_pem_x509_certificate(decoded(secrets["fees-tls"], "tls.crt")))
    assert host not in fees


def test_the_server_names_match_the_rendered_peer_lists() -> None:
    hosts = k8s.server_hosts("hms")
    for member in k8s.etcd_initial_cluster().split(","):
        host = member.split("//")[1].rsplit(":", 1)[0].replace("$(POD_NAMESPACE)", "hms")
        assert host in hosts["etcd"]
    for route in k8s.nats_routes():
        assert route.split("//")[1].rsplit(":", 1)[0] in hosts["nats"]


def test_the_ca_key_is_never_printed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["certs", "k8s-secrets", "--tls-dir", str(tmp_path / "tls")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    ca_key = (tmp_path / "ca" / certs.CA_KEY).read_bytes()
    body = b"".join(line for line in ca_key.splitlines() if not line.startswith(b"-----"))
    assert body.decode() not in out
    assert base64.b64encode(ca_key).decode() not in out
    assert "PRIVATE KEY" not in out  # every key is in base64 data, none in clear
    assert not (tmp_path / "tls" / certs.CA_KEY).exists()


def test_a_second_run_gives_the_same_certificates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = run(tmp_path, capsys)
    second = run(tmp_path, capsys)
    assert first == second
    # Another namespace: the servers' certificates are reissued for its names, no other.
    third = {s["metadata"]["name"]: s for s in run(tmp_path, capsys, "--namespace", "other")}
    before = {s["metadata"]["name"]: s for s in first}
    changed = sorted(n for n in before if before[n]["data"] != third[n]["data"])
    assert changed == ["etcd-tls", "nats-tls"]


def test_out_writes_a_private_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "secrets.yaml"
    out.write_text("old")
    out.chmod(0o644)
    argv = ["certs", "k8s-secrets", "--tls-dir", str(tmp_path / "tls"), "--out", str(out)]
    assert main(argv) == 0
    assert f"wrote {out} ({len(IDENTITIES)} Secrets" in capsys.readouterr().out
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert len([o for o in yaml.safe_load_all(out.read_text()) if o]) == len(IDENTITIES)


def test_a_bad_namespace_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["certs", "k8s-secrets", "--tls-dir", str(tmp_path / "tls"), "--namespace", "Bad_NS"]
    assert main(argv) == 2
    assert "namespace 'Bad_NS'" in capsys.readouterr().err
