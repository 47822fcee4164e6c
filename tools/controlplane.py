"""The secured control plane, server side: who may do what in etcd and NATS, and the servers
made to enforce it (docs/security.md, "The control plane: etcd and NATS").

Every identity is a certificate from the stack's CA. etcd (``--client-cert-auth``) knows it by
its CN, the certificate name; NATS (``verify_and_map``) by its SPIFFE ID. A `Policy` names them
and what each may do:

======================  =============================================  ==========================
identity                etcd (role)                                    NATS (permissions)
======================  =============================================  ==========================
deployment ``d``        read ``/<ns>/services/``; read and write       publish its own event
                        ``/<ns>/services/<svc>/d-`` for each gRPC      types, its dead letters
                        service ``svc`` it serves (instance ids start  ``<p>.dlq.d.>``, the
                        with the deployment: ``d-<slot>-<hex>``)       JetStream API of its own
                                                                       consumers ``d__<type>``
                                                                       and its telemetry
                                                                       ``svc.trace.>``,
                                                                       ``svc.mesh.>``; subscribe
                                                                       to its inbox
                                                                       ``_INBOX.d.>`` only
reader (ops, gateway)   read ``/<ns>/services/``                       ops: look (stream and
                                                                       consumer info, tail) and
                                                                       subscribe ``svc.>``;
                                                                       gateway: publish its
                                                                       telemetry only
root (``mesh up``)      etcd's root role                               everything (streams)
======================  =============================================  ==========================

The telemetry subjects are core NATS, never stored: ``svc.trace.<service>`` and
``svc.mesh.<service>`` (mesh.tracerecords), read by the console as ``ops``. A deployment's
telemetry names any service (a client records the calls it makes to others), so the
permission is the whole of ``svc.trace.>`` and ``svc.mesh.>``: a deployment can write
misleading telemetry about another, which is what telemetry, never authority, may suffer.

A deployment's own event types are those its manifest publishes (services/<d>/service.toml,
`publishes`; none if it says none): `mesh up` passes them to `policy_for`. A deployment
without a manifest (a test backend) publishes those of its contract package ``hms.<d>``
(``-`` read as ``_``), on ``hms.events.hms.<d>.>``. Its consumers are allowed by name for
every event type the contracts define (`contract_message_types`), since a consumer name is
one subject token and NATS permissions cannot match part of one.

>>> policy = Policy((Grant("notify", ("hms.notify.v1.NotifyService",)),))
>>> [role.name for role in policy.etcd_roles()]
['hms-reader', 'hms-deployment-notify']
"""

from __future__ import annotations

import importlib
import json
import os
import socket
import ssl
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mesh.controlplane import ClientTls
from mesh.events.subjects import DEFAULT_PREFIX, consumer_name, stream_name
from mesh.identity import check_deployment, spiffe_id
from mesh.registry import keys
from mesh.tls import TlsFiles
from mesh.tracerecords import MESH_PREFIX, TRACE_PREFIX

__all__ = [
    "ADMIN_IDENTITY",
    "ETCD_SERVER",
    "NATS_SERVER",
    "RESERVED_NAMES",
    "ControlPlane",
    "EtcdRole",
    "Grant",
    "NatsUser",
    "Policy",
    "apply_etcd_policy",
    "contract_message_types",
    "nats_ping",
    "policy_for",
    "served_services",
]

#: The control plane's administrator: etcd's root user, NATS's user allowed everything.
#: `mesh up` alone uses it (to set etcd up and to create the event streams).
ADMIN_IDENTITY = "root"
#: The certificates etcd and nats-server serve with (never client identities).
ETCD_SERVER = "etcd"
NATS_SERVER = "nats"
RESERVED_NAMES = frozenset({ADMIN_IDENTITY, ETCD_SERVER, NATS_SERVER})
#: Identities that only read the registry: operators' tools and the gateway.
DEFAULT_READERS = ("ops", "gateway")
#: Of those, the ones that may look at the event streams (`mesh events ls|tail`) and listen
#: to the mesh's telemetry (`mesh console`).
DEFAULT_OBSERVERS = ("ops",)
#: Of those, the ones that publish telemetry (the gateway's svc.trace records).
DEFAULT_TELEMETRY_READERS = ("gateway",)
#: What every deployment (and those readers) may publish: svc.trace and svc.mesh records.
TELEMETRY_PUBLISH = (f"{TRACE_PREFIX}.>", f"{MESH_PREFIX}.>")
#: What observers may subscribe to: all of the mesh's telemetry.
TELEMETRY_SUBSCRIBE = "svc.>"

_READ, _WRITE, _READWRITE = 0, 1, 2  # etcd's authpb.Permission.Type


def contract_message_types(package: str = "hms") -> tuple[str, ...]:
    """Every top-level message type of the generated contracts (the ``*_pb2`` modules of
    `package` under ``gen/``, namespace packages without ``__init__``)."""
    try:
        root = importlib.import_module(package)
    except ImportError:
        return ()
    names: set[str] = set()
    for directory in (Path(p) for p in root.__path__):
        for path in sorted(directory.rglob("*_pb2.py")):
            parts = path.relative_to(directory).with_suffix("").parts
            module = importlib.import_module(".".join((package, *parts)))
            names.update(m.full_name for m in module.DESCRIPTOR.message_types_by_name.values())
    return tuple(sorted(names))


@dataclass(frozen=True)
class Grant:
    """What deployment `deployment` may do: register instances of `services`, publish events
    whose type matches one of `publishes` (NATS subject patterns over full Protobuf names;
    None: its contract package ``hms.<deployment>.>``)."""

    deployment: str
    services: tuple[str, ...] = ()
    publishes: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        check_deployment(self.deployment)
        for service in self.services:
            keys.service_prefix("hms", service)  # ValueError naming a malformed service
        for pattern in self.publishes or ():
            if not pattern or any(not token for token in pattern.split(".")):
                raise ValueError(f"{self.deployment}: publish pattern {pattern!r} is malformed")

    def publish_patterns(self) -> tuple[str, ...]:
        if self.publishes is not None:
            return self.publishes
        return (f"hms.{self.deployment.replace('-', '_')}.>",)


@dataclass(frozen=True)
class EtcdRole:
    name: str
    #: (permission type: 0 read, 1 write, 2 readwrite; key; range end) as etcd takes them.
    permissions: tuple[tuple[int, bytes, bytes], ...]


@dataclass(frozen=True)
class NatsUser:
    user: str  # the SPIFFE ID verify_and_map finds in the client's certificate
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]


@dataclass(frozen=True)
class Policy:
    """The identities of one stack and what each may do (see the module's table)."""

    grants: tuple[Grant, ...]
    namespace: str = "hms"
    #: The events' subject prefix (mesh.events.subjects).
    prefix: str = DEFAULT_PREFIX
    readers: tuple[str, ...] = DEFAULT_READERS
    observers: tuple[str, ...] = DEFAULT_OBSERVERS
    #: Readers that publish telemetry (svc.trace, svc.mesh) and nothing else; None: the
    #: gateway, if it is a reader.
    telemetry: tuple[str, ...] | None = None
    #: Event types a deployment may consume (one consumer each): by default every message
    #: type of the generated contracts, read when the policy is made.
    event_types: tuple[str, ...] = field(default_factory=contract_message_types)

    def __post_init__(self) -> None:
        keys.services_prefix(self.namespace)  # ValueError naming a bad namespace
        names = [g.deployment for g in self.grants] + list(self.readers)
        for name in names:
            check_deployment(name, "identity")
            if name in RESERVED_NAMES:
                raise ValueError(
                    f"{name!r} is the control plane's own identity: name the deployment "
                    f"otherwise (reserved: {', '.join(sorted(RESERVED_NAMES))})"
                )
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"identities named more than once: {', '.join(duplicates)}")
        unknown = sorted(set(self.observers) - set(self.readers))
        if unknown:
            raise ValueError(f"observers {unknown} must be readers too")
        if self.telemetry is None:
            chosen = tuple(r for r in DEFAULT_TELEMETRY_READERS if r in self.readers)
            object.__setattr__(self, "telemetry", chosen)
        unknown = sorted(set(self.telemetry or ()) - set(self.readers))
        if unknown:
            raise ValueError(f"telemetry publishers {unknown} must be readers too")
        if self.prefix == TELEMETRY_SUBSCRIBE.partition(".")[0]:
            raise ValueError(
                f"events prefix {self.prefix!r} is the mesh's telemetry's: choose another"
            )

    # -- etcd -------------------------------------------------------------------------------

    @property
    def reader_role(self) -> str:
        return f"{self.namespace}-reader"

    def deployment_role(self, deployment: str) -> str:
        return f"{self.namespace}-deployment-{deployment}"

    def etcd_roles(self) -> list[EtcdRole]:
        registry = keys.services_prefix(self.namespace)
        read = (_READ, registry, _range_end(registry))
        # Traffic policies (`mesh traffic`): every mesh channel reads them; root writes.
        traffic = f"/{self.namespace}/traffic/".encode()
        read_traffic = (_READ, traffic, _range_end(traffic))
        roles = [EtcdRole(self.reader_role, (read, read_traffic))]
        for grant in self.grants:
            own = []
            for service in grant.services:
                # Instance ids start with the deployment's name and a dash.
                service_keys = keys.service_prefix(self.namespace, service)
                mine = service_keys + f"{grant.deployment}-".encode()
                own.append((_READWRITE, mine, _range_end(mine)))
            roles.append(
                EtcdRole(self.deployment_role(grant.deployment), (read, read_traffic, *own))
            )
        return roles

    def etcd_users(self) -> list[tuple[str, str]]:
        """(user, role): the CN of each certificate, and the role it gets."""
        users = [(g.deployment, self.deployment_role(g.deployment)) for g in self.grants]
        users += [(reader, self.reader_role) for reader in self.readers]
        return [(ADMIN_IDENTITY, "root"), *users]

    # -- NATS -------------------------------------------------------------------------------

    def nats_users(self) -> list[NatsUser]:
        events, dlq = f"{self.prefix}.events", f"{self.prefix}.dlq"
        stream = stream_name(self.prefix, "events")
        users = [NatsUser(spiffe_id(ADMIN_IDENTITY), (">",), (">",))]
        for grant in self.grants:
            d = grant.deployment
            publish = [f"{events}.{pattern}" for pattern in grant.publish_patterns()]
            publish.append(f"{dlq}.{d}.>")
            for event_type in self.event_types:
                consumer = consumer_name(d, event_type)
                publish += [
                    f"$JS.API.CONSUMER.CREATE.{stream}.{consumer}.{events}.{event_type}",
                    f"$JS.API.CONSUMER.INFO.{stream}.{consumer}",
                    f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}",
                    f"$JS.ACK.{stream}.{consumer}.>",
                ]
            publish += TELEMETRY_PUBLISH
            users.append(NatsUser(spiffe_id(d), tuple(publish), (f"_INBOX.{d}.>",)))
        for reader in self.readers:
            user = self._reader_user(reader)
            if user is not None:
                users.append(user)
        return users

    def _reader_user(self, reader: str) -> NatsUser | None:
        """What a reader may do in NATS: observers look at the streams and listen to the
        telemetry, telemetry publishers publish it; None (no NATS user) for the others."""
        publish: list[str] = []
        subscribe: list[str] = []
        if reader in self.observers:
            publish += (
                "$JS.API.INFO",
                "$JS.API.STREAM.NAMES",
                "$JS.API.STREAM.LIST",
                "$JS.API.STREAM.INFO.*",
                "$JS.API.CONSUMER.NAMES.*",
                "$JS.API.CONSUMER.LIST.*",
                "$JS.API.CONSUMER.INFO.*.*",
                # `mesh events tail`: an ephemeral ordered consumer, and its flow control.
                "$JS.API.CONSUMER.CREATE.*",
                "$JS.FC.>",
            )
            subscribe.append(TELEMETRY_SUBSCRIBE)
        if reader in (self.telemetry or ()):
            publish += TELEMETRY_PUBLISH
        if not publish:
            # No user at all: nats-server reads an empty allow list as "everything".
            return None
        return NatsUser(spiffe_id(reader), tuple(publish), (*subscribe, f"_INBOX.{reader}.>"))

    def nats_authorization(self) -> str:
        """nats-server's ``authorization`` block for these users (strings JSON-quoted)."""
        lines = ["authorization {", "  users = ["]
        for user in self.nats_users():
            publish = json.dumps({"allow": list(user.publish)})
            subscribe = json.dumps({"allow": list(user.subscribe)})
            lines.append(
                f"    {{user: {json.dumps(user.user)}, permissions: "
                f"{{publish: {publish}, subscribe: {subscribe}}}}}"
            )
        lines += ["  ]", "}"]
        return "\n".join(lines) + "\n"


def _range_end(prefix: bytes) -> bytes:
    """The end of the key range of every key starting with `prefix` (etcd's --prefix)."""
    end = bytearray(prefix)
    for i in reversed(range(len(end))):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\0"


def default_own_dir(tls_dir: Path) -> Path:
    """Where the control plane keeps its own certificates unless told: beside the TLS
    directory, never in it (``controlplane`` beside ``tls``, ``<name>-controlplane`` beside
    any other), so that a process given the TLS directory holds no administrator's key.

    >>> default_own_dir(Path(".mesh/tls"))
    PosixPath('.mesh/controlplane')
    """
    tls_dir = Path(os.path.abspath(tls_dir)) if Path(tls_dir).name in ("", ".", "..") else tls_dir
    name = "controlplane" if tls_dir.name == "tls" else f"{tls_dir.name}-controlplane"
    return Path(tls_dir).with_name(name)


@dataclass(frozen=True)
class ControlPlane:
    """Where a secured etcd and NATS find their certificates, and the policy they enforce.

    Clients are the identities of the TLS directory (``<tls-dir>/<name>.pem``, the mesh CA
    ``ca.pem``). The control plane's own certificates, root's and the servers', are issued by
    the same CA into `own_dir`, apart: whoever holds root's key may switch authentication off.
    """

    tls_dir: Path
    policy: Policy
    #: The CA key's directory (tools/certs.py; None: beside the TLS directory).
    ca_dir: Path | None = None
    #: root's and the servers' certificates (None: `default_own_dir`).
    own_dir: Path | None = None
    #: Addresses (or DNS names) the servers are reached at besides loopback: each host of a
    #: cluster spread over machines. Peers and clients check the one they dialled.
    server_hosts: tuple[str, ...] = ()
    #: Addresses root's certificate names: where the stack's own tools connect from, when
    #: not loopback (etcd checks a client certificate's addresses on its metrics port).
    admin_hosts: tuple[str, ...] = ()

    @property
    def directory(self) -> Path:
        return Path(self.own_dir) if self.own_dir is not None else default_own_dir(self.tls_dir)

    def ensure_certificates(self) -> None:
        """root's and the servers' certificates, issued from the stack's CA if missing (the
        CA certificate copied beside them, so that they are checked against the CA in force)."""
        from hms_tools import certs

        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)  # whatever the umask; ensure() checks it again
        ca = (Path(self.tls_dir) / "ca.pem").read_bytes()
        target = self.directory / "ca.pem"
        if not target.exists() or target.read_bytes() != ca:
            partial = target.with_suffix(".pem.tmp")
            partial.write_bytes(ca)
            partial.chmod(0o644)
            partial.replace(target)
        hosts = {
            ETCD_SERVER: self.server_hosts,
            NATS_SERVER: self.server_hosts,
            ADMIN_IDENTITY: self.admin_hosts,
        }
        certs.ensure(self.directory, sorted(RESERVED_NAMES), ca_dir=self._ca_dir(), hosts=hosts)

    def _ca_dir(self) -> Path:
        from hms_tools import certs

        return Path(self.ca_dir) if self.ca_dir is not None else certs.default_ca_dir(self.tls_dir)

    def server_files(self, name: str) -> TlsFiles:
        return TlsFiles(self.directory, name)

    @property
    def admin(self) -> ClientTls:
        return ClientTls.of(TlsFiles(self.directory, ADMIN_IDENTITY))


def apply_etcd_policy(target: str, admin: ClientTls, policy: Policy, timeout: float = 5.0) -> None:
    """Make etcd at `target` enforce `policy`: its roles and users (certificate users, with no
    password), then authentication on. Idempotent: what exists is kept, what is missing is
    added, so it also runs on an etcd restarted on its old data."""
    import grpc
    from aetcd import rpc

    channel = grpc.secure_channel(target, admin.grpc_credentials())
    try:
        auth = rpc.AuthStub(channel)

        def call(method: str, request: object, *, exists: str = "") -> None:
            try:
                getattr(auth, method)(request, timeout=timeout)
            except grpc.RpcError as exc:
                details = exc.details() or ""  # type: ignore[attr-defined]
                if not (exists and exists in details):
                    raise RuntimeError(f"etcd {method}: {details}") from exc

        for role in policy.etcd_roles():
            call("RoleAdd", rpc.AuthRoleAddRequest(name=role.name), exists="already exists")
            for kind, key, end in role.permissions:
                permission = rpc.Permission(permType=kind, key=key, range_end=end)
                call(
                    "RoleGrantPermission",
                    rpc.AuthRoleGrantPermissionRequest(name=role.name, perm=permission),
                )
        no_password = rpc.UserAddOptions(no_password=True)
        for user, role in policy.etcd_users():
            request = rpc.AuthUserAddRequest(name=user, options=no_password)
            call("UserAdd", request, exists="already exists")
            call("UserGrantRole", rpc.AuthUserGrantRoleRequest(user=user, role=role))
        status = auth.AuthStatus(rpc.AuthStatusRequest(), timeout=timeout)
        if not status.enabled:
            call("AuthEnable", rpc.AuthEnableRequest())
    finally:
        channel.close()


def nats_ping(host: str, port: int, context: ssl.SSLContext, timeout: float = 1.0) -> str:
    """Speak just enough NATS to know a TLS nats-server serves and accepts us: INFO, the TLS
    upgrade, CONNECT and PING. Returns what it answered ("PONG" when ready, "-ERR ..." when
    it refuses); OSError or ssl.SSLError when it does not answer."""
    with socket.create_connection((host, port), timeout) as raw:
        info = b""
        while not info.endswith(b"\r\n"):
            chunk = raw.recv(1)
            if not chunk:
                raise ConnectionError("nats-server closed before INFO")
            info += chunk
        with context.wrap_socket(raw, server_hostname=host) as tls:
            tls.sendall(b'CONNECT {"verbose":false,"pedantic":false,"tls_required":true}\r\n')
            tls.sendall(b"PING\r\n")
            answer = tls.recv(4096).decode(errors="replace").strip()
    return answer


def served_services(package: str) -> tuple[str, ...]:
    """The gRPC services a deployment's code serves: the generated ``...Servicer`` classes
    that classes of its package (``hms_services.<package>``, or a test backend) subclass,
    found by importing its main module."""
    from hms_tools.devstack import service_module

    main = service_module(package)
    importlib.import_module(main)
    root = main.rsplit(".", 1)[0] + "."
    found: set[str] = set()
    for name, module in list(sys.modules.items()):
        if not name.startswith(root) or module is None:
            continue
        for value in list(vars(module).values()):
            if isinstance(value, type) and value.__module__.startswith(root):
                found.update(_servicer_names(value))
    return tuple(sorted(found))


def _servicer_names(cls: type) -> Iterable[str]:
    for base in cls.__mro__[1:]:
        if base.__name__.endswith("Servicer") and base.__module__.endswith("_pb2_grpc"):
            pb2 = importlib.import_module(base.__module__.removesuffix("_grpc"))
            service = pb2.DESCRIPTOR.services_by_name.get(base.__name__.removesuffix("Servicer"))
            if service is not None:
                yield service.full_name


def policy_for(
    deployments: Sequence[str],
    namespace: str = "hms",
    prefix: str = DEFAULT_PREFIX,
    *,
    publishes: Mapping[str, Sequence[str]] | None = None,
) -> Policy:
    """The policy of a stack running `deployments`: their services found in their code, the
    event types each publishes from `publishes` (the manifests' `publishes`; a deployment not
    in it, one without a manifest, publishes its contract package's)."""
    declared = publishes or {}
    grants = tuple(
        Grant(d, served_services(d), tuple(declared[d]) if d in declared else None)
        for d in deployments
    )
    return Policy(grants, namespace=namespace, prefix=prefix)
