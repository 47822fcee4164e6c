"""`mesh deploy`: Kubernetes objects for a service, rendered from its manifest alone
(services/<name>/service.toml, tools/manifest.py). Pure: manifests in, dicts out, YAML text
last; nothing is read from or sent to a cluster. docs/manifests.md says what is rendered and
why; in short, per service:

- a **StatefulSet** when the manifest keeps state (`state = "sqlite"`: each replica its own
  volume, and never two pods on one SQLite file), else a **Deployment**; the container runs
  `python -m hms_services.<name>.main` with the MESH_* variables `mesh up` would give it,
  pointed at the in-cluster etcd and NATS, its certificate from the kubernetes.io/tls Secret
  `<name>-tls` (`mesh certs k8s-secrets`, or cert-manager) and the policies from the ConfigMap
  `hms-authz-policy`; a preStop sleep of the drain delay before SIGTERM starts the drain;
- a headless **Service**: callers find instances in etcd, never through a virtual IP;
- a **PodDisruptionBudget**: one replica down at a time, none for a single replica;
- a **NetworkPolicy**: the gRPC port open only to the callers the manifest's `[[accepts]]`
  name, and the gateway (it reads every service's descriptors by reflection).

The probes are exec probes running `_PROBE`: a service answers grpc.health.v1 only on its mTLS
port, which wants a client certificate, and the kubelet's own `grpc:` probe speaks neither.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from hms_tools.authz_matrix import compose_policy
from hms_tools.manifest import ANY_CALLER, Manifest, State
from hms_tools.stack import GATEWAY_IDENTITY, serving_toml

__all__ = [
    "CLOSE_MARGIN",
    "DATA_DIR",
    "DEFAULT_DRAIN_DELAY",
    "ETCD_URL",
    "GRACE",
    "GRPC_PORT",
    "METRICS_PORT",
    "NATS_URL",
    "POLICY_CONFIGMAP",
    "POLICY_DIR",
    "TLS_DIR",
    "caller_selector",
    "callers",
    "check_namespace",
    "json_stream",
    "pick",
    "pre_stop_sleep",
    "probe_command",
    "pyyaml_stream",
    "render_all",
    "render_policy",
    "render_service",
    "termination_grace",
    "tls_volume",
    "to_yaml",
]

# -- where things are, in the cluster -------------------------------------------------------

#: The in-cluster control plane (issue #14 runs it): Services named etcd and nats in the same
#: namespace, TLS with the mesh CA, each service its own client certificate.
ETCD_URL = "https://etcd:2379"
NATS_URL = "tls://nats:4222"
#: Fixed container ports (`mesh up` lets each process pick a free one).
GRPC_PORT = 50051
METRICS_PORT = 9090
#: The composed authorization policy and the serving policy, one ConfigMap for every service.
POLICY_CONFIGMAP = "hms-authz-policy"
POLICY_FILE = "policy.toml"
SERVING_FILE = "serving.toml"
#: Mount points: the Secret `<name>-tls`, the ConfigMap, the state volume.
TLS_DIR = "/etc/hms/tls"
POLICY_DIR = "/etc/hms/policy"
DATA_DIR = "/var/lib/hms"
DATA_VOLUME_SIZE = "1Gi"
#: A user of no image's: the container runs as this uid and gid, never root.
RUN_AS = 10001

# -- the drain (mesh/server/host.py) --------------------------------------------------------

#: The runner's defaults (mesh/server/runner.py): serve on after deregistering, then give
#: in-flight calls this long. Both are passed explicitly, so the grace period below holds.
DEFAULT_DRAIN_DELAY = 1.0
GRACE = 10.0
#: After the server stops: the runtime closes subscriptions, outbox relays and connections.
CLOSE_MARGIN = 5

#: What a replica asks for when its manifest says nothing: a pod without requests is the
#: first evicted and is scheduled anywhere.
DEFAULT_CPU = "100m"
DEFAULT_MEMORY = "128Mi"

# -- labels ---------------------------------------------------------------------------------

NAME_LABEL = "app.kubernetes.io/name"
VERSION_LABEL = "app.kubernetes.io/version"
PART_OF_LABEL = "app.kubernetes.io/part-of"
PART_OF = "hms-mesh"
#: Pods allowed to scrape the metrics port, in any namespace (Prometheus, by this label).
SCRAPER_LABEL = "hms.local/metrics-scraper"
_OWN_LABELS = {
    NAME_LABEL,
    VERSION_LABEL,
    PART_OF_LABEL,
    "app.kubernetes.io/component",
    "app.kubernetes.io/managed-by",
}
_LABEL_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*")
_DNS_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")

# -- the probe ------------------------------------------------------------------------------

#: The exec probe's program, run as `python -c _PROBE NAME PORT WANT` inside the container: a
#: health check over mTLS with the pod's own certificate, to the address the service binds
#: (POD_IP). WANT "serving" (readiness) needs SERVING; "answers" (liveness) takes any status,
#: since NOT_SERVING is a drain, not a hang. It prints the status, or why there was none.
_PROBE = """\
import os, sys
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from mesh import tls
from mesh.identity import spiffe_id
name, port, want = sys.argv[1:]
host = os.environ["POD_IP"]
target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
files = tls.TlsFiles(os.environ["MESH_TLS_DIR"], name)
options = tls.channel_options_for(spiffe_id(name))
with grpc.secure_channel(target, tls.channel_credentials(files), options=options) as channel:
    health = health_pb2_grpc.HealthStub(channel)
    try:
        status = health.Check(health_pb2.HealthCheckRequest(), timeout=3).status
    except grpc.RpcError as exc:
        sys.exit(f"no answer from {target}: {exc.code().name} {exc.details()}")
print(health_pb2.HealthCheckResponse.ServingStatus.Name(status))
sys.exit(0 if want == "answers" or status == health_pb2.HealthCheckResponse.SERVING else 1)
"""


def check_namespace(namespace: str) -> str:
    """A Kubernetes namespace's name (a DNS label), or a ValueError saying what is wrong."""
    if not _DNS_LABEL.fullmatch(namespace):
        raise ValueError(
            f"namespace {namespace!r} must be lower-case letters, digits and '-', at most 63"
        )
    return namespace


def pick(manifests: Mapping[str, Manifest], name: str) -> Manifest:
    """The manifest of `name`, or a ValueError naming the ones there are."""
    if name not in manifests:
        known = ", ".join(sorted(manifests)) or "none"
        raise ValueError(f"no manifest for {name!r} (services/{name}/service.toml); known: {known}")
    return manifests[name]


def termination_grace(manifest: Manifest) -> int:
    """Seconds Kubernetes gives a pod from the start of its deletion to SIGKILL: the preStop
    sleep (the drain delay), then after SIGTERM the whole drain (drain delay, then in-flight
    calls' grace), then the runtime's closing."""
    return math.ceil(2 * drain_delay(manifest) + GRACE) + CLOSE_MARGIN


def drain_delay(manifest: Manifest) -> float:
    return DEFAULT_DRAIN_DELAY if manifest.drain_delay is None else manifest.drain_delay


def render_all(
    manifests: Iterable[Manifest], *, namespace: str, image: str
) -> list[dict[str, Any]]:
    """The shared policy ConfigMap, then every service's objects, by name."""
    manifests = sorted(manifests, key=lambda m: m.name)
    objects = [render_policy(manifests, namespace=namespace)]
    for manifest in manifests:
        objects += render_service(manifest, namespace=namespace, image=image)
    return objects


def render_policy(manifests: Iterable[Manifest], *, namespace: str) -> dict[str, Any]:
    """The ConfigMap every service mounts: the authorization policy composed from every
    manifest's [[accepts]] (as `mesh up` writes it) and the serving policy (who may serve
    what: each manifest's `serves`, which `mesh manifest check` holds to the code)."""
    manifests = list(manifests)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": POLICY_CONFIGMAP,
            "namespace": check_namespace(namespace),
            "labels": {PART_OF_LABEL: PART_OF, "app.kubernetes.io/managed-by": "mesh-deploy"},
        },
        "data": {
            POLICY_FILE: compose_policy(manifests),
            SERVING_FILE: serving_toml({m.name: m.serves for m in manifests}),
        },
    }


def render_service(manifest: Manifest, *, namespace: str, image: str) -> list[dict[str, Any]]:
    """The workload, Service, PodDisruptionBudget and NetworkPolicy of one service."""
    check_namespace(namespace)
    if not image or any(c.isspace() for c in image):
        raise ValueError(f"image {image!r} must be a non-empty image reference without spaces")
    return [
        _workload(manifest, namespace, image),
        _service(manifest, namespace),
        _disruption_budget(manifest, namespace),
        _network_policy(manifest, namespace),
    ]


# -- labels ---------------------------------------------------------------------------------


def selector(manifest: Manifest) -> dict[str, str]:
    """What picks a service's pods (immutable on a workload: no version in it)."""
    return {NAME_LABEL: manifest.name, PART_OF_LABEL: PART_OF}


def labels(manifest: Manifest) -> dict[str, str]:
    """Every object's labels: the standard ones, then the manifest's own."""
    found = {
        **selector(manifest),
        # Semantic versioning's build part ('+...') is not allowed in a label value.
        VERSION_LABEL: _label_value(manifest, "version", manifest.version.replace("+", "_")),
        "app.kubernetes.io/component": "service",
        "app.kubernetes.io/managed-by": "mesh-deploy",
    }
    for key, value in manifest.labels.items():
        if key in _OWN_LABELS:
            raise ValueError(f"{manifest.source}: labels.{key}: is set by mesh deploy itself")
        found[_label_key(manifest, key)] = _label_value(manifest, f"labels.{key}", value)
    return found


def _label_key(manifest: Manifest, key: str) -> str:
    prefix, _, name = key.rpartition("/")
    if not _LABEL_NAME.fullmatch(name) or (
        prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.fullmatch(prefix))
    ):
        raise ValueError(
            f"{manifest.source}: labels.{key}: is not a Kubernetes label name ([prefix/]name, "
            "a name of at most 63 letters, digits, '-', '_' or '.')"
        )
    return key


def _label_value(manifest: Manifest, field: str, value: str) -> str:
    if value and not _LABEL_NAME.fullmatch(value):
        raise ValueError(
            f"{manifest.source}: {field}: {value!r} is not a Kubernetes label value (at most 63 "
            "letters, digits, '-', '_' or '.', beginning and ending with a letter or digit)"
        )
    return value


def _metadata(manifest: Manifest, namespace: str) -> dict[str, Any]:
    return {"name": manifest.name, "namespace": namespace, "labels": labels(manifest)}


# -- the workload ---------------------------------------------------------------------------


def _workload(manifest: Manifest, namespace: str, image: str) -> dict[str, Any]:
    stateful = manifest.state is State.SQLITE
    template = {
        "metadata": {
            "labels": labels(manifest),
            "annotations": {"kubernetes.io/description": manifest.description},
        },
        "spec": _pod_spec(manifest, namespace, image),
    }
    spec: dict[str, Any] = {
        "replicas": manifest.replicas,
        "selector": {"matchLabels": selector(manifest)},
    }
    if stateful:
        spec |= {
            "serviceName": manifest.name,
            # Replicas are independent (each its own file): start and stop them together;
            # updates still go one pod at a time.
            "podManagementPolicy": "Parallel",
            "updateStrategy": {"type": "RollingUpdate"},
            "persistentVolumeClaimRetentionPolicy": {
                "whenDeleted": "Retain",
                "whenScaled": "Retain",
            },
            "template": template,
            "volumeClaimTemplates": [
                {
                    "metadata": {"name": "data", "labels": selector(manifest)},
                    "spec": {
                        "accessModes": ["ReadWriteOnce"],
                        "resources": {"requests": {"storage": DATA_VOLUME_SIZE}},
                    },
                }
            ],
        }
    else:
        spec |= {
            # A new pod is ready before an old one drains: capacity never drops.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "template": template,
        }
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet" if stateful else "Deployment",
        "metadata": _metadata(manifest, namespace)
        | {"annotations": {"kubernetes.io/description": manifest.description}},
        "spec": spec,
    }


def _pod_spec(manifest: Manifest, namespace: str, image: str) -> dict[str, Any]:
    volumes: list[dict[str, Any]] = [
        tls_volume(manifest.name),
        {"name": "policy", "configMap": {"name": POLICY_CONFIGMAP}},
        {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
    ]
    return {
        # Services never talk to the Kubernetes API.
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": termination_grace(manifest),
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS,
            "runAsGroup": RUN_AS,
            # The Secret's files and the state volume are the group's to read and write.
            "fsGroup": RUN_AS,
            "fsGroupChangePolicy": "OnRootMismatch",
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [_container(manifest, namespace, image)],
        "volumes": volumes,
    }


def tls_volume(identity: str, volume: str = "tls") -> dict[str, Any]:
    """The Secret ``<identity>-tls`` as a volume: a kubernetes.io/tls Secret (`mesh certs
    k8s-secrets`, or cert-manager's) whose keys tls.crt, tls.key and ca.crt become the files
    mesh.tls.TlsFiles reads, ``<identity>.pem``, ``<identity>-key.pem`` and ``ca.pem``."""
    items = [
        {"key": "tls.crt", "path": f"{identity}.pem"},
        {"key": "tls.key", "path": f"{identity}-key.pem"},
        {"key": "ca.crt", "path": "ca.pem"},
    ]
    return {
        "name": volume,
        "secret": {"secretName": f"{identity}-tls", "defaultMode": 0o440, "items": items},
    }


def pre_stop_sleep(seconds: float) -> dict[str, Any]:
    """A preStop hook that sleeps `seconds` (``sleep`` of the image: coreutils, busybox)."""
    return {"exec": {"command": ["sleep", f"{seconds:g}"]}}


def _container(manifest: Manifest, namespace: str, image: str) -> dict[str, Any]:
    stateful = manifest.state is State.SQLITE
    env: list[dict[str, Any]] = [
        # The service binds and registers this address: callers dial the pod itself.
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "MESH_ETCD", "value": ETCD_URL},
        {"name": "MESH_NATS", "value": NATS_URL},
        {"name": "MESH_NAMESPACE", "value": namespace},
        {"name": "MESH_TLS_DIR", "value": TLS_DIR},
        {"name": "MESH_POLICY", "value": f"{POLICY_DIR}/{POLICY_FILE}"},
        {"name": "MESH_SERVING", "value": f"{POLICY_DIR}/{SERVING_FILE}"},
        {"name": "MESH_METRICS_PORT", "value": str(METRICS_PORT)},
        {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "tls", "mountPath": TLS_DIR, "readOnly": True},
        {"name": "policy", "mountPath": POLICY_DIR, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    if stateful:
        env.append({"name": "MESH_DATA_DIR", "value": DATA_DIR})
        mounts.append({"name": "data", "mountPath": DATA_DIR})
    return {
        "name": manifest.name,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["python", "-m", f"hms_services.{manifest.name}.main"],
        "args": [
            "--host=$(POD_IP)",
            f"--port={GRPC_PORT}",
            f"--version={manifest.version}",
            f"--drain-delay={drain_delay(manifest):g}",
            f"--grace={GRACE:g}",
        ],
        "env": env,
        "ports": [
            {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
        ],
        # Start-up (etcd, NATS, a store's migrations) gets a minute; then the pod is ready
        # while SERVING, and alive while it answers at all.
        "startupProbe": _probe(manifest, "answers", period=2, failures=30),
        "readinessProbe": _probe(manifest, "serving", period=10, failures=1),
        "livenessProbe": _probe(manifest, "answers", period=20, failures=3),
        # SIGTERM waits the drain delay: Kubernetes takes the terminating pod out of the
        # Service's endpoints (monitoring, anything that routes by them) meanwhile; then the
        # service's own drain takes it out of etcd, where the mesh's callers find it.
        "lifecycle": {"preStop": pre_stop_sleep(drain_delay(manifest))},
        "resources": _resources(manifest),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": mounts,
    }


def probe_command(manifest: Manifest, want: str) -> list[str]:
    """The exec probe's command: `want` "serving" (readiness) or "answers" (liveness)."""
    if want not in ("serving", "answers"):
        raise ValueError(f"want must be 'serving' or 'answers', got {want!r}")
    return ["python", "-c", _PROBE, manifest.name, str(GRPC_PORT), want]


def _probe(manifest: Manifest, want: str, *, period: int, failures: int) -> dict[str, Any]:
    return {
        "exec": {"command": probe_command(manifest, want)},
        "periodSeconds": period,
        # A Python start (grpc, cryptography) plus the call's own 3 s.
        "timeoutSeconds": 5,
        "failureThreshold": failures,
    }


def _resources(manifest: Manifest) -> dict[str, Any]:
    cpu = manifest.resources.cpu or DEFAULT_CPU
    memory = manifest.resources.memory or DEFAULT_MEMORY
    # No CPU limit: throttling a gRPC server turns load into missed deadlines; memory is
    # limited to what is asked, so a leak restarts this pod, not its neighbours.
    return {"requests": {"cpu": cpu, "memory": memory}, "limits": {"memory": memory}}


# -- the Service, the budget, the network policy --------------------------------------------


def _service(manifest: Manifest, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(manifest, namespace),
        "spec": {
            # Headless: callers take instances from etcd (with their identities and health),
            # never a virtual IP; this names the pods (a StatefulSet's must) and lists them
            # for monitoring and operators.
            "clusterIP": "None",
            "selector": selector(manifest),
            "ports": [
                {"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc", "protocol": "TCP"},
                {
                    "name": "metrics",
                    "port": METRICS_PORT,
                    "targetPort": "metrics",
                    "protocol": "TCP",
                },
            ],
        },
    }


def _disruption_budget(manifest: Manifest, namespace: str) -> dict[str, Any]:
    # Several replicas: one drains at a time. One replica: its eviction is an outage, so a
    # node drain waits for an operator to move it. A pod that is not ready never holds a
    # drain up (AlwaysAllow).
    max_unavailable = 1 if manifest.replicas > 1 else 0
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(manifest, namespace),
        "spec": {
            "maxUnavailable": max_unavailable,
            "selector": {"matchLabels": selector(manifest)},
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }


def callers(manifest: Manifest) -> list[str]:
    """Who may open the gRPC port: every `[[accepts]]` caller ("*": any pod of the mesh), and
    the gateway, which reads every registered service's descriptors by reflection."""
    found = {GATEWAY_IDENTITY}
    for accept in manifest.accepts:
        found.update(accept.callers)
    return sorted(found)


def caller_selector(caller: str) -> dict[str, str]:
    """The pods of a caller: a deployment, the gateway or the operators' pod (`ops`) by
    name; "*" is every pod of the mesh."""
    if caller == ANY_CALLER:
        return {PART_OF_LABEL: PART_OF}
    return {NAME_LABEL: caller, PART_OF_LABEL: PART_OF}


def _network_policy(manifest: Manifest, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(manifest, namespace),
        "spec": {
            "podSelector": {"matchLabels": selector(manifest)},
            # Ingress only: what a service reaches (etcd, NATS, its callees) is not limited.
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [
                        {"podSelector": {"matchLabels": caller_selector(c)}}
                        for c in callers(manifest)
                    ],
                    "ports": [{"port": GRPC_PORT, "protocol": "TCP"}],
                },
                {
                    "from": [
                        {
                            "namespaceSelector": {},
                            "podSelector": {"matchLabels": {SCRAPER_LABEL: "true"}},
                        }
                    ],
                    "ports": [{"port": METRICS_PORT, "protocol": "TCP"}],
                },
            ],
        },
    }


# -- YAML -----------------------------------------------------------------------------------


def to_yaml(objects: Sequence[Mapping[str, Any]]) -> str:
    """A YAML stream, one document per object: PyYAML's block style if it is installed,
    else JSON (valid YAML too)."""
    try:
        import yaml
    except ImportError:
        return json_stream(objects)
    return pyyaml_stream(objects, yaml)


def json_stream(objects: Sequence[Mapping[str, Any]]) -> str:
    return "".join(f"---\n{json.dumps(o, indent=2)}\n" for o in objects)


def pyyaml_stream(objects: Sequence[Mapping[str, Any]], yaml: Any) -> str:
    class Dumper(yaml.SafeDumper):
        """Keeps keys in the order written, and multi-line text (policies, the probe) as
        literal blocks."""

    def text(dumper: Any, value: str) -> Any:
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    Dumper.add_representer(str, text)
    return str(
        yaml.dump_all(objects, Dumper=Dumper, sort_keys=False, explicit_start=True, width=100)
    )
