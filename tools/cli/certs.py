"""`mesh certs`: the local certificate authority.

    mesh certs init  [--tls-dir DIR] [--ca-dir DIR]          create the CA (once)
    mesh certs issue NAME [--deployment D] [--tls-dir DIR] [--ca-dir DIR]
                                                             issue or rotate NAME's certificate
    mesh certs show  [NAME] [--tls-dir DIR] [--ca-dir DIR]   identity, DNS names, expiry
    mesh certs k8s-secrets [--namespace NS] [--out FILE] [--tls-dir DIR] [--ca-dir DIR]
                                                             every identity as a Kubernetes
                                                             Secret (tools/k8s_secrets.py)

``--tls-dir`` (what services read: certificates, keys, ``ca.pem``) defaults to
``$MESH_TLS_DIR``, else ``.mesh/tls``. ``--ca-dir`` (the CA key, kept apart from the TLS
directory) defaults to the directory beside it: ``.mesh/ca`` beside ``.mesh/tls``,
``<dir>-ca`` beside any other ``<dir>`` (`hms_tools.certs.default_ca_dir`). Each command first
makes both directories safe: a CA key still in the TLS directory is moved out, looser modes are
tightened (0700, 0600, 0644), and files of another user are refused; each change is logged.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mesh.identity import CertInfo


DEFAULT_TLS_DIR = Path(".mesh/tls")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `certs` command and its `init`, `issue` and `show` subcommands to `sub`."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--tls-dir",
        type=Path,
        default=None,
        help=f"certificates services read (default: $MESH_TLS_DIR, else {DEFAULT_TLS_DIR})",
    )
    common.add_argument(
        "--ca-dir",
        type=Path,
        default=None,
        help="the CA key, apart from the TLS directory (default: beside it, "
        "ca/ beside tls/, else <dir>-ca)",
    )
    parser = sub.add_parser("certs", help="local certificate authority and mTLS certificates")
    actions = parser.add_subparsers(dest="certs_command", required=True, metavar="ACTION")

    init = actions.add_parser("init", parents=[common], help="create the mesh CA")
    init.set_defaults(func=run_init)

    issue = actions.add_parser(
        "issue", parents=[common], help="issue (or rotate) a certificate for NAME"
    )
    issue.add_argument("name", metavar="NAME", help="certificate name, e.g. notify")
    issue.add_argument(
        "--deployment", default=None, help="deployment in the SPIFFE ID (default: NAME)"
    )
    issue.set_defaults(func=run_issue)

    show = actions.add_parser("show", parents=[common], help="describe the CA and certificates")
    show.add_argument("name", metavar="NAME", nargs="?", help="one certificate (default: all)")
    show.set_defaults(func=run_show)

    k8s = actions.add_parser(
        "k8s-secrets",
        parents=[common],
        help="every identity of the cluster as a kubernetes.io/tls Secret (YAML)",
        description="Issue (where due) and print a Secret <name>-tls (tls.crt, tls.key, "
        "ca.crt) for each service, the gateway, ops, root, etcd and nats, from the local CA; "
        "etcd's and nats' certificates name their in-cluster DNS names. The CA key is never "
        "printed. `mesh certs k8s-secrets | kubectl apply -f -`.",
    )
    k8s.add_argument("--namespace", default="hms", help="the Kubernetes namespace (default hms)")
    k8s.add_argument(
        "--out",
        type=Path,
        default=None,
        help="write the YAML to this file (mode 0600: it holds keys) instead of printing",
    )
    k8s.add_argument("--root", type=Path, default=None, help="the checkout whose services/ to read")
    k8s.set_defaults(func=run_k8s_secrets)


def tls_dir_from(arg: Path | None, environ: Mapping[str, str]) -> Path:
    """The flag if given, else ``MESH_TLS_DIR``, else ``.mesh/tls``."""
    if arg is not None:
        return arg
    return Path(environ["MESH_TLS_DIR"]) if environ.get("MESH_TLS_DIR") else DEFAULT_TLS_DIR


def ca_dir_from(arg: Path | None, tls_dir: Path) -> Path:
    """The flag if given, else the directory beside `tls_dir` (``.mesh/ca`` for ``.mesh/tls``)."""
    from hms_tools import certs

    return arg if arg is not None else certs.default_ca_dir(tls_dir)


def run_init(args: argparse.Namespace) -> int:
    """`mesh certs init`: create the CA unless there is one already (its directories are made
    safe either way)."""
    from hms_tools import certs

    tls_dir = tls_dir_from(args.tls_dir, os.environ)
    ca_dir = ca_dir_from(args.ca_dir, tls_dir)
    try:
        certs.create_ca(tls_dir, ca_dir=ca_dir)
    except FileExistsError as exc:
        print(f"CA already exists ({exc}); left as it is")
        return 0
    print(f"wrote {tls_dir / certs.CA_CERT} (the CA certificate services verify peers with)")
    print(f"wrote {ca_dir / certs.CA_KEY} (key mode 0600; keep it out of the TLS directory)")
    return 0


def run_issue(args: argparse.Namespace) -> int:
    """`mesh certs issue NAME`: sign a certificate for NAME, replacing any older one."""
    from hms_tools import certs

    tls_dir = tls_dir_from(args.tls_dir, os.environ)
    ca_dir = ca_dir_from(args.ca_dir, tls_dir)
    cert_path = certs.issue(tls_dir, args.name, ca_dir=ca_dir, deployment=args.deployment)
    info = certs.describe(cert_path.read_bytes())
    print(f"wrote {cert_path} and {tls_dir / f'{args.name}-key.pem'} (key mode 0600)")
    print(f"  identity  {', '.join(info.uris)}")
    print(f"  expires   {info.not_after:%Y-%m-%d %H:%M UTC}")
    return 0


def run_show(args: argparse.Namespace) -> int:
    """`mesh certs show [NAME]`: print identity, DNS names and expiry."""
    from hms_tools import certs

    tls_dir = tls_dir_from(args.tls_dir, os.environ)
    ca_key = ca_dir_from(args.ca_dir, tls_dir) / certs.CA_KEY
    if args.name is not None:
        paths = [tls_dir / f"{args.name}.pem"]
    else:
        paths = sorted(p for p in tls_dir.glob("*.pem") if not p.name.endswith("-key.pem"))
        if not paths:
            raise FileNotFoundError(f"no certificates in {tls_dir} (run `mesh certs init`)")
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"no certificate {path} (run `mesh certs issue {args.name}`)")
        _print_cert(path, certs.describe(path.read_bytes()), ca_key)
    if (tls_dir / certs.CA_KEY).exists():
        print(
            f"WARNING: {tls_dir / certs.CA_KEY} is a CA key in the TLS directory services read; "
            "`mesh certs init` moves it out"
        )
    return 0


def _print_cert(path: Path, info: CertInfo, ca_key: Path) -> None:
    print(f"{path}{'  (CA)' if info.is_ca else ''}")
    print(f"  subject   {info.subject}")
    if info.is_ca:
        where = f"{ca_key}" if ca_key.exists() else f"not in {ca_key.parent} (see --ca-dir)"
        print(f"  key       {where}")
    if not info.is_ca:
        identity = info.uris[0] if len(info.uris) == 1 else f"INVALID: {len(info.uris)} URI SANs"
        print(f"  identity  {identity}")
        print(f"  dns       {', '.join(info.dns_names) or '-'}")
        print(f"  ip        {', '.join(info.ip_addresses) or '-'}")
    print(f"  serial    {info.serial:x}")
    print(f"  expires   {info.not_after:%Y-%m-%d %H:%M UTC}")


def run_k8s_secrets(args: argparse.Namespace) -> int:
    """`mesh certs k8s-secrets`: the Secrets, on stdout or into --out (0600)."""
    from hms_tools import k8s_secrets
    from hms_tools.contracts import REPO
    from hms_tools.deploy import to_yaml
    from hms_tools.manifest import manifest_paths

    root = args.root if args.root is not None else REPO
    services = [path.parent.name for path in manifest_paths(root / "services")]
    if not services:
        raise FileNotFoundError(f"no services/*/service.toml under {root}: give --root")
    tls_dir = tls_dir_from(args.tls_dir, os.environ)
    ca_dir = ca_dir_from(args.ca_dir, tls_dir)
    found = k8s_secrets.secrets(
        tls_dir, k8s_secrets.names_for(services), namespace=args.namespace, ca_dir=ca_dir
    )
    text = to_yaml(found)
    if args.out is None:
        print(text, end="")
        return 0
    fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an existing file keeps its mode otherwise
    with os.fdopen(fd, "w") as out:
        out.write(text)
    print(f"wrote {args.out} ({len(found)} Secrets; mode 0600: it holds their keys)")
    return 0
