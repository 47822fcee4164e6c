"""How `mesh up --ha` configures its clusters (tools/devstack.py), read off the command lines
and configuration files without starting anything: every etcd member lists the same peers,
every NATS node routes to the others, and a secured cluster's routes need TLS and a secret."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography import x509

from hms_tools import certs
from hms_tools.controlplane import ControlPlane, Grant, Policy
from hms_tools.devstack import DevStack, EtcdCluster, EtcdProcess, NatsCluster, NatsProcess


def flag(command: list[str], name: str) -> str:
    values = [arg.split("=", 1)[1] for arg in command if arg.startswith(f"--{name}=")]
    assert len(values) == 1, (name, command)
    return values[0]


@pytest.fixture
def control_plane(tmp_path: Path) -> ControlPlane:
    certs.ensure(tmp_path / "tls", ["echo"])
    policy = Policy((Grant("echo", ("hms.echo.v1.EchoService",)),), event_types=())
    return ControlPlane(tmp_path / "tls", policy, server_hosts=("198.18.0.1",))


@pytest.mark.parametrize("size", [1, 3, 5])
@pytest.mark.parametrize("secured", [False, True])
def test_every_etcd_member_names_the_same_peers(
    tmp_path: Path, control_plane: ControlPlane, size: int, secured: bool
) -> None:
    cluster = EtcdCluster(tmp_path, size=size, control_plane=control_plane if secured else None)
    commands = [m.command() for m in cluster.members]
    peers = {flag(c, "initial-cluster") for c in commands}
    assert len(peers) == 1
    listed = dict(entry.split("=", 1) for entry in peers.pop().split(","))
    assert sorted(listed) == sorted(flag(c, "name") for c in commands)
    assert len(listed) == size
    for member, command in zip(cluster.members, commands, strict=True):
        assert listed[member.member] == flag(command, "initial-advertise-peer-urls")
        assert listed[member.member].startswith("https://" if secured else "http://")
    assert cluster.endpoint.split(",") == [m.endpoint for m in cluster.members]
    assert len(set(cluster.endpoint.split(","))) == size


def test_members_bind_the_hosts_they_are_given(tmp_path: Path) -> None:
    hosts = ["198.18.4.1", "198.18.4.2", "198.18.4.3"]
    etcd = EtcdCluster(tmp_path, hosts=hosts)
    nats = NatsCluster(tmp_path, hosts=hosts)
    for host, member, node in zip(hosts, etcd.members, nats.nodes, strict=True):
        assert flag(member.command(), "listen-client-urls") == f"http://{host}:{member.client_port}"
        assert member.peer_url.startswith(f"http://{host}:")
        assert node.url == f"nats://{host}:{node.port}"
        assert node.route_address.startswith(f"{host}:")


@pytest.mark.parametrize(
    ("make", "args", "message"),
    [
        (EtcdCluster, {"size": 0}, "at least one member"),
        (EtcdCluster, {"size": 3, "hosts": ["a", "b"]}, "3 etcd members but 2 hosts"),
        (NatsCluster, {"size": 0}, "at least one node"),
        (NatsCluster, {"size": 2, "hosts": ["a"]}, "2 NATS nodes but 1 hosts"),
    ],
)
def test_a_cluster_that_cannot_be_is_refused(
    tmp_path: Path, make: type, args: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        make(tmp_path, **args)


def test_every_plaintext_nats_node_routes_to_the_others(tmp_path: Path) -> None:
    cluster = NatsCluster(tmp_path, size=3)
    names = set()
    for node in cluster.nodes:
        command = node.command()
        names.add(flag(command, "server_name"))
        assert flag(command, "cluster_name") == "hms"
        assert flag(command, "cluster") == f"nats://{node.route_address}"
        routes = flag(command, "routes").split(",")
        others = [f"nats://{n.route_address}" for n in cluster.nodes if n is not node]
        assert routes == others
    assert names == {"nats-1", "nats-2", "nats-3"}
    assert cluster.url.split(",") == [n.url for n in cluster.nodes]


def test_a_secured_nats_cluster_routes_over_tls_with_a_secret(
    tmp_path: Path, control_plane: ControlPlane
) -> None:
    cluster = NatsCluster(tmp_path / "run", size=3, control_plane=control_plane)
    secrets = set()
    for node in cluster.nodes:
        node.write_configuration()
        assert stat.S_IMODE(node.config_path.stat().st_mode) == 0o600
        text = node.config_path.read_text()
        assert f'server_name: "{node.server_name}"' in text
        cluster_block = text[text.index("cluster {") :]
        assert "verify: true" in cluster_block
        secret = node.cluster[2] if node.cluster is not None else ""
        assert len(secret) >= 32
        secrets.add(secret)
        assert f'password: "{secret}"' in cluster_block
        for other in cluster.nodes:
            route = f"nats-route://route:{secret}@{other.route_address}"
            assert (route in cluster_block) == (other is not node)
        assert node.command()[-2:] == ["-c", str(node.config_path)]
    assert len(secrets) == 1  # one secret for the cluster
    assert cluster.url.startswith("tls://")
    # The server certificates answer for the hosts the control plane names.
    pem = (control_plane.directory / "nats.pem").read_bytes()
    cert = x509.load_pem_x509_certificate(pem)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "198.18.0.1" in {str(v) for v in sans.get_values_for_type(x509.IPAddress)}


def test_two_clusters_never_share_a_secret(tmp_path: Path, control_plane: ControlPlane) -> None:
    one = NatsCluster(tmp_path / "a", control_plane=control_plane)
    two = NatsCluster(tmp_path / "b", control_plane=control_plane)
    assert one.nodes[0].cluster is not None
    assert two.nodes[0].cluster is not None
    assert one.nodes[0].cluster[2] != two.nodes[0].cluster[2]


@pytest.mark.parametrize(
    ("size", "etcd", "nats"), [(1, EtcdProcess, NatsProcess), (3, EtcdCluster, NatsCluster)]
)
def test_devstack_size_chooses_single_servers_or_clusters(
    tmp_path: Path, size: int, etcd: type, nats: type
) -> None:
    stack = DevStack(tmp_path, size=size)
    assert isinstance(stack.etcd, etcd)
    assert isinstance(stack.nats, nats)
    assert len(stack.etcd.endpoint.split(",")) == size
    assert len(stack.nats.url.split(",")) == size
