"""`mesh traffic set|show|clear`: the version splits every mesh channel (and the gateway) reads
live from etcd, ``/<ns>/traffic/<service>`` (docs/traffic.md).

    mesh traffic set hms.fees.v1.FeeService 0.2.0=5 0.1.0=95
    mesh traffic show [SERVICE]
    mesh traffic clear SERVICE

Writing a policy is the control plane's to do: on a secured stack (`mesh up`'s) as its root
(`<state-dir>/controlplane/root.pem`), which no service and no operator's `ops` certificate
is; reading, as any reader. A weight is a whole number >= 0; they need not sum to 100 (each
version's share is its weight over the sum), and `show` prints the shares that follow.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

from hms_tools.cli.env import (
    add_identity_arguments,
    add_stack_arguments,
    cli_identity,
    etcd_endpoints,
    etcd_tls,
    namespace,
)

if TYPE_CHECKING:
    from mesh.client.traffic import TrafficPolicy
    from mesh.controlplane import ClientTls
    from mesh.registry.etcd import Etcd

__all__ = ["parse_weights", "register"]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "traffic", help="version splits per service, read live by every mesh channel"
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    common = argparse.ArgumentParser(add_help=False)
    add_stack_arguments(common)
    add_identity_arguments(common)
    set_ = actions.add_parser(
        "set", parents=[common], help="split a service's calls between versions"
    )
    set_.add_argument("service", help="the gRPC service, e.g. hms.fees.v1.FeeService")
    set_.add_argument("weights", nargs="+", metavar="VERSION=WEIGHT", help="e.g. 0.2.0=5")
    show = actions.add_parser("show", parents=[common], help="the splits in force")
    show.add_argument("service", nargs="?", help="one service (default: every one)")
    clear = actions.add_parser("clear", parents=[common], help="remove a service's split")
    clear.add_argument("service")
    parser.set_defaults(func=run)


def parse_weights(words: list[str]) -> TrafficPolicy:
    """`0.2.0=5 0.1.0=95` as a policy; ValueError naming the word that is wrong."""
    from mesh.client.traffic import TrafficPolicy

    weights: dict[str, int] = {}
    for word in words:
        version, sep, weight = word.partition("=")
        if not sep or not version or not (weight.isascii() and weight.isdigit()):
            raise ValueError(f"{word!r}: write VERSION=WEIGHT, a whole number (0.2.0=5)")
        if version in weights:
            raise ValueError(f"version {version} is given twice")
        weights[version] = int(weight)
    return TrafficPolicy.of(weights)


def _writer_tls(args: argparse.Namespace, endpoints: list[str]) -> ClientTls | None:
    """Who writes a policy: the control plane's root on a secured stack."""
    from hms_tools.controlplane import ADMIN_IDENTITY, default_own_dir
    from mesh.controlplane import ClientTls, etcd_uses_tls
    from mesh.tls import TlsFiles

    identity = cli_identity(args)
    if not etcd_uses_tls(endpoints) or identity is None:
        return etcd_tls(args, endpoints, identity)
    root = TlsFiles(default_own_dir(Path(identity.tls_dir)), ADMIN_IDENTITY)
    if not (root.cert.is_file() and root.key.is_file()):
        raise FileNotFoundError(
            f"writing a traffic policy takes the control plane's root certificate, and "
            f"{root.cert} is not here (the operator's `ops` may only read)"
        )
    return ClientTls.of(root)


async def _show(etcd: Etcd, ns: str, service: str | None) -> list[str]:
    from mesh.client.traffic import TrafficPolicy, traffic_prefix

    prefix = traffic_prefix(ns)
    _, items = await etcd.get_prefix(prefix + (service or "").encode())
    lines = []
    for item in items:
        name = item.key[len(prefix) :].decode(errors="replace")
        if service is not None and name != service:
            continue
        try:
            policy = TrafficPolicy.parse(item.value)
        except ValueError as exc:
            lines.append(f"{name}: REFUSED by every channel ({exc}); the last good one holds")
            continue
        shares = ", ".join(f"{v} {share:.1%}" for v, share in policy.shares().items())
        lines.append(f"{name}: {shares}")
    return lines or [f"(no traffic policy under /{ns}/traffic/{service or ''})"]


async def _act(args: argparse.Namespace) -> list[str]:
    from mesh.client.traffic import traffic_key
    from mesh.registry.etcd import Etcd

    endpoints = etcd_endpoints(args)
    ns = namespace(args)
    if args.action == "show":
        tls = etcd_tls(args, endpoints, cli_identity(args))
    else:
        tls = _writer_tls(args, endpoints)
    async with Etcd(endpoints, tls=tls) as etcd:
        if args.action == "set":
            policy = parse_weights(args.weights)
            await etcd.put(traffic_key(ns, args.service), policy.to_json())
            return await _show(etcd, ns, args.service)
        if args.action == "clear":
            deleted = await etcd.delete(traffic_key(ns, args.service))
            return [f"{args.service}: cleared" if deleted else f"{args.service}: had no policy"]
        return await _show(etcd, ns, args.service)


def run(args: argparse.Namespace) -> int:
    from mesh.registry.etcd import EtcdDenied, EtcdUnavailable

    try:
        lines = asyncio.run(_act(args))
    except EtcdDenied as exc:
        raise ConnectionError(f"etcd refused: {exc}") from exc
    except EtcdUnavailable as exc:
        raise ConnectionError(f"etcd did not answer: {exc}") from exc
    for line in lines:
        print(line)
    return 0
