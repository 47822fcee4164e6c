"""`mesh deploy` (tools/deploy.py, tools/cli/deploy.py): every service's objects, rendered from
its manifest, are well formed, say what the manifest says (replicas, drain, resources, state,
who may call), and pass the Kubernetes API's own schemas; the command picks, refuses and
writes as documented; and the rendered container, run here as a kubelet would run it, serves
with the rendered flags and environment while its probes follow the drain."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
import yaml

from hms_tools import certs
from hms_tools.cli import main
from hms_tools.contracts import REPO, Contracts, default_descriptor_set
from hms_tools.deploy import (
    CLOSE_MARGIN,
    DEFAULT_DRAIN_DELAY,
    ETCD_URL,
    GRACE,
    GRPC_PORT,
    NATS_URL,
    POLICY_CONFIGMAP,
    TLS_DIR,
    json_stream,
    probe_command,
    pyyaml_stream,
    render_all,
    render_service,
    termination_grace,
    to_yaml,
)
from hms_tools.manifest import ANY_CALLER, Manifest, State, load_manifests, manifest_paths
from mesh import tls
from mesh.testing import wait_until

NAMES = [path.parent.name for path in manifest_paths(REPO / "services")]
CONTRACTS = Contracts.load(default_descriptor_set())
MANIFESTS = load_manifests(REPO / "services", CONTRACTS)
IMAGE = "registry.example/hms-mesh:1.2.3"
WORKLOADS = ("Deployment", "StatefulSet")


def rendered(manifest: Manifest, namespace: str = "hms") -> dict[str, dict[str, Any]]:
    """One service's objects by kind (each kind once)."""
    objects = render_service(manifest, namespace=namespace, image=IMAGE)
    by_kind = {o["kind"]: o for o in objects}
    assert len(by_kind) == len(objects) == 4
    return by_kind


def workload(manifest: Manifest) -> dict[str, Any]:
    (found,) = (o for kind, o in rendered(manifest).items() if kind in WORKLOADS)
    return found


def container(manifest: Manifest) -> dict[str, Any]:
    (only,) = workload(manifest)["spec"]["template"]["spec"]["containers"]
    return only


def env_of(spec: dict[str, Any]) -> dict[str, Any]:
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in spec["env"]}


def test_there_are_services_to_render() -> None:
    assert len(NAMES) >= 10
    assert sorted(MANIFESTS) == NAMES


# -- every object of every service ------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_every_object_is_typed_named_and_labelled(name: str) -> None:
    manifest = MANIFESTS[name]
    objects = render_service(manifest, namespace="citizens", image=IMAGE)
    kinds = {o["kind"]: o["apiVersion"] for o in objects}
    workload_kind = "StatefulSet" if manifest.state is State.SQLITE else "Deployment"
    assert kinds == {
        workload_kind: "apps/v1",
        "Service": "v1",
        "PodDisruptionBudget": "policy/v1",
        "NetworkPolicy": "networking.k8s.io/v1",
    }
    for obj in objects:
        assert obj["metadata"]["name"] == name
        assert obj["metadata"]["namespace"] == "citizens"
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == name
        assert labels["app.kubernetes.io/version"] == manifest.version
        assert {k: labels[k] for k in manifest.labels} == dict(manifest.labels)


@pytest.mark.parametrize("name", NAMES)
def test_the_workload_runs_the_service_as_the_manifest_says(name: str) -> None:
    manifest = MANIFESTS[name]
    found = workload(manifest)
    pod = found["spec"]["template"]["spec"]
    spec = container(manifest)
    assert found["spec"]["replicas"] == manifest.replicas
    # The selector is a subset of the pods' labels (or Kubernetes refuses the workload).
    selector = found["spec"]["selector"]["matchLabels"]
    assert selector.items() <= found["spec"]["template"]["metadata"]["labels"].items()
    assert spec["image"] == IMAGE
    assert spec["command"] == ["python", "-m", f"hms_services.{name}.main"]
    env = env_of(spec)
    assert env["MESH_ETCD"] == ETCD_URL
    assert env["MESH_NATS"] == NATS_URL
    assert env["MESH_NAMESPACE"] == "hms"
    assert env["MESH_TLS_DIR"] == TLS_DIR
    # The certificate files the service looks for are the Secret's, mounted at TLS_DIR.
    files = tls.TlsFiles(Path(env["MESH_TLS_DIR"]), name)
    mounts = {m["name"]: m for m in spec["volumeMounts"]}
    assert Path(mounts["tls"]["mountPath"]) == files.cert.parent == files.ca.parent
    assert mounts["tls"]["readOnly"] is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == f"{name}-tls"
    # A kubernetes.io/tls Secret's keys, as the files mesh.tls reads.
    items = {i["key"]: i["path"] for i in volumes["tls"]["secret"]["items"]}
    assert items == {
        "tls.crt": files.cert.name,
        "tls.key": files.key.name,
        "ca.crt": files.ca.name,
    }
    assert volumes["policy"]["configMap"]["name"] == POLICY_CONFIGMAP
    policy_dir = mounts["policy"]["mountPath"]
    assert env["MESH_POLICY"].startswith(f"{policy_dir}/")
    assert env["MESH_SERVING"].startswith(f"{policy_dir}/")


@pytest.mark.parametrize("name", NAMES)
def test_the_workload_has_probes_resources_and_the_drain(name: str) -> None:
    manifest = MANIFESTS[name]
    spec = container(manifest)
    pod = workload(manifest)["spec"]["template"]["spec"]
    for probe, want in (
        ("startupProbe", "answers"),
        ("readinessProbe", "serving"),
        ("livenessProbe", "answers"),
    ):
        assert spec[probe]["exec"]["command"] == probe_command(manifest, want)
        assert spec[probe]["timeoutSeconds"] >= 4  # the probe's call waits 3 s
    requests = spec["resources"]["requests"]
    assert requests["cpu"] == (manifest.resources.cpu or "100m")
    assert requests["memory"] == (manifest.resources.memory or "128Mi")
    assert spec["resources"]["limits"] == {"memory": requests["memory"]}
    delay = DEFAULT_DRAIN_DELAY if manifest.drain_delay is None else manifest.drain_delay
    assert f"--drain-delay={delay:g}" in spec["args"]
    assert f"--grace={GRACE:g}" in spec["args"]
    assert spec["lifecycle"]["preStop"] == {"exec": {"command": ["sleep", f"{delay:g}"]}}
    assert pod["terminationGracePeriodSeconds"] >= 2 * delay + GRACE
    assert f"--port={GRPC_PORT}" in spec["args"]
    assert spec["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False


@pytest.mark.parametrize("name", NAMES)
def test_state_is_a_volume_per_replica(name: str) -> None:
    manifest = MANIFESTS[name]
    found = workload(manifest)
    mounts = {m["name"]: m["mountPath"] for m in container(manifest)["volumeMounts"]}
    env = env_of(container(manifest))
    if manifest.state is State.SQLITE:
        assert found["kind"] == "StatefulSet"
        assert found["spec"]["serviceName"] == name
        (claim,) = found["spec"]["volumeClaimTemplates"]
        assert claim["metadata"]["name"] == "data"
        assert env["MESH_DATA_DIR"] == mounts["data"]
    else:
        assert found["kind"] == "Deployment"
        assert "data" not in mounts
        assert "MESH_DATA_DIR" not in env


@pytest.mark.parametrize("name", NAMES)
def test_the_service_is_headless_on_the_grpc_port(name: str) -> None:
    service = rendered(MANIFESTS[name])["Service"]
    assert service["spec"]["clusterIP"] == "None"
    ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
    assert ports["grpc"] == GRPC_PORT


def admitted(policy: dict[str, Any], port: int) -> set[str]:
    """Who a NetworkPolicy lets reach `port`: deployment names, or "*" for the whole mesh."""
    found = set()
    for rule in policy["spec"]["ingress"]:
        if not any(p["port"] == port for p in rule["ports"]):
            continue
        for peer in rule["from"]:
            labels = peer["podSelector"]["matchLabels"]
            assert labels["app.kubernetes.io/part-of"] == "hms-mesh"
            found.add(labels.get("app.kubernetes.io/name", ANY_CALLER))
    return found


@pytest.mark.parametrize("name", NAMES)
def test_the_network_policy_admits_the_accepted_callers_and_the_gateway(name: str) -> None:
    manifest = MANIFESTS[name]
    policy = rendered(manifest)["NetworkPolicy"]
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    assert policy["spec"]["podSelector"] == workload(manifest)["spec"]["selector"]
    accepted = {caller for accept in manifest.accepts for caller in accept.callers}
    assert admitted(policy, GRPC_PORT) == accepted | {"gateway"}


@pytest.mark.parametrize(
    ("accepts_from", "expected"),
    [
        pytest.param([], {"gateway"}, id="nobody: the gateway still reflects"),
        pytest.param([["housing"], ["passport", "ops"]], {"gateway", "housing", "passport", "ops"}),
        pytest.param([["*"]], {"gateway", "*"}, id="any mesh identity"),
        pytest.param([["gateway"]], {"gateway"}, id="the gateway once"),
    ],
)
def test_network_policy_callers_table(accepts_from: list[list[str]], expected: set[str]) -> None:
    manifest = with_accepts(MANIFESTS["fees"], accepts_from)
    assert admitted(rendered(manifest)["NetworkPolicy"], GRPC_PORT) == expected


def with_accepts(manifest: Manifest, accepts_from: list[list[str]]) -> Manifest:
    template = manifest.accepts[0]
    accepts = tuple(dataclasses.replace(template, callers=tuple(c)) for c in accepts_from)
    return dataclasses.replace(manifest, accepts=accepts)


@pytest.mark.parametrize(
    ("replicas", "budget"),
    [(0, 0), (1, 0), (2, 1), (3, 1), (64, 1)],
)
@pytest.mark.parametrize("name", ["fees", "housing"])  # a Deployment and a StatefulSet
def test_replicas_and_their_disruption_budget(name: str, replicas: int, budget: int) -> None:
    manifest = dataclasses.replace(MANIFESTS[name], replicas=replicas)
    objects = rendered(manifest)
    assert workload(manifest)["spec"]["replicas"] == replicas
    pdb = objects["PodDisruptionBudget"]["spec"]
    assert pdb["maxUnavailable"] == budget
    assert pdb["selector"] == workload(manifest)["spec"]["selector"]


@pytest.mark.parametrize(
    ("drain_delay", "seconds"),
    [
        # The preStop sleep (the drain delay), the drain delay again after SIGTERM, the grace.
        (None, 1 + 1 + 10 + CLOSE_MARGIN),
        (0.0, 10 + CLOSE_MARGIN),
        (2.5, 15 + CLOSE_MARGIN),
        (0.4, 11 + CLOSE_MARGIN),
        (120.0, 255),
    ],
)
def test_the_grace_period_covers_the_drain(drain_delay: float | None, seconds: int) -> None:
    assert GRACE == 10.0
    assert CLOSE_MARGIN == 5
    assert termination_grace(dataclasses.replace(MANIFESTS["fees"], drain_delay=drain_delay)) == (
        seconds
    )


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        pytest.param(
            {"labels": {"team": "has space"}}, "labels.team: 'has space' is not", id="value"
        ),
        pytest.param(
            {"labels": {"bad key!": "x"}}, "labels.bad key!: is not a Kubernetes", id="key"
        ),
        pytest.param({"labels": {"x" * 64: "y"}}, "is not a Kubernetes label name", id="long key"),
        pytest.param(
            {"labels": {"app.kubernetes.io/name": "other"}}, "is set by mesh deploy", id="own"
        ),
    ],
)
def test_labels_kubernetes_refuses_are_refused_naming_the_field(
    change: dict[str, Any], problem: str
) -> None:
    labels = MappingProxyType(change["labels"])
    manifest = dataclasses.replace(MANIFESTS["fees"], labels=labels)
    with pytest.raises(ValueError, match=re.escape(problem)):
        render_service(manifest, namespace="hms", image=IMAGE)


def test_a_build_version_is_a_valid_label_and_the_flag_keeps_it_whole() -> None:
    manifest = dataclasses.replace(MANIFESTS["fees"], version="1.2.0+build.7")
    found = workload(manifest)
    assert found["metadata"]["labels"]["app.kubernetes.io/version"] == "1.2.0_build.7"
    assert "--version=1.2.0+build.7" in container(manifest)["args"]


@pytest.mark.parametrize(
    ("namespace", "image"), [("Bad_NS", IMAGE), ("hms", ""), ("hms", "has space:1")]
)
def test_a_bad_namespace_or_image_is_refused(namespace: str, image: str) -> None:
    with pytest.raises(ValueError, match=r"^(namespace|image) "):
        render_service(MANIFESTS["fees"], namespace=namespace, image=image)


# -- the whole platform, against Kubernetes' schemas ------------------------------------------


@pytest.mark.parametrize("version", ["1.29.0", "1.37.0"])
def test_every_object_passes_the_kubernetes_schemas(version: str) -> None:
    import kubernetes_validate

    objects = render_all(MANIFESTS.values(), namespace="hms", image=IMAGE)
    assert len(objects) == 1 + 4 * len(MANIFESTS)
    for obj in objects:
        # strict: an unknown field is an error, as `kubectl apply` would make it one.
        kubernetes_validate.validate(obj, version, strict=True)


def test_the_policy_configmap_holds_the_composed_matrix_and_the_serving_policy() -> None:
    from hms_tools.authz_matrix import compose_policy

    (configmap, *_) = render_all(MANIFESTS.values(), namespace="hms", image=IMAGE)
    assert configmap["kind"] == "ConfigMap"
    assert configmap["metadata"]["name"] == POLICY_CONFIGMAP
    assert configmap["data"]["policy.toml"] == compose_policy(MANIFESTS.values())
    serving = configmap["data"]["serving.toml"]
    for manifest in MANIFESTS.values():
        for service in manifest.serves:
            assert f'"{service}" = ["spiffe://hms.local/svc/{manifest.name}"]' in serving
    mounted = {
        env_of(container(m))[var].rsplit("/", 1)[1]
        for m in MANIFESTS.values()
        for var in ("MESH_POLICY", "MESH_SERVING")
    }
    assert mounted == set(configmap["data"])


@pytest.mark.parametrize("stream", [pyyaml_stream, json_stream], ids=["pyyaml", "json"])
def test_the_yaml_stream_reads_back_as_the_objects(stream: Any) -> None:
    objects = render_all(MANIFESTS.values(), namespace="hms", image=IMAGE)
    text = stream(objects, yaml) if stream is pyyaml_stream else stream(objects)
    assert text.startswith("---\n")
    assert list(yaml.safe_load_all(text)) == objects


def test_multi_line_text_is_written_as_a_literal_block() -> None:
    text = to_yaml(render_all(MANIFESTS.values(), namespace="hms", image=IMAGE))
    assert "policy.toml: |" in text
    assert "\\n" not in text


# -- the command ----------------------------------------------------------------------------


def test_an_unknown_name_exits_2_naming_the_known_ones(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["deploy", "parking"]) == 2
    err = capsys.readouterr().err
    assert "no manifest for 'parking'" in err
    assert f"known: {', '.join(NAMES)}" in err


def test_a_name_or_all_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["deploy"])
    assert exited.value.code == 2
    assert "one of the arguments NAME --all is required" in capsys.readouterr().err


def test_one_service_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["deploy", "payments", "--namespace", "citizens", "--image", IMAGE]) == 0
    objects = list(yaml.safe_load_all(capsys.readouterr().out))
    assert [o["kind"] for o in objects] == [
        "StatefulSet",
        "Service",
        "PodDisruptionBudget",
        "NetworkPolicy",
    ]
    assert objects == render_service(MANIFESTS["payments"], namespace="citizens", image=IMAGE)


def test_all_to_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "k8s"
    assert main(["deploy", "--all", "--out", str(out), "--image", IMAGE]) == 0
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted([f"{POLICY_CONFIGMAP}.yaml", *(f"{n}.yaml" for n in NAMES)])
    assert capsys.readouterr().out.count("wrote ") == len(written)
    read = [o for name in written for o in yaml.safe_load_all((out / name).read_text())]
    expected = render_all(MANIFESTS.values(), namespace="hms", image=IMAGE)
    assert sorted(read, key=repr) == sorted(expected, key=repr)


def test_a_manifest_with_3_replicas_renders_3(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in NAMES:
        (tmp_path / "services" / name).mkdir(parents=True)
        shutil.copy(REPO / "services" / name / "service.toml", tmp_path / "services" / name)
    toml = tmp_path / "services" / "fees" / "service.toml"
    toml.write_text(re.sub(r"(?m)^replicas = \d+$", "replicas = 3", toml.read_text()))
    argv = [
        "deploy",
        "fees",
        "--root",
        str(tmp_path),
        "--descriptor-set",
        str(default_descriptor_set()),
    ]
    assert main(argv) == 0
    by_kind = {o["kind"]: o for o in yaml.safe_load_all(capsys.readouterr().out)}
    assert by_kind["Deployment"]["spec"]["replicas"] == 3
    assert by_kind["PodDisruptionBudget"]["spec"]["maxUnavailable"] == 1


# -- the rendered container, run as a kubelet runs it ------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def expand(arg: str, env: dict[str, str]) -> str:
    """The kubelet's $(VAR) expansion of a container's args."""
    return re.sub(r"\$\((\w+)\)", lambda m: env.get(m[1], m[0]), arg)


class Pod:
    """One rendered container as a process here: the rendered command, args and environment,
    but for what only a cluster has (the pod's IP, etcd, the mounts, a port of its own)."""

    def __init__(self, manifest: Manifest, tmp: Path, port: int, drain_delay: float) -> None:
        spec = container(manifest)
        objects = render_all(MANIFESTS.values(), namespace="hms", image=IMAGE)
        tls_dir, policy_dir = tmp / "tls", tmp / "policy"
        certs.ensure(tls_dir, [manifest.name], ca_dir=tmp / "ca")
        policy_dir.mkdir()
        for key, text in objects[0]["data"].items():
            (policy_dir / key).write_text(text)
        env = {k: v for k, v in env_of(spec).items() if isinstance(v, str)}
        env |= {
            "PATH": os.environ["PATH"],
            "POD_IP": "127.0.0.1",
            "MESH_TLS_DIR": str(tls_dir),
            "MESH_POLICY": str(policy_dir / "policy.toml"),
            "MESH_SERVING": str(policy_dir / "serving.toml"),
            # No control plane here: the service serves unregistered (it says so).
            "MESH_ETCD": "",
            "MESH_NATS": "",
            "MESH_METRICS_PORT": "0",
        }
        self.env, self.port, self.tmp = env, port, tmp
        args = [expand(a, env) for a in spec["args"]]
        args = [self._local(a, drain_delay) for a in args]
        self.argv = [sys.executable, *spec["command"][1:], *args]
        self.manifest = manifest
        self.proc: subprocess.Popen[bytes] | None = None

    def _local(self, arg: str, drain_delay: float) -> str:
        if arg == f"--port={GRPC_PORT}":
            return f"--port={self.port}"
        if arg.startswith("--drain-delay="):
            return f"--drain-delay={drain_delay:g}"
        return arg

    def start(self) -> None:
        with (self.tmp / "service.log").open("wb") as log:
            self.proc = subprocess.Popen(
                self.argv, env=self.env, cwd=self.tmp, stdout=log, stderr=subprocess.STDOUT
            )

    def log(self) -> str:
        return (self.tmp / "service.log").read_text(errors="replace")

    def probe(self, want: str) -> tuple[int, str]:
        """Run the rendered exec probe as the kubelet would: in the container's environment."""
        command = [
            str(self.port) if a == str(GRPC_PORT) else a for a in probe_command(self.manifest, want)
        ]
        done = subprocess.run(
            [sys.executable, *command[1:]],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        return done.returncode, done.stdout + done.stderr

    def probe_until(self, want: str, status: int, deadline: float) -> str:
        last: list[tuple[int, str]] = []

        def answered() -> bool:
            last[:] = [self.probe(want)]
            if status == 0 and self.proc is not None:
                assert self.proc.poll() is None, f"the service exited:\n{self.log()}"
            return last[0][0] == status

        try:
            wait_until(answered, max(deadline - time.monotonic(), 0.0), interval=0.2)
        except AssertionError:
            code, said = last[0] if last else (None, "")
            raise AssertionError(f"{want} probe: {code} {said}\n{self.log()}") from None
        return last[0][1]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def pod(tmp_path: Path) -> Any:
    started = Pod(MANIFESTS["fees"], tmp_path, free_port(), drain_delay=6.0)
    yield started
    started.stop()


@pytest.mark.timeout(90)
def test_the_rendered_container_serves_and_its_probes_follow_the_drain(pod: Pod) -> None:
    code, said = pod.probe("answers")
    assert code != 0  # nothing listens yet
    assert "no answer" in said
    pod.start()
    assert "SERVING" in pod.probe_until("serving", 0, time.monotonic() + 45)
    assert pod.probe("answers")[0] == 0
    assert pod.proc is not None
    pod.proc.send_signal(signal.SIGTERM)
    stopped_at = time.monotonic()
    # Draining: not ready (NOT_SERVING), yet alive, so the kubelet does not kill it.
    said = pod.probe_until("serving", 1, stopped_at + 5)
    assert "NOT_SERVING" in said
    code, said = pod.probe("answers")
    assert (code, said.strip()) == (0, "NOT_SERVING"), pod.log()
    # It exits cleanly within the grace period Kubernetes would give it.
    assert pod.proc.wait(timeout=6.0 + GRACE + CLOSE_MARGIN) == 0, pod.log()
    assert time.monotonic() - stopped_at >= 6.0 - 1  # it served on for the drain delay
