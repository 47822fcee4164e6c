"""`mesh deploy NAME` / `mesh deploy --all`: Kubernetes objects rendered from the services'
manifests (tools/deploy.py), as one YAML stream on stdout or as files under --out: `<name>.yaml`
per service, and `hms-authz-policy.yaml` (the policies' ConfigMap) with --all."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "deploy",
        help="render a service's Kubernetes objects from its manifest (service.toml)",
        description="Render Kubernetes objects from services/<name>/service.toml: the "
        "workload, a headless Service, a PodDisruptionBudget and a NetworkPolicy; --all adds "
        "every service and the policies' ConfigMap. Nothing is sent to a cluster.",
    )
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("name", nargs="?", metavar="NAME", help="the service (its folder's name)")
    which.add_argument(
        "--all", action="store_true", help="every service, and the ConfigMap hms-authz-policy"
    )
    parser.add_argument(
        "--namespace",
        default="hms",
        help="the Kubernetes namespace, also the mesh's registry namespace (default hms)",
    )
    parser.add_argument(
        "--image", default=None, help="the platform's image (default hms-mesh:<its version>)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="write <name>.yaml files into this directory instead of printing",
    )
    parser.add_argument(
        "--root",
        type=Path,
        default=None,
        help="the checkout to read (services/, gen/hms.binpb); default: this one",
    )
    parser.add_argument(
        "--descriptor-set",
        type=Path,
        default=None,
        help="the contracts' descriptor set (default <root>/gen/hms.binpb, made by `make proto`)",
    )
    parser.set_defaults(func=run)


def default_image() -> str:
    """The image built from this checkout (issue #14): named after the project, tagged with
    its version."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"hms-mesh:{version('hms-mesh')}"
    except PackageNotFoundError:
        return "hms-mesh:latest"


def run(args: argparse.Namespace) -> int:
    from hms_tools import deploy
    from hms_tools.contracts import REPO, Contracts, default_descriptor_set
    from hms_tools.manifest import load_manifests

    root = Path(args.root) if args.root is not None else REPO
    if not (root / "services").is_dir():
        raise FileNotFoundError(f"{root} has no services/ folder: give the checkout with --root")
    contracts = Contracts.load(args.descriptor_set or default_descriptor_set(root))
    manifests = load_manifests(root / "services", contracts)
    image = args.image or default_image()
    # Each file: (its name under --out, its objects).
    files: list[tuple[str, list[dict[str, object]]]] = []
    if args.all:
        files.append(
            (
                f"{deploy.POLICY_CONFIGMAP}.yaml",
                [deploy.render_policy(manifests.values(), namespace=args.namespace)],
            )
        )
        chosen = sorted(manifests.values(), key=lambda m: m.name)
    else:
        chosen = [deploy.pick(manifests, args.name)]
    for manifest in chosen:
        objects = deploy.render_service(manifest, namespace=args.namespace, image=image)
        files.append((f"{manifest.name}.yaml", objects))
    if args.out is None:
        print(deploy.to_yaml([o for _, objects in files for o in objects]), end="")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    for filename, objects in files:
        path = args.out / filename
        path.write_text(deploy.to_yaml(objects))
        print(f"wrote {path}")
    return 0
