"""What the objects of deploy/k8s/base must say, beyond the schemas: every service's workload
has its probes, a preStop sleep of its drain delay, a grace period covering drain and grace,
requests and a PodDisruptionBudget; etcd's --initial-cluster and NATS's routes name exactly
their replicas; every NetworkPolicy peer is a pod of the base; no hostPort; nobody is root.

Each check is a function returning the problems it finds: each is run on the base (no
problem) and on a broken copy (the problem it must find), so that none passes vacuously."""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml

from hms_tools import deploy, k8s
from hms_tools.contracts import REPO, Contracts, default_descriptor_set
from hms_tools.manifest import load_manifests

BASE = REPO / "deploy" / "k8s" / "base"
MANIFESTS = load_manifests(REPO / "services", Contracts.load(default_descriptor_set()))
Objects = list[dict[str, Any]]


def base() -> Objects:
    found: Objects = []
    for path in sorted(BASE.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            found += [o for o in yaml.safe_load_all(path.read_text()) if o]
    return found


BASE_OBJECTS = base()


def named(objects: Objects, kind: str, name: str) -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def pod_templates(objects: Objects) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(object, its pod template) of every workload and Job."""
    for obj in objects:
        template = obj.get("spec", {}).get("template")
        if template is not None:
            yield obj, template


def service_workloads(objects: Objects) -> dict[str, dict[str, Any]]:
    return {
        o["metadata"]["name"]: o
        for o in objects
        if o["kind"] in ("Deployment", "StatefulSet")
        and o["metadata"]["labels"].get("app.kubernetes.io/component") == "service"
    }


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and selector.items() <= labels.items()


# -- the checks ------------------------------------------------------------------------------


def check_service_workload(objects: Objects, name: str) -> list[str]:
    workload = service_workloads(objects)[name]
    manifest = MANIFESTS[name]
    drain = deploy.DEFAULT_DRAIN_DELAY if manifest.drain_delay is None else manifest.drain_delay
    pod = workload["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    problems = []
    for probe in ("readinessProbe", "livenessProbe"):
        if "exec" not in container.get(probe, {}):
            problems.append(f"{name}: no {probe} (exec, grpc.health.v1)")
    pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command")
    sleep = None
    if pre_stop and pre_stop[0] == "sleep" and len(pre_stop) == 2:
        sleep = float(pre_stop[1])
    if sleep != drain:
        problems.append(f"{name}: preStop {pre_stop} is not a sleep of the drain delay {drain:g}")
    drain_flag = [a for a in container["args"] if a.startswith("--drain-delay=")]
    if drain_flag != [f"--drain-delay={drain:g}"]:
        problems.append(f"{name}: {drain_flag} is not the drain delay {drain:g}")
    needed = math.ceil((sleep or 0) + drain + deploy.GRACE)
    if pod.get("terminationGracePeriodSeconds", 30) < needed:
        problems.append(f"{name}: terminationGracePeriodSeconds below preStop + drain + grace")
    requests = container.get("resources", {}).get("requests", {})
    if not {"cpu", "memory"} <= set(requests):
        problems.append(f"{name}: requests {requests} lack cpu or memory")
    labels = workload["spec"]["template"]["metadata"]["labels"]
    budgets = [
        o
        for o in objects
        if o["kind"] == "PodDisruptionBudget"
        and o["metadata"]["namespace"] == workload["metadata"]["namespace"]
        and selects(o["spec"]["selector"].get("matchLabels", {}), labels)
    ]
    if len(budgets) != 1:
        problems.append(f"{name}: {len(budgets)} PodDisruptionBudgets select its pods")
    return problems


def initial_cluster(objects: Objects) -> tuple[int, list[tuple[str, str]]]:
    etcd = named(objects, "StatefulSet", "etcd")
    (container,) = etcd["spec"]["template"]["spec"]["containers"]
    (flag,) = [a for a in container["args"] if a.startswith("--initial-cluster=")]
    members = [tuple(m.split("=", 1)) for m in flag.split("=", 1)[1].split(",")]
    return etcd["spec"]["replicas"], members  # type: ignore[return-value]


def check_etcd_members(objects: Objects) -> list[str]:
    replicas, members = initial_cluster(objects)
    peers = named(objects, "StatefulSet", "etcd")["spec"]["serviceName"]
    expected = [
        (f"etcd-{i}", f"https://etcd-{i}.{peers}.$(POD_NAMESPACE).svc:{k8s.ETCD_PEER_PORT}")
        for i in range(replicas)
    ]
    if members != expected:
        return [f"--initial-cluster {members} is not the {replicas} replicas {expected}"]
    return []


def nats_routes(objects: Objects) -> list[str]:
    conf = named(objects, "ConfigMap", k8s.NATS_CONFIGMAP)["data"]["nats.conf"]
    match = re.search(r"cluster \{.*?routes: \[(.*?)\]", conf, re.S)
    assert match is not None, "no cluster { routes: [...] } in nats.conf"
    return re.findall(r'"([^"]+)"', match[1])


def check_nats_routes(objects: Objects) -> list[str]:
    nats = named(objects, "StatefulSet", "nats")
    replicas, peers = nats["spec"]["replicas"], nats["spec"]["serviceName"]
    expected = [f"nats-route://nats-{i}.{peers}:{k8s.NATS_ROUTE_PORT}" for i in range(replicas)]
    routes = nats_routes(objects)
    if routes != expected:
        return [f"routes {routes} are not the {replicas} replicas {expected}"]
    return []


def check_peers_are_pods(objects: Objects) -> list[str]:
    """Every podSelector of a NetworkPolicy peer picks at least one pod of the base (or, with
    a namespaceSelector, pods outside it: the ingress controller, scrapers)."""
    pods = [t["metadata"]["labels"] for _, t in pod_templates(objects)]
    problems = []
    for policy in (o for o in objects if o["kind"] == "NetworkPolicy"):
        name = policy["metadata"]["name"]
        target = policy["spec"]["podSelector"].get("matchLabels", {})
        if target and not any(selects(target, labels) for labels in pods):
            problems.append(f"NetworkPolicy {name}: selects no pod ({target})")
        for rule in policy["spec"].get("ingress", []):
            for peer in rule["from"]:
                if "namespaceSelector" in peer:
                    continue
                wanted = peer["podSelector"]["matchLabels"]
                if not any(selects(wanted, labels) for labels in pods):
                    problems.append(f"NetworkPolicy {name}: peer {wanted} is no pod of the base")
    return problems


def check_no_host_ports(objects: Objects) -> list[str]:
    problems = []
    for obj, template in pod_templates(objects):
        spec = template["spec"]
        if spec.get("hostNetwork") or spec.get("hostPID") or spec.get("hostIPC"):
            problems.append(f"{obj['metadata']['name']}: host namespaces")
        for container in spec["containers"]:
            for port in container.get("ports", []):
                if "hostPort" in port:
                    problems.append(f"{obj['metadata']['name']}: hostPort {port['hostPort']}")
    return problems


def check_nobody_is_root(objects: Objects) -> list[str]:
    problems = []
    for obj, template in pod_templates(objects):
        pod = template["spec"].get("securityContext", {})
        for container in template["spec"]["containers"]:
            own = container.get("securityContext", {})
            non_root = own.get("runAsNonRoot", pod.get("runAsNonRoot"))
            uid = own.get("runAsUser", pod.get("runAsUser"))
            if non_root is not True or uid in (None, 0):
                problems.append(f"{obj['metadata']['name']}/{container['name']}: may run as root")
            if own.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{obj['metadata']['name']}/{container['name']}: may escalate")
    return problems


def check_references(objects: Objects) -> list[str]:
    """Every ConfigMap a pod mounts is in the base; every Secret is one `mesh certs
    k8s-secrets` makes (or the gateway's JWT keys); every Service selects pods and names
    their ports; the Ingress's backend is a Service port."""
    problems = []
    configmaps = {o["metadata"]["name"] for o in objects if o["kind"] == "ConfigMap"}
    secrets = {f"{n}-tls" for n in k8s.identities(MANIFESTS.values())} | {k8s.JWT_SECRET}
    for obj, template in pod_templates(objects):
        for volume in template["spec"].get("volumes", []):
            if "configMap" in volume and volume["configMap"]["name"] not in configmaps:
                problems.append(f"{obj['metadata']['name']}: no ConfigMap {volume['configMap']}")
            if "secret" in volume and volume["secret"]["secretName"] not in secrets:
                problems.append(f"{obj['metadata']['name']}: unknown Secret {volume['secret']}")
    services = {}
    for service in (o for o in objects if o["kind"] == "Service"):
        name = service["metadata"]["name"]
        chosen = [
            t
            for _, t in pod_templates(objects)
            if selects(service["spec"]["selector"], t["metadata"]["labels"])
        ]
        if not chosen:
            problems.append(f"Service {name}: selects no pod")
            continue
        ports = {
            p["name"] for t in chosen for c in t["spec"]["containers"] for p in c.get("ports", [])
        }
        for port in service["spec"]["ports"]:
            if port["targetPort"] not in ports:
                problems.append(f"Service {name}: no container port {port['targetPort']}")
        services[name] = {p["port"] for p in service["spec"]["ports"]}
    for ingress in (o for o in objects if o["kind"] == "Ingress"):
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                if backend["port"]["number"] not in services.get(backend["name"], set()):
                    problems.append(f"Ingress: no Service port {backend}")
    return problems


def check_default_deny(objects: Objects) -> list[str]:
    denies = [
        o
        for o in objects
        if o["kind"] == "NetworkPolicy"
        and o["spec"]["podSelector"] == {}
        and o["spec"]["policyTypes"] == ["Ingress"]
        and not o["spec"].get("ingress")
    ]
    return [] if len(denies) == 1 else [f"{len(denies)} default-deny policies"]


def check_control_plane_ports(objects: Objects) -> list[str]:
    """etcd: 2379 from mesh pods, 2380 between members; NATS: 4222 from mesh pods, 6222
    between nodes; nothing else but etcd's metrics for scrapers."""
    mesh = {deploy.PART_OF_LABEL: deploy.PART_OF}
    problems = []
    for name, client, peer in (
        ("etcd", k8s.ETCD_CLIENT_PORT, k8s.ETCD_PEER_PORT),
        ("nats", k8s.NATS_CLIENT_PORT, k8s.NATS_ROUTE_PORT),
    ):
        policy = named(objects, "NetworkPolicy", name)
        own = policy["spec"]["podSelector"]["matchLabels"]
        admitted: dict[int, list[dict[str, Any]]] = {}
        for rule in policy["spec"]["ingress"]:
            for port in rule["ports"]:
                admitted.setdefault(port["port"], []).extend(rule["from"])
        if admitted.get(client) != [{"podSelector": {"matchLabels": mesh}}]:
            problems.append(f"{name}: {client} admits {admitted.get(client)}")
        if admitted.get(peer) != [{"podSelector": {"matchLabels": own}}]:
            problems.append(f"{name}: {peer} admits {admitted.get(peer)}")
        others = set(admitted) - {client, peer, k8s.ETCD_METRICS_PORT}
        if others:
            problems.append(f"{name}: also admits {sorted(others)}")
    return problems


def check_spread(objects: Objects) -> list[str]:
    """etcd and NATS members never share a node (required anti-affinity on the hostname)."""
    problems = []
    for name in ("etcd", "nats"):
        found = named(objects, "StatefulSet", name)
        terms = (
            found["spec"]["template"]["spec"]
            .get("affinity", {})
            .get("podAntiAffinity", {})
            .get("requiredDuringSchedulingIgnoredDuringExecution", [])
        )
        labels = found["spec"]["template"]["metadata"]["labels"]
        if not any(
            t["topologyKey"] == "kubernetes.io/hostname"
            and selects(t["labelSelector"]["matchLabels"], labels)
            for t in terms
        ):
            problems.append(f"{name}: members may share a node")
        if not found["spec"].get("volumeClaimTemplates"):
            problems.append(f"{name}: no volumeClaimTemplates")
    return problems


# -- on the base -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_every_service_workload_drains_probes_asks_and_has_a_budget(name: str) -> None:
    assert check_service_workload(BASE_OBJECTS, name) == []


def test_every_service_has_its_workload() -> None:
    assert sorted(service_workloads(BASE_OBJECTS)) == sorted(MANIFESTS)


WHOLE_BASE_CHECKS: list[Callable[[Objects], list[str]]] = [
    check_etcd_members,
    check_nats_routes,
    check_peers_are_pods,
    check_no_host_ports,
    check_nobody_is_root,
    check_references,
    check_default_deny,
    check_control_plane_ports,
    check_spread,
]


@pytest.mark.parametrize("check", WHOLE_BASE_CHECKS, ids=lambda c: c.__name__)
def test_the_base_passes(check: Callable[[Objects], list[str]]) -> None:
    assert check(BASE_OBJECTS) == []


def test_the_peer_lists_name_three_members() -> None:
    replicas, members = initial_cluster(BASE_OBJECTS)
    assert replicas == k8s.ETCD_REPLICAS == len(members) == 3
    assert (
        len(nats_routes(BASE_OBJECTS))
        == named(BASE_OBJECTS, "StatefulSet", "nats")["spec"]["replicas"]
        == 3
    )


def test_the_gateway_probes_its_endpoints_and_drains_before_the_ingress_forgets_it() -> None:
    gateway = named(BASE_OBJECTS, "Deployment", "gateway")
    pod = gateway["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["lifecycle"]["preStop"]["exec"]["command"] == [
        "sleep",
        str(k8s.GATEWAY_DRAIN_DELAY),
    ]
    assert pod["terminationGracePeriodSeconds"] >= k8s.GATEWAY_DRAIN_DELAY + k8s.GATEWAY_GRACE
    budget = named(BASE_OBJECTS, "PodDisruptionBudget", "gateway")
    assert selects(
        budget["spec"]["selector"]["matchLabels"], gateway["spec"]["template"]["metadata"]["labels"]
    )
    assert named(BASE_OBJECTS, "Ingress", "gateway")["spec"]["ingressClassName"] == "nginx"


# -- on broken copies: each check finds what it is for ---------------------------------------


def broken(change: Callable[[Objects], object]) -> Objects:
    objects = copy.deepcopy(BASE_OBJECTS)
    change(objects)
    return objects


def container_of(objects: Objects, kind: str, name: str) -> dict[str, Any]:
    return named(objects, kind, name)["spec"]["template"]["spec"]["containers"][0]


def _set_replicas(objects: Objects, kind: str, name: str, replicas: int) -> None:
    named(objects, kind, name)["spec"]["replicas"] = replicas


BROKEN: list[Any] = [
    pytest.param(
        lambda o: container_of(o, "Deployment", "fees").pop("readinessProbe"),
        lambda o: check_service_workload(o, "fees"),
        "no readinessProbe",
        id="no readiness",
    ),
    pytest.param(
        lambda o: container_of(o, "Deployment", "fees").pop("lifecycle"),
        lambda o: check_service_workload(o, "fees"),
        "is not a sleep of the drain delay",
        id="no preStop",
    ),
    pytest.param(
        lambda o: container_of(o, "Deployment", "fees")["lifecycle"]["preStop"]["exec"].update(
            command=["sleep", "7"]
        ),
        lambda o: check_service_workload(o, "fees"),
        "is not a sleep of the drain delay",
        id="preStop of another length",
    ),
    pytest.param(
        lambda o: named(o, "Deployment", "fees")["spec"]["template"]["spec"].update(
            terminationGracePeriodSeconds=5
        ),
        lambda o: check_service_workload(o, "fees"),
        "terminationGracePeriodSeconds",
        id="short grace",
    ),
    pytest.param(
        lambda o: container_of(o, "Deployment", "fees")["resources"].pop("requests"),
        lambda o: check_service_workload(o, "fees"),
        "lack cpu or memory",
        id="no requests",
    ),
    pytest.param(
        lambda o: o.remove(named(o, "PodDisruptionBudget", "fees")),
        lambda o: check_service_workload(o, "fees"),
        "0 PodDisruptionBudgets",
        id="no budget",
    ),
    pytest.param(
        lambda o: _set_replicas(o, "StatefulSet", "etcd", 5),
        check_etcd_members,
        "is not the 5 replicas",
        id="etcd scaled without its peer list",
    ),
    pytest.param(
        lambda o: _set_replicas(o, "StatefulSet", "nats", 1),
        check_nats_routes,
        "are not the 1 replicas",
        id="nats scaled without its routes",
    ),
    pytest.param(
        lambda o: named(o, "NetworkPolicy", "fees")["spec"]["ingress"][0]["from"].append(
            {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "parking"}}}
        ),
        check_peers_are_pods,
        "is no pod of the base",
        id="a peer nobody is",
    ),
    pytest.param(
        lambda o: container_of(o, "StatefulSet", "etcd")["ports"][0].update(hostPort=2379),
        check_no_host_ports,
        "hostPort 2379",
        id="hostPort",
    ),
    pytest.param(
        lambda o: container_of(o, "StatefulSet", "nats").update(
            securityContext={"runAsUser": 0, "allowPrivilegeEscalation": False}
        ),
        check_nobody_is_root,
        "may run as root",
        id="root",
    ),
    pytest.param(
        lambda o: named(o, "Deployment", "gateway")["spec"]["template"]["spec"]["volumes"].append(
            {"name": "x", "configMap": {"name": "missing"}}
        ),
        check_references,
        "no ConfigMap",
        id="a missing ConfigMap",
    ),
    pytest.param(
        lambda o: o.remove(named(o, "NetworkPolicy", "default-deny-ingress")),
        check_default_deny,
        "0 default-deny",
        id="no default deny",
    ),
    pytest.param(
        lambda o: named(o, "NetworkPolicy", "etcd")["spec"]["ingress"][1]["from"].append(
            {"podSelector": {"matchLabels": {deploy.PART_OF_LABEL: deploy.PART_OF}}}
        ),
        check_control_plane_ports,
        "2380 admits",
        id="etcd peers open to the mesh",
    ),
    pytest.param(
        lambda o: named(o, "StatefulSet", "nats")["spec"]["template"]["spec"].pop("affinity"),
        check_spread,
        "nats: members may share a node",
        id="nats without anti-affinity",
    ),
]


@pytest.mark.parametrize(("change", "check", "problem"), BROKEN)
def test_each_check_finds_what_it_is_for(
    change: Callable[[Objects], object], check: Callable[[Objects], list[str]], problem: str
) -> None:
    problems = check(broken(change))
    assert any(problem in p for p in problems), problems
