"""Where the CLI finds the stack: flags, then the environment, then `<state-dir>/stack.json`.

That holds for etcd and NATS as for their TLS settings (README.md, "Environment"): an
``https://`` etcd endpoint or a ``tls://`` NATS URL is reached over TLS as a mesh identity, by
default the stack's operator certificate (`ops`, a reader), from `--tls-dir` (``MESH_TLS_DIR``,
else the stack's); `--etcd-ca/--etcd-cert/--etcd-key` and `--nats-ca/--nats-cert/--nats-key/
--nats-creds` (``MESH_ETCD_CA``, ...) replace any of its files.

Nothing from the library is imported until a command runs: `mesh --help` stays fast.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hms_tools.stackfile import read_stack_file

if TYPE_CHECKING:
    from mesh.controlplane import ClientTls, NatsAccess
    from mesh.tls import TlsFiles

__all__ = [
    "add_identity_arguments",
    "add_nats_tls_arguments",
    "add_stack_arguments",
    "cli_identity",
    "etcd_endpoints",
    "etcd_tls",
    "namespace",
    "nats_settings",
]

#: The certificate operators' commands present when none is named (a reader).
OPERATOR_CERT = "ops"


def add_stack_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--etcd", help="etcd endpoint(s), [https://]host:port[,...] (env MESH_ETCD)"
    )
    parser.add_argument("--namespace", help="registry namespace (env MESH_NAMESPACE, default hms)")
    parser.add_argument("--state-dir", type=Path, default=Path(".mesh"), help="default .mesh/")
    _add_tls_files(parser, "etcd")


def add_identity_arguments(parser: argparse.ArgumentParser) -> None:
    """`--tls-dir` and `--cert-name`: who an operator's command is to etcd and NATS."""
    parser.add_argument("--tls-dir", help="certificates (env MESH_TLS_DIR, else the stack's)")
    parser.add_argument(
        "--cert-name",
        help=f"the certificate to present (default: the stack's operator one, {OPERATOR_CERT})",
    )


def add_nats_tls_arguments(parser: argparse.ArgumentParser) -> None:
    _add_tls_files(parser, "nats")
    parser.add_argument(
        "--nats-creds", help="a NATS credentials file: user JWT and NKEY seed (env MESH_NATS_CREDS)"
    )


def _add_tls_files(parser: argparse.ArgumentParser, system: str) -> None:
    group = parser.add_argument_group(
        f"{system} TLS", f"replace the mesh identity's files for {system} (and make it TLS)"
    )
    for part, what in (("ca", "CA certificate"), ("cert", "client certificate"), ("key", "key")):
        variable = f"MESH_{system.upper()}_{part.upper()}"
        group.add_argument(f"--{system}-{part}", help=f"{what} (env {variable})")


def etcd_endpoints(args: argparse.Namespace) -> list[str]:
    value = args.etcd or os.environ.get("MESH_ETCD")
    if not value:
        try:
            value = read_stack_file(args.state_dir)["etcd"]
        except FileNotFoundError as exc:
            raise FileNotFoundError(
                f"no etcd endpoint: pass --etcd, set MESH_ETCD, or {exc}"
            ) from exc
    return [e for e in str(value).split(",") if e]


def namespace(args: argparse.Namespace) -> str:
    return str(args.namespace or os.environ.get("MESH_NAMESPACE") or "hms")


def _stack(state_dir: Path) -> dict[str, Any]:
    try:
        return read_stack_file(state_dir)
    except (FileNotFoundError, ValueError):
        return {}


def cli_identity(args: argparse.Namespace, env: Mapping[str, str] = os.environ) -> TlsFiles | None:
    """The mesh identity an operator's command presents: `--tls-dir` (else ``MESH_TLS_DIR``,
    else the stack's) and `--cert-name` (else the stack's operator certificate); None when no
    TLS directory is known."""
    from mesh.tls import TlsFiles

    stack = _stack(args.state_dir)
    tls_dir = getattr(args, "tls_dir", None) or env.get("MESH_TLS_DIR") or stack.get("tls_dir")
    if not tls_dir:
        return None
    name = getattr(args, "cert_name", None) or stack.get("ops_cert") or OPERATOR_CERT
    return TlsFiles(Path(tls_dir), str(name))


def _files(args: argparse.Namespace, system: str, env: Mapping[str, str]) -> list[str | None]:
    return [
        getattr(args, f"{system}_{part}", None) or env.get(f"MESH_{system.upper()}_{part.upper()}")
        for part in ("ca", "cert", "key")
    ]


def etcd_tls(
    args: argparse.Namespace,
    endpoints: Sequence[str],
    identity: TlsFiles | None,
    env: Mapping[str, str] = os.environ,
) -> ClientTls | None:
    """etcd's TLS settings: the files given (gaps from `identity`), else `identity` itself
    for https:// endpoints, else None (plaintext)."""
    from mesh.controlplane import TlsOverrides, etcd_client_tls

    given = TlsOverrides.of(*_files(args, "etcd", env)).resolve(identity, "etcd")
    return etcd_client_tls(endpoints, given, identity)


def nats_settings(
    args: argparse.Namespace,
    urls: Sequence[str],
    identity: TlsFiles | None,
    env: Mapping[str, str] = os.environ,
) -> NatsAccess:
    """NATS's settings: the TLS files given (gaps from `identity`), else `identity` itself
    for tls:// URLs; a credentials file if given."""
    from mesh.controlplane import TlsOverrides, nats_access

    given = TlsOverrides.of(*_files(args, "nats", env)).resolve(identity, "nats")
    creds = getattr(args, "nats_creds", None) or env.get("MESH_NATS_CREDS")
    return nats_access(urls, given, identity, Path(creds) if creds else None)
