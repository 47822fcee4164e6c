"""A whole mesh on this machine: etcd, NATS, certificates, every service (as many replicas as
asked, each its own process, supervised: see tools/supervisor.py) and the gateway. `mesh up`, the
demo, the chaos runner and end-to-end tests use it.

Once everything is registered it writes `<state-dir>/stack.json`, and rewrites it on every
change (a crash, a restart, a scale):

    {"etcd": "127.0.0.1:PORT", "nats": "nats://127.0.0.1:PORT", "namespace": "hms",
     "tls_dir": "/abs/.mesh/tls", "ops_cert": "ops", "gateway": "http://127.0.0.1:PORT",
     "control": "/abs/.mesh/control.sock",
     "services": {"<deployment>": {"replicas": [
         {"name": "notify-1", "slot": 1, "state": "serving", "pid": N, "restarts": 0,
          "instance_id": "...", "log": "...", "instances": [
              {"service": "hms.notify.v1.NotifyService", "address": "127.0.0.1:PORT", ...}]}]}}}

`mesh restart` and `mesh scale` reach the running stack through its control socket
(tools/control.py).

What runs is what the manifests declare (services/<name>/service.toml, tools/manifest.py):
every folder with a manifest and a main.py, its replicas (unless `scale` says otherwise) and
its drain delay; every service gets one authorization policy composed from all manifests'
``[[accepts]]`` (tools/authz_matrix.py), written to `<state-dir>/policy.toml` (MESH_POLICY).
A test backend (tests/backends) has no manifest: one replica, open to every mesh identity.

etcd and NATS run secured (tools/controlplane.py: TLS with certificates from the stack's CA,
each deployment allowed only its own registry keys and events, root's and the servers' keys
in `<state-dir>/controlplane/`), so "etcd" is an https:// endpoint and "nats" a tls:// URL;
`StackConfig(insecure_control_plane=True)` runs both in plaintext.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hms_tools import certs
from hms_tools.authz_matrix import compose_policy
from hms_tools.contracts import Contracts, default_descriptor_set
from hms_tools.control import ControlError, answering, serve_control
from hms_tools.controlplane import ControlPlane, policy_for, served_services
from hms_tools.devjwt import DEV_ISSUER, ensure_signing_key
from hms_tools.devstack import (
    TEST_BACKENDS,
    DevStack,
    GatewayProcess,
    Placement,
    ServiceProcess,
)
from hms_tools.errors import OperatorError
from hms_tools.manifest import (
    MANIFEST_FILE,
    Manifest,
    State,
    deployment_folders,
    load_manifests,
)
from hms_tools.stackfile import CONTROL_SOCKET, STACK_FILE
from hms_tools.supervisor import OperationFailed, Supervisor
from mesh import tls
from mesh.authz.policy import load_policy
from mesh.controlplane import ClientTls, NatsAccess, etcd_client_tls
from mesh.identity import spiffe_id
from mesh.registry import keys
from mesh.registry.etcd import Etcd
from mesh.registry.watch import Discovery

__all__ = [
    "Stack",
    "StackConfig",
    "discover_services",
]

log = logging.getLogger(__name__)

OPS_IDENTITY = "ops"
GATEWAY_IDENTITY = "gateway"
#: The most worker processes a replica may have (`mesh up --workers`).
MAX_WORKERS = 64
#: Members of etcd and nodes of NATS under `mesh up --ha`: the smallest quorum that survives
#: the loss of one.
HA_SIZE = 3
#: The stack's gateway's request body limit (`mesh gateway` alone: 4 MiB): 10 MiB and 1 MiB.
STACK_BODY_LIMIT = 11 * 1024 * 1024

# `mesh gateway` flags the stack sets itself, and why an operator cannot: each with what to do.
_STACK_GATEWAY_FLAGS = {
    "--etcd": "the gateway uses the stack's etcd",
    "--etcd-ca": "the gateway reaches the stack's etcd with its own certificate",
    "--etcd-cert": "the gateway reaches the stack's etcd with its own certificate",
    "--etcd-key": "the gateway reaches the stack's etcd with its own certificate",
    "--namespace": "the gateway uses the stack's namespace (mesh up --namespace)",
    "--nats": "the gateway sends svc.trace records to the stack's NATS",
    "--state-dir": "the gateway uses the stack's state (mesh up --state-dir)",
    "--tls-dir": "the gateway uses the stack's certificates",
    "--cert-name": f"the gateway presents the stack's {GATEWAY_IDENTITY!r} certificate",
    "--insecure": "the stack's services accept mTLS only",
    "--descriptor-set": "the stack's gateway learns its routes from the registry",
    "--upstream": "the stack's gateway finds its services in the registry",
}


async def _jetstream_ready(js: Any, timeout: float) -> None:
    """Until JetStream answers (a cluster's nodes first elect a meta leader: until then its
    API requests go unanswered)."""
    import nats.errors
    import nats.js.errors

    async with asyncio.timeout(timeout):
        while True:
            try:
                await js.account_info()
                return
            except (
                nats.errors.TimeoutError,
                nats.errors.NoRespondersError,
                nats.js.errors.ServiceUnavailableError,
            ):
                await asyncio.sleep(0.1)  # polling a condition, under the deadline above


def _stack_gateway_flag(arg: str) -> str | None:
    """The stack's own gateway flag that ``arg`` sets, if any. argparse takes any unambiguous
    prefix of a long option (``--tls`` for ``--tls-dir``), so prefixes count too."""
    name = arg.split("=", 1)[0]
    if not name.startswith("--") or len(name) < len("--x"):
        return None
    for flag in _STACK_GATEWAY_FLAGS:
        if flag.startswith(name):
            return flag
    return None


# `mesh gateway` flags by which an operator sets up the gate: given any, the stack's gateway
# takes the operator's gate (or none, with --no-gate) instead of the development key's.
_GATE_FLAGS = ("--jwt-hs256-secret-file", "--jwt-public-key", "--jwks", "--no-gate")


def _sets_the_gate(arg: str) -> bool:
    """Does `arg` set up the gate (prefixes count, as argparse takes them)?"""
    name = arg.split("=", 1)[0]
    if not name.startswith("--") or len(name) < len("--x"):
        return False
    return any(flag.startswith(name) for flag in _GATE_FLAGS)


def _gateway_exited(gateway: GatewayProcess) -> OperatorError:
    """The gateway process ended before it was ready: its exit status and its last words."""
    status = gateway.proc.poll() if gateway.proc is not None else None
    said = [line.strip() for line in gateway.log_tail(4000).splitlines() if line.strip()]
    last = said[-1] if said else "(it printed nothing)"
    return OperatorError(
        f"the gateway exited before it was ready (status {status}): {last} "
        f"(log: {gateway.log_path})"
    )


def _services_dir() -> Path:
    import hms_services

    return Path(hms_services.__file__).resolve().parent


def discover_services() -> list[str]:
    """Deployments under services/: every folder with a manifest (service.toml) and a main.py."""
    return deployment_folders(_services_dir())


def read_manifests() -> dict[str, Manifest]:
    """Every manifest under services/, checked against the contracts (gen/hms.binpb); a bad
    one is a ValueError naming its file and field."""
    services = _services_dir()
    return load_manifests(services, Contracts.load(default_descriptor_set(services.parent)))


def _check_declared(deployments: Sequence[str], manifests: Mapping[str, Manifest]) -> None:
    """Refuse a deployment `mesh up` cannot start as declared."""
    services = _services_dir()
    for deployment in deployments:
        if deployment in TEST_BACKENDS:
            continue
        if deployment not in manifests:
            raise OperatorError(
                f"{deployment}: services/{deployment}/{MANIFEST_FILE} not found: a stack starts "
                "what a manifest declares (`mesh new-service` writes one)"
            )
        if not (services / deployment / "main.py").is_file():
            raise OperatorError(f"{deployment}: services/{deployment}/main.py not found")


@dataclass(frozen=True)
class StackConfig:
    state_dir: Path = Path(".mesh")
    namespace: str = "hms"
    deployments: tuple[str, ...] = ()  # empty: every service under services/
    #: Replicas per deployment (for any not named: its manifest's `replicas`, 1 without one).
    scale: Mapping[str, int] = field(default_factory=dict)
    lease_ttl: int = 10
    ready_timeout: float = 60.0
    extra_env: dict[str, str] = field(default_factory=dict)
    #: Start the REST gateway too (its URL goes into stack.json).
    gateway: bool = True
    #: More `mesh gateway` arguments, passed as they are (`mesh up --gateway-arg=--strict`):
    #: JSON options, the gate, a fixed --port. Not the flags the stack sets itself (--etcd,
    #: --tls-dir, ...); a flag the gateway does not know fails `Stack.start` with its message.
    gateway_args: tuple[str, ...] = ()
    #: Listen on `<state-dir>/control.sock` for `mesh restart` and `mesh scale`.
    control: bool = True
    #: etcd and NATS in plaintext, open to any local process (`mesh up
    #: --insecure-control-plane`); by default both require TLS with a certificate from the
    #: stack's CA and enforce who may do what (tools/controlplane.py, docs/security.md).
    insecure_control_plane: bool = False
    #: `mesh up --workers N`: N worker processes per replica of every deployment that keeps no
    #: state (its manifest's `state = "none"`, or a test backend), each registered on its
    #: own: the deployment uses N cores per replica. Deployments with a SQLite file keep one
    #: process per replica (two writers of one file would serialize on its lock anyway).
    workers: int = 1
    #: `mesh up --ha`: a 3-member etcd cluster and a 3-node NATS cluster (streams kept on 3
    #: replicas) instead of one of each; every client is given every endpoint.
    ha: bool = False
    #: The authorization policy every service gets (MESH_POLICY); None: the one composed
    #: from the manifests' [[accepts]], written to `<state-dir>/policy.toml`.
    policy: Path | None = None
    #: "audit": the composed policy logs the calls it would refuse instead of refusing them.
    policy_mode: str = "enforce"

    def __post_init__(self) -> None:
        if not 1 <= self.workers <= MAX_WORKERS:
            raise ValueError(f"workers must be from 1 to {MAX_WORKERS}, got {self.workers}")
        for name, count in self.scale.items():
            if count < 0:
                raise ValueError(f"scale {name}={count}: replicas must be >= 0")
        self._check_gateway_args()

    def _check_gateway_args(self) -> None:
        if isinstance(self.gateway_args, str | bytes):
            one = self.gateway_args
            raise ValueError(f"gateway_args is a sequence of arguments, not a string: ({one!r},)?")
        if not isinstance(self.gateway_args, tuple | list):
            raise ValueError(f"gateway_args must be a tuple of strings, not {self.gateway_args!r}")
        args = tuple(self.gateway_args)
        if not all(isinstance(arg, str) for arg in args):
            raise ValueError(f"gateway_args must all be strings: {args!r}")
        object.__setattr__(self, "gateway_args", args)  # a list given: kept frozen like the rest
        if args and not self.gateway:
            raise ValueError("gateway_args given, but this stack starts no gateway (gateway=False)")
        for arg in args:
            if not arg.strip():
                raise ValueError(f"gateway argument {arg!r}: an empty argument")
            flag = _stack_gateway_flag(arg)
            if flag is not None:
                raise ValueError(
                    f"gateway argument {arg!r}: the stack sets {flag} itself "
                    f"({_STACK_GATEWAY_FLAGS[flag]})"
                )

    def replicas(
        self, deployments: tuple[str, ...], declared: Mapping[str, int] | None = None
    ) -> dict[str, int]:
        """Replicas per deployment: `scale`'s, else `declared` (the manifests'), else 1."""
        unknown = sorted(set(self.scale) - set(deployments))
        if unknown:
            raise ValueError(
                f"scale names {unknown}, not in this stack (deployments: {', '.join(deployments)})"
            )
        declared = declared or {}
        return {d: self.scale.get(d, declared.get(d, 1)) for d in deployments}


class Stack:
    """Start with `await stack.start()`, stop with `await stack.stop()`.

    `report` gets what an operator must see at once (a service that crashed, its restart).
    `placement` runs the processes on several hosts (`make multihost`: network namespaces)
    instead of this machine's loopback: an etcd member and a NATS node on each, replica
    `slot` of every deployment on host ``(slot - 1) % hosts``, the gateway on the first."""

    def __init__(
        self,
        config: StackConfig,
        *,
        report: Callable[[str], None] = print,
        placement: Placement | None = None,
    ) -> None:
        self.config = config
        self.placement = placement
        self.state_dir = config.state_dir.resolve()
        self.tls_dir = self.state_dir / "tls"
        self.ca_dir = self.state_dir / "ca"  # the CA key: never in the TLS dir services read
        self.run_dir = self.state_dir / "run"
        #: Every manifest under services/ (all of them make the policy, not only those run).
        self.manifests = read_manifests()
        self.deployments = config.deployments or tuple(discover_services())
        _check_declared(self.deployments, self.manifests)
        declared = {d: m.replicas for d, m in self.manifests.items()}
        self.counts = config.replicas(self.deployments, declared)
        self.report = report
        self.dev: DevStack | None = None
        self.gateway: GatewayProcess | None = None
        self.supervisor: Supervisor | None = None
        self.info: dict[str, Any] = {}
        #: The secured control plane's certificates and policy (None: plaintext).
        self.control_plane: ControlPlane | None = None
        self._etcd: Etcd | None = None
        self._registry: Discovery | None = None
        self._control: asyncio.Server | None = None

    @property
    def etcd_endpoint(self) -> str:
        if self.dev is None:
            raise RuntimeError("stack not started")
        return self.dev.etcd.endpoint

    def etcd_tls(self, identity: str = OPS_IDENTITY) -> ClientTls | None:
        """How `identity` (a certificate in the stack's TLS directory) reaches the stack's
        etcd: None when it is plaintext. An operator's tools read as `ops`."""
        return etcd_client_tls(self.etcd_endpoints, None, tls.TlsFiles(self.tls_dir, identity))

    @property
    def etcd_endpoints(self) -> list[str]:
        return self.etcd_endpoint.split(",")

    @property
    def serving_path(self) -> Path:
        """The serving policy of this stack (mesh.authz.serving), for every caller in it."""
        return self.state_dir / "serving.toml"

    @property
    def policy_path(self) -> Path:
        """The authorization policy every service of this stack enforces (docs/authz.md)."""
        if self.config.policy is not None:
            return self.config.policy.resolve()
        return self.state_dir / "policy.toml"

    @property
    def control_path(self) -> Path:
        return self.state_dir / CONTROL_SOCKET

    def env(self) -> dict[str, str]:
        if self.dev is None or self.dev.nats is None:
            raise RuntimeError("stack not started")
        return {
            **os.environ,
            "MESH_ETCD": self.dev.etcd.endpoint,
            "MESH_NATS": self.dev.nats.url,
            "MESH_TLS_DIR": str(self.tls_dir),
            "MESH_NAMESPACE": self.config.namespace,
            "MESH_SERVING": str(self.serving_path),
            "MESH_POLICY": str(self.policy_path),
            # svc.trace: every call recorded, for the console (unless the operator says).
            "MESH_TRACE_SAMPLE": os.environ.get("MESH_TRACE_SAMPLE", "1.0"),
            **self.config.extra_env,
        }

    async def start(self) -> dict[str, Any]:
        if self.config.control and await answering(self.control_path):
            raise ControlError(
                f"a stack is already running in {self.state_dir} (its control socket answers); "
                "stop it first, or give this one another --state-dir"
            )
        certs.ensure(
            self.tls_dir,
            [*self.deployments, OPS_IDENTITY, GATEWAY_IDENTITY],
            ca_dir=self.ca_dir,
        )
        if not self.config.insecure_control_plane:
            # Who may do what in etcd and NATS: each deployment its own keys, and the events
            # its manifest publishes.
            publishes = {d: m.publishes for d, m in self.manifests.items()}
            policy = await asyncio.to_thread(
                policy_for, self.deployments, self.config.namespace, publishes=publishes
            )
            placement = self.placement
            self.control_plane = ControlPlane(
                self.tls_dir,
                policy,
                ca_dir=self.ca_dir,
                own_dir=self.state_dir / "controlplane",
                server_hosts=placement.addresses if placement is not None else (),
                admin_hosts=placement.admin_hosts if placement is not None else (),
            )
        # Who may serve what: each deployment the services its code serves, nothing else.
        served = await asyncio.to_thread(lambda: {d: served_services(d) for d in self.deployments})
        self.serving_path.write_text(serving_toml(served))
        self._write_policy(served)
        # Throwaway data: a new stack starts empty.
        shutil.rmtree(self.run_dir, ignore_errors=True)
        (self.run_dir / "logs").mkdir(parents=True)
        self.dev = DevStack(
            self.run_dir,
            control_plane=self.control_plane,
            size=HA_SIZE if self.config.ha else 1,
            placement=self.placement,
        )
        await asyncio.to_thread(self.dev.start)
        try:
            # The stack watches the registry as a reader (ops), like an operator.
            self._etcd = Etcd(self.etcd_endpoints, tls=self.etcd_tls())
            await self._etcd.connect()
            self._registry = Discovery(self._etcd, self.config.namespace)
            await self._registry.start()
            self.supervisor = Supervisor(
                self._launch,
                self._registry,
                serving=self.instance_serving,
                workers=self.workers,
                report=self.report,
                changed=self._write_info,
                ready_timeout=self.config.ready_timeout,
            )
            await self._ensure_streams()
            await self.supervisor.start(self.counts)
            if self.config.gateway:
                await self._start_gateway()
            if self.config.control:
                self._control = await serve_control(self.control_path, self._handle)
        except BaseException:
            await self.stop()
            raise
        self._write_info()
        return self.info

    def _write_policy(self, served: Mapping[str, Sequence[str]]) -> None:
        """Who may call what: the given policy (checked now, not by each service at start),
        or the one composed from the manifests, replaced whole (services reload it)."""
        if self.config.policy is not None:
            load_policy(self.policy_path)  # PolicyError (a ValueError) naming what is wrong
            return
        undeclared = {d: served[d] for d in self.deployments if d not in self.manifests}
        text = compose_policy(
            self.manifests.values(), open_to_mesh=undeclared, mode=self.config.policy_mode
        )
        partial = self.policy_path.with_suffix(".toml.tmp")
        partial.write_text(text)
        partial.replace(self.policy_path)

    async def _ensure_streams(self) -> None:
        """The events and dead-letter streams, so that no service creates them by hand."""
        import nats

        from mesh.events import dead_letter_stream, ensure_stream, events_stream

        if self.dev is None or self.dev.nats is None:
            raise RuntimeError("stack not started")
        # Only the control plane's root may manage streams.
        admin = self.control_plane.admin if self.control_plane is not None else None
        nc = await nats.connect(self.dev.nats.url.split(","), **NatsAccess(admin).options())
        replicas = HA_SIZE if self.config.ha else 1
        if self.placement is not None:
            replicas = min(HA_SIZE, len(self.placement.addresses))
        try:
            js = nc.jetstream()
            await _jetstream_ready(js, self.config.ready_timeout)
            for spec in (events_stream(replicas=replicas), dead_letter_stream(replicas=replicas)):
                await ensure_stream(js, spec)
        finally:
            await nc.close()

    def service_args(self, deployment: str, slot: int, instance_id: str) -> list[str]:
        """The flags of one replica: its lease, data dir and instance id, and its manifest's
        version (what the registry advertises) and drain delay if it says one (the policy and
        the rest come in MESH_* variables)."""
        args = [
            f"--ttl={self.config.lease_ttl}",
            f"--data-dir={self.run_dir / 'data' / f'{deployment}-{slot}'}",
            f"--instance-id={instance_id}",
        ]
        manifest = self.manifests.get(deployment)
        if self.workers(deployment) > 1:
            args.append(f"--workers={self.workers(deployment)}")
        if manifest is not None:
            args.append(f"--version={manifest.version}")
        if manifest is not None and manifest.drain_delay is not None:
            args.append(f"--drain-delay={manifest.drain_delay:g}")
        return args

    def workers(self, deployment: str) -> int:
        """Worker processes per replica of `deployment`: `StackConfig.workers` if it keeps no
        state, else 1."""
        manifest = self.manifests.get(deployment)
        if manifest is not None and manifest.state != State.NONE:
            return 1
        return self.config.workers

    def _launch(self, deployment: str, slot: int, instance_id: str) -> ServiceProcess:
        args = self.service_args(deployment, slot, instance_id)
        log_path = self.run_dir / "logs" / f"{deployment}-{slot}.log"
        process = ServiceProcess(deployment, args, env=self.env(), log_path=log_path)
        if self.placement is not None:
            host = self.placement.replica_host(slot)
            process.args.append(f"--host={self.placement.addresses[host]}")
            process.prefix = self.placement.prefixes[host]
        return process.start()

    @property
    def registry(self) -> Discovery | None:
        """The stack's own watch of the registry (as `ops`), once started."""
        return self._registry

    async def instance_serving(self, instance: keys.Instance) -> bool:
        """Does the instance's own health check say SERVING (asked as an operator would)?"""
        files = tls.TlsFiles(self.tls_dir, OPS_IDENTITY)
        channel = tls.instance_channel(instance.address, instance.identity, files)
        try:
            stub = health_pb2_grpc.HealthStub(channel)
            request = health_pb2.HealthCheckRequest(service=instance.service)
            answer = await stub.Check(request, timeout=5)
        except grpc.aio.AioRpcError as exc:
            log.warning("health check of %s failed: %s", instance.address, exc.details())
            return False
        finally:
            await channel.close()
        return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)

    def _gate_args(self) -> list[str]:
        """The JWT gate, verifying tokens signed with the stack's development key (made in
        `<state-dir>/jwt/` if there is none: tools/devjwt.py, `mesh token`); none when the
        operator's gateway arguments set up the gate themselves (their key, or --no-gate)."""
        if any(_sets_the_gate(arg) for arg in self.config.gateway_args):
            return []
        public_key = ensure_signing_key(self.state_dir)
        return [f"--jwt-public-key={public_key}", f"--jwt-issuer={DEV_ISSUER}"]

    async def _start_gateway(self) -> None:
        args = [
            # The gate first too: an operator's --jwt-issuer or --jwt-audience comes later.
            *self._gate_args(),
            # Documents take files up to 10 MiB as raw bodies: room for one and some slack, so
            # the service itself answers a file a little over its limit (413 naming it).
            # First: an operator's --gateway-arg=--body-limit=... comes later and wins.
            f"--body-limit={STACK_BODY_LIMIT}",
            # As many gateway processes as workers per replica (`mesh up --workers`).
            f"--workers={self.config.workers}",
            *self.config.gateway_args,
            # The stack's own last: for an option given twice argparse keeps the last one.
            f"--etcd={self.etcd_endpoint}",
            f"--namespace={self.config.namespace}",
            f"--nats={self.env()['MESH_NATS']}",
            f"--tls-dir={self.tls_dir}",
            f"--cert-name={GATEWAY_IDENTITY}",
        ]
        if self.placement is not None:
            args.append(f"--host={self.placement.addresses[0]}")
        log_path = self.run_dir / "logs" / "gateway.log"
        gateway = GatewayProcess(args, env=self.env(), log_path=log_path)
        if self.placement is not None:
            gateway.prefix = self.placement.prefixes[0]
        gateway = self.gateway = gateway.start()
        try:
            await asyncio.to_thread(gateway.wait_url, self.config.ready_timeout)
            # Ready means REST works: the gateway has learnt the registered services' routes.
            await asyncio.to_thread(gateway.wait_ready, self.config.ready_timeout)
        except RuntimeError:
            # Both waits stop as soon as the process is gone; what it said is the reason (for a
            # flag it does not take: argparse's one line, after the usage, and status 2).
            if gateway.running:
                raise
            raise _gateway_exited(gateway) from None

    async def _handle(self, request: dict[str, Any], progress: Callable[[str], None]) -> None:
        """A control request (already checked by hms_tools.control.parse_request)."""
        if self.supervisor is None:
            raise ControlError("the stack is not running")
        try:
            if request["command"] == "restart":
                await self.supervisor.restart(request["deployment"], progress)
            elif request["command"] == "scale":
                await self.supervisor.scale(request["deployment"], request["replicas"], progress)
        except OperationFailed as exc:
            raise ControlError(str(exc)) from None

    def _write_info(self) -> None:
        if self.dev is None or self.dev.nats is None or self.supervisor is None:
            return
        self.info = {
            "etcd": self.dev.etcd.endpoint,
            "nats": self.dev.nats.url,
            "namespace": self.config.namespace,
            "ha": self.config.ha,
            "tls_dir": str(self.tls_dir),
            "ops_cert": OPS_IDENTITY,
            "gateway": self.gateway.url if self.gateway is not None else None,
            "policy": str(self.policy_path),
            "control": str(self.control_path) if self._control is not None else None,
            "services": self.supervisor.describe(),
        }
        # Written aside and renamed: a reader never sees half a file.
        path = self.state_dir / STACK_FILE
        partial = path.with_suffix(".json.tmp")
        partial.write_text(json.dumps(self.info, indent=2) + "\n")
        partial.replace(path)

    async def stop(self) -> None:
        """Stop taking control requests, SIGTERM the gateway and every service (they drain
        and deregister), then stop NATS and etcd."""
        if self._control is not None:
            self._control.close()
            self._control = None
            self.control_path.unlink(missing_ok=True)
        if self.gateway is not None:
            await asyncio.to_thread(self.gateway.stop, 15.0)
            self.gateway = None
        if self.supervisor is not None:
            supervisor, self.supervisor = self.supervisor, None
            await supervisor.stop()
        if self._registry is not None:
            await self._registry.stop()
            self._registry = None
        if self._etcd is not None:
            await self._etcd.close()
            self._etcd = None
        if self.dev is not None:
            await asyncio.to_thread(self.dev.stop)
        (self.state_dir / STACK_FILE).unlink(missing_ok=True)


def serving_toml(served: Mapping[str, Sequence[str]]) -> str:
    """The serving policy of a stack: each service may be served by the deployments whose code
    serves it (their SPIFFE IDs).

    >>> print(serving_toml({"notify": ["hms.notify.v1.NotifyService"]}), end="")
    # Written by `mesh up`: who may serve what (docs/security.md).
    [serve]
    "hms.notify.v1.NotifyService" = ["spiffe://hms.local/svc/notify"]
    """
    by_service: dict[str, list[str]] = {}
    for deployment, services in sorted(served.items()):
        for service in services:
            by_service.setdefault(service, []).append(spiffe_id(deployment))
    lines = ["# Written by `mesh up`: who may serve what (docs/security.md).", "[serve]"]
    for service, identities in sorted(by_service.items()):
        lines.append(f'"{service}" = [{", ".join(json.dumps(i) for i in identities)}]')
    return "\n".join(lines) + "\n"
