"""`mesh controlplane init`: make a running etcd and NATS enforce the control plane's policy,
as root: etcd's roles and certificate users, then authentication on
(`hms_tools.controlplane.apply_etcd_policy`), and the event and dead-letter streams, each with
`--stream-replicas` replicas. What `mesh up` does for its own stack at every start, for a
cluster that runs etcd and NATS itself: in Kubernetes, the Job `controlplane-init`
(deploy/k8s/base/controlplane-init.yaml, docs/deploy.md). Idempotent: run it again after the
policy changes.

    mesh controlplane init --policy policy.json --etcd https://etcd:2379 \\
        --nats tls://nats:4222 --tls-dir /etc/hms/root --cert-name root --stream-replicas 3

The policy is the JSON `mesh k8s render` writes into the ConfigMap hms-controlplane.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mesh.controlplane import ClientTls


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "controlplane", help="apply the control plane's policy to a running etcd and NATS"
    )
    actions = parser.add_subparsers(dest="controlplane_command", required=True, metavar="ACTION")
    init = actions.add_parser(
        "init",
        help="etcd roles, users and authentication; the event streams (as root)",
        description="Apply the policy to etcd (roles, certificate users, authentication on) "
        "and create or update the event and dead-letter streams in NATS, with the control "
        "plane's root certificate. Idempotent.",
    )
    init.add_argument(
        "--policy", type=Path, required=True, help="the policy JSON (`mesh k8s render`)"
    )
    init.add_argument(
        "--etcd", required=True, help="one etcd endpoint, https://host:port (etcd's own name)"
    )
    init.add_argument("--nats", default="", help="NATS URL(s), tls://host:port[,...]; none: skip")
    init.add_argument("--tls-dir", type=Path, required=True, help="root's certificate and ca.pem")
    init.add_argument("--cert-name", default="root", help="the certificate (default root)")
    init.add_argument(
        "--stream-replicas", type=int, default=1, help="replicas of each stream (default 1)"
    )
    init.add_argument("--timeout", type=float, default=10.0, help="per call, seconds")
    init.set_defaults(func=run_init)


def etcd_target(endpoint: str) -> str:
    """The gRPC target of an https:// etcd endpoint (host:port); ValueError for plaintext."""
    scheme, sep, rest = endpoint.partition("://")
    if not sep or scheme != "https" or not rest or "/" in rest:
        raise ValueError(f"--etcd {endpoint!r}: give https://host:port (etcd is TLS only here)")
    return rest


def run_init(args: argparse.Namespace) -> int:
    from hms_tools.controlplane import apply_etcd_policy
    from hms_tools.k8s import read_policy
    from mesh.controlplane import ClientTls
    from mesh.tls import TlsFiles

    if args.stream_replicas < 1:
        raise ValueError(f"--stream-replicas {args.stream_replicas}: at least 1")
    target = etcd_target(args.etcd)
    policy = read_policy(args.policy.read_text())
    admin = ClientTls.of(TlsFiles(args.tls_dir, args.cert_name))
    admin.require()
    apply_etcd_policy(target, admin, policy, timeout=args.timeout)
    users = ", ".join(user for user, _ in policy.etcd_users())
    print(f"etcd {target}: {len(policy.etcd_roles())} roles, users {users}; authentication on")
    urls = [u for u in args.nats.split(",") if u]
    if urls:
        for name in asyncio.run(_ensure_streams(urls, admin, policy.prefix, args)):
            print(f"nats: stream {name} ({args.stream_replicas} replicas)")
    return 0


async def _ensure_streams(
    urls: list[str], admin: ClientTls, prefix: str, args: argparse.Namespace
) -> list[str]:
    import nats

    from mesh.controlplane import NatsAccess
    from mesh.events import dead_letter_stream, ensure_stream, events_stream

    nc = await nats.connect(urls, connect_timeout=args.timeout, **NatsAccess(admin).options())
    try:
        done = []
        for spec in (
            events_stream(prefix, replicas=args.stream_replicas),
            dead_letter_stream(prefix, replicas=args.stream_replicas),
        ):
            await ensure_stream(nc.jetstream(), spec)
            done.append(spec.name)
        return done
    finally:
        await nc.close()
