"""`mesh certs k8s-secrets`: every identity of the cluster as a Kubernetes Secret, issued from
the local CA (tools/certs.py).

One Secret ``<name>-tls`` per identity (each service, the gateway, ``ops``, the control
plane's ``root``, and the ``etcd`` and ``nats`` servers), of type ``kubernetes.io/tls``:
``tls.crt`` the certificate, ``tls.key`` its key, ``ca.crt`` the mesh CA's certificate, which
the pods mount as the files mesh.tls reads (tools/deploy.py `tls_volume`). etcd's and NATS's
certificates also carry the in-cluster DNS names their clients and peers dial
(tools/k8s.py `server_hosts`). The CA key is read to sign and never written out: the Secrets
hold no key but each identity's own.

Certificates are issued into the TLS directory as `mesh certs` does (root's and the servers'
as well: the cluster's TLS directory is for the cluster, give it its own ``--tls-dir``), only
where missing, expiring, or lacking a host name (`certs.ensure`): running it again gives the
same certificates.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from hms_tools import certs
from hms_tools.deploy import PART_OF, PART_OF_LABEL, check_namespace

__all__ = ["secret", "secrets"]


def secrets(
    tls_dir: Path,
    names: Sequence[str],
    *,
    namespace: str,
    ca_dir: Path | None = None,
) -> list[dict[str, Any]]:
    """The Secret of each of `names`, issuing what is due first (see the module's doc)."""
    from hms_tools.k8s import server_hosts

    check_namespace(namespace)
    hosts = {name: found for name, found in server_hosts(namespace).items() if name in names}
    certs.ensure(tls_dir, names, ca_dir=ca_dir, hosts=hosts)
    ca = (tls_dir / certs.CA_CERT).read_bytes()
    return [
        secret(
            name,
            namespace,
            cert=(tls_dir / f"{name}.pem").read_bytes(),
            key=(tls_dir / f"{name}-key.pem").read_bytes(),
            ca=ca,
        )
        for name in names
    ]


def secret(name: str, namespace: str, *, cert: bytes, key: bytes, ca: bytes) -> dict[str, Any]:
    """One identity's kubernetes.io/tls Secret, ``<name>-tls``."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {
            "name": f"{name}-tls",
            "namespace": namespace,
            "labels": {
                PART_OF_LABEL: PART_OF,
                "app.kubernetes.io/managed-by": "mesh-certs",
                "hms.local/identity": name,
            },
        },
        "data": {
            "tls.crt": _b64(cert),
            "tls.key": _b64(key),
            "ca.crt": _b64(ca),
        },
    }


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def names_for(services: Iterable[str]) -> list[str]:
    """Every identity the cluster needs: the services, then the others."""
    from hms_tools.k8s import IDENTITIES_BESIDES_SERVICES

    return [*sorted(services), *IDENTITIES_BESIDES_SERVICES]
