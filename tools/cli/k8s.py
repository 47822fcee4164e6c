"""`mesh k8s render [--out DIR]`: the kustomize base of the whole platform (tools/k8s.py) from
the services' manifests, written under DIR (default deploy/k8s of this checkout): base/*.yaml,
base/kustomization.yaml and overlays/cert-manager/certificates.yaml. The overlays'
kustomization.yaml files are written by hand and left alone. docs/deploy.md."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "k8s", help="Kubernetes: render the kustomize base of the platform (deploy/k8s)"
    )
    actions = parser.add_subparsers(dest="k8s_command", required=True, metavar="ACTION")
    render = actions.add_parser(
        "render",
        help="write deploy/k8s/base from services/*/service.toml",
        description="Render etcd, NATS, every service, the gateway, the operators' pod, the "
        "control plane's init Job and the NetworkPolicies as a kustomize base. Nothing is "
        "sent to a cluster: `kubectl apply -k deploy/k8s/overlays/dev`.",
    )
    render.add_argument(
        "--out", type=Path, default=None, help="where deploy/k8s is (default: this checkout's)"
    )
    render.add_argument(
        "--image", default=None, help="the platform's image (default hms-mesh:<its version>)"
    )
    render.add_argument(
        "--root", type=Path, default=None, help="the checkout to read (default: this one)"
    )
    render.add_argument(
        "--descriptor-set",
        type=Path,
        default=None,
        help="the contracts' descriptor set (default <root>/gen/hms.binpb, made by `make proto`)",
    )
    render.set_defaults(func=run_render)


def run_render(args: argparse.Namespace) -> int:
    from hms_tools import k8s
    from hms_tools.cli.deploy import default_image
    from hms_tools.contracts import REPO, Contracts, default_descriptor_set
    from hms_tools.manifest import load_manifests

    root = Path(args.root) if args.root is not None else REPO
    if not (root / "services").is_dir():
        raise FileNotFoundError(f"{root} has no services/ folder: give the checkout with --root")
    contracts = Contracts.load(args.descriptor_set or default_descriptor_set(root))
    manifests = load_manifests(root / "services", contracts)
    out = args.out if args.out is not None else root / "deploy" / "k8s"
    files = k8s.render_files(manifests.values(), image=args.image or default_image())
    for path in k8s.write_files(out, files):
        print(f"wrote {path}")
    return 0
