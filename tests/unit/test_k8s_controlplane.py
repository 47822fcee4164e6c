"""`mesh controlplane init` (tools/cli/controlplane.py), what the Job controlplane-init runs:
the policy JSON `mesh k8s render` writes reads back as the same etcd roles and users; run
against a real secured etcd and nats-server here (loopback), it turns etcd's authentication on
with the policy's roles and creates the streams, and a second run changes nothing."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import grpc
import pytest
import yaml
from aetcd import rpc

from hms_tools import k8s
from hms_tools.cli import main
from hms_tools.cli.controlplane import etcd_target
from hms_tools.contracts import REPO, Contracts, default_descriptor_set
from hms_tools.controlplane import ADMIN_IDENTITY, ControlPlane
from hms_tools.devstack import EtcdProcess, ManagedProcess, NatsProcess
from hms_tools.manifest import load_manifests
from mesh.controlplane import ClientTls, NatsAccess
from mesh.tls import TlsFiles

MANIFESTS = load_manifests(REPO / "services", Contracts.load(default_descriptor_set()))
POLICY = k8s.policy_for_manifests(MANIFESTS.values())


def test_the_policy_json_reads_back_as_the_same_etcd_policy() -> None:
    read = k8s.read_policy(k8s.policy_json(POLICY))
    assert read.etcd_roles() == POLICY.etcd_roles()
    assert read.etcd_users() == POLICY.etcd_users()
    assert read.grants == POLICY.grants
    assert (read.namespace, read.prefix) == ("hms", "hms")


def test_the_committed_configmap_holds_that_policy() -> None:
    path = REPO / "deploy" / "k8s" / "base" / "controlplane-init.yaml"
    (configmap,) = [
        o for o in yaml.safe_load_all(path.read_text()) if o and o["kind"] == "ConfigMap"
    ]
    read = k8s.read_policy(configmap["data"][k8s.CONTROLPLANE_POLICY_FILE])
    assert read.etcd_users() == POLICY.etcd_users()
    # Each deployment registers what its manifest serves, publishes what it publishes.
    grants = {g.deployment: g for g in read.grants}
    assert sorted(grants) == sorted(MANIFESTS)
    for name, manifest in MANIFESTS.items():
        assert grants[name].services == manifest.serves
        assert grants[name].publishes == manifest.publishes


@pytest.mark.parametrize(
    "text",
    ["{}", "[]", "not json", json.dumps({"grants": [{"deployment": "x"}]})],
)
def test_a_policy_that_is_not_one_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a control-plane policy"):
        k8s.read_policy(text)


@pytest.mark.parametrize(
    ("endpoint", "target"),
    [
        ("https://etcd:2379", "etcd:2379"),
        ("https://127.0.0.1:40000", "127.0.0.1:40000"),
        ("etcd:2379", None),
        ("http://etcd:2379", None),
        ("https://etcd:2379/x", None),
    ],
)
def test_etcd_target(endpoint: str, target: str | None) -> None:
    if target is None:
        with pytest.raises(ValueError, match="give https://host:port"):
            etcd_target(endpoint)
    else:
        assert etcd_target(endpoint) == target


@pytest.fixture
def control_plane(tmp_path: Path):
    """A secured etcd whose authentication is still off (as a new cluster's is) and a secured
    nats-server, on loopback."""
    tls_dir = tmp_path / "tls"
    from hms_tools import certs

    certs.ensure(tls_dir, ["fees", "ops"], ca_dir=tmp_path / "ca")
    plane = ControlPlane(tls_dir, POLICY, ca_dir=tmp_path / "ca", own_dir=tmp_path / "cp")
    plane.ensure_certificates()
    etcd = EtcdProcess(tmp_path / "etcd.data", control_plane=plane)
    nats = NatsProcess(tmp_path / "nats.data", control_plane=plane)
    try:
        ManagedProcess.start(etcd)  # not EtcdProcess.start: that applies the policy itself
        nats.start()
        yield plane, etcd, nats
    finally:
        nats.stop()
        etcd.stop()


def auth_enabled(etcd: EtcdProcess, admin: ClientTls) -> bool:
    with grpc.secure_channel(etcd.address, admin.grpc_credentials()) as channel:
        status = rpc.AuthStub(channel).AuthStatus(rpc.AuthStatusRequest(), timeout=5)
    return bool(status.enabled)


def put(etcd: EtcdProcess, who: ClientTls, key: bytes) -> grpc.StatusCode:
    with grpc.secure_channel(etcd.address, who.grpc_credentials()) as channel:
        try:
            rpc.KVStub(channel).Put(rpc.PutRequest(key=key, value=b"x"), timeout=5)
        except grpc.RpcError as exc:
            return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


async def stream_replicas(nats_url: str, admin: ClientTls) -> dict[str, int]:
    import nats

    nc = await nats.connect(nats_url, **NatsAccess(admin).options())
    try:
        js = nc.jetstream()
        return {
            name: (await js.stream_info(name)).config.num_replicas or 1
            for name in ("HMS_EVENTS", "HMS_DLQ")
        }
    finally:
        await nc.close()


@pytest.mark.timeout(90)
def test_init_applies_the_policy_and_makes_the_streams(
    control_plane, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plane, etcd, nats = control_plane
    admin = plane.admin
    fees = ClientTls.of(TlsFiles(plane.tls_dir, "fees"))
    assert not auth_enabled(etcd, admin)
    assert put(etcd, fees, b"/elsewhere") == grpc.StatusCode.OK  # no authentication yet
    policy = tmp_path / "policy.json"
    policy.write_text(k8s.policy_json(POLICY))
    argv = [
        "controlplane",
        "init",
        f"--policy={policy}",
        f"--etcd=https://{etcd.address}",
        f"--nats={nats.url}",
        f"--tls-dir={plane.directory}",
        f"--cert-name={ADMIN_IDENTITY}",
        "--stream-replicas=1",
    ]
    for _ in range(2):  # idempotent: the second run finds everything there
        assert main(argv) == 0, capsys.readouterr().err
        out = capsys.readouterr().out
        assert "authentication on" in out
        assert "stream HMS_EVENTS (1 replicas)" in out
    assert auth_enabled(etcd, admin)
    # fees may write its own instances' keys only; ops only reads.
    served = MANIFESTS["fees"].serves[0]
    own = f"/hms/services/{served}/fees-0-abc".encode()
    assert put(etcd, fees, own) == grpc.StatusCode.OK
    assert put(etcd, fees, b"/elsewhere") == grpc.StatusCode.PERMISSION_DENIED
    ops = ClientTls.of(TlsFiles(plane.tls_dir, "ops"))
    assert put(etcd, ops, own) == grpc.StatusCode.PERMISSION_DENIED
    assert asyncio.run(stream_replicas(nats.url, admin)) == {"HMS_EVENTS": 1, "HMS_DLQ": 1}


def test_init_refuses_a_plaintext_etcd(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policy = tmp_path / "policy.json"
    policy.write_text(k8s.policy_json(POLICY))
    argv = ["controlplane", "init", f"--policy={policy}", "--etcd=etcd:2379"]
    argv += [f"--tls-dir={tmp_path}"]
    assert main(argv) == 2
    assert "--etcd 'etcd:2379': give https://host:port" in capsys.readouterr().err


def test_init_names_a_missing_certificate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = tmp_path / "policy.json"
    policy.write_text(k8s.policy_json(POLICY))
    argv = ["controlplane", "init", f"--policy={policy}", "--etcd=https://etcd:2379"]
    argv += [f"--tls-dir={tmp_path}"]
    assert main(argv) == 2
    assert f"control-plane TLS: CA certificate {tmp_path}/ca.pem is missing" in (
        capsys.readouterr().err
    )
