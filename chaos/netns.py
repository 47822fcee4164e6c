"""Hosts as Linux network namespaces on one bridge: the plumbing of `chaos.multihost`.

`Hosts(3)` makes three network namespaces (``hms-<tag>-h1`` .. ``-h3``, the tag random, so two
runs coexist), a bridge in the root namespace (``hmsbr<tag>``) with one veth pair per host (the
root side ``hms<tag>h<i>`` on the bridge, the host side ``eth0`` in its namespace), and
addresses on the range reserved for such tests (RFC 2544, 198.18.0.0/15): ``198.18.<n>.<i>/24``
for host i, the bridge ``.254`` (so the root namespace reaches every host through it), ``n``
chosen at random among the /24s no interface here uses yet. ``lo`` is up in each namespace.

`cut(i)` sets host i's root-side veth down (the host is off the network, its processes run
on), `mend(i)` up again. `remove()` stops whatever still runs in the namespaces (processes
started there by this run only: the namespaces are its own), deletes them, their veths and the
bridge; it is idempotent and runs from `with Hosts(...)` on any exit.

Needs root (CAP_NET_ADMIN) and iproute2; `probe()` says whether namespaces can be made here.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import secrets
import signal
import subprocess
import time
from types import TracebackType

__all__ = ["Hosts", "NetnsError", "leftovers", "probe"]

#: RFC 2544's benchmark range: never routed, free for tests (198.18.0.0 - 198.19.255.255).
TEST_RANGE = ipaddress.ip_network("198.18.0.0/15")
BRIDGE_OCTET = 254
#: Every name this module gives starts with this (namespaces `hms-...`, links `hms...`).
PREFIX = "hms"


class NetnsError(RuntimeError):
    """An `ip` command failed: its command line and what it said."""


def _ip(*args: str, check: bool = True) -> str:
    done = subprocess.run(["ip", *args], check=False, capture_output=True, text=True, timeout=20)
    if check and done.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done.stdout


def probe() -> str | None:
    """None if a network namespace can be made here, else why not (for a test's skip)."""
    name = f"{PREFIX}-probe-{secrets.token_hex(4)}"
    try:
        _ip("netns", "add", name)
    except FileNotFoundError:
        return "iproute2's `ip` is not installed"
    except (NetnsError, subprocess.TimeoutExpired) as exc:
        return f"cannot make a network namespace here ({exc}): needs root (CAP_NET_ADMIN)"
    _ip("netns", "del", name, check=False)
    return None


def _used_subnets() -> set[ipaddress.IPv4Network]:
    used = set()
    for line in _ip("-o", "-4", "addr", "show").splitlines():
        fields = line.split()
        if "inet" in fields:
            interface = ipaddress.ip_interface(fields[fields.index("inet") + 1])
            used.add(interface.network)
    return used


def _free_subnet() -> ipaddress.IPv4Network:
    used = _used_subnets()
    candidates = [s for s in TEST_RANGE.subnets(new_prefix=24) if s not in used]
    if not candidates:
        raise NetnsError(f"every /24 of {TEST_RANGE} is in use here")
    return random.choice(candidates)


def leftovers(tag: str) -> list[str]:
    """What of run `tag` still exists: its namespaces and links (empty once removed)."""
    found = [n.split()[0] for n in _ip("netns", "list").splitlines() if tag in n]
    for line in _ip("-o", "link", "show").splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if tag in name:
            found.append(name)
    return found


class Hosts:
    """`count` hosts, each a network namespace with one address, on one bridge."""

    def __init__(self, count: int = 3) -> None:
        if not 1 <= count <= 253:
            raise ValueError(f"1 to 253 hosts, not {count}")
        self.count = count
        self.tag = secrets.token_hex(3)  # 6 hex: link names stay within IFNAMSIZ (15)
        self.bridge = f"{PREFIX}br{self.tag}"
        self.namespaces = [f"{PREFIX}-{self.tag}-h{i}" for i in range(1, count + 1)]
        self.veths = [f"{PREFIX}{self.tag}h{i}" for i in range(1, count + 1)]
        self.subnet: ipaddress.IPv4Network | None = None
        self.addresses: list[str] = []
        #: The root namespace's address on the bridge (where the load and the checks come from).
        self.bridge_address = ""
        self._made: list[tuple[str, str]] = []  # ("netns" | "link", name), in creation order

    # -- making and removing ---------------------------------------------------------------

    def create(self) -> None:
        try:
            self._create()
        except BaseException:
            self.remove()
            raise

    def _create(self) -> None:
        self.subnet = subnet = _free_subnet()
        hosts = list(subnet.hosts())
        self.addresses = [str(hosts[i]) for i in range(self.count)]
        self.bridge_address = str(hosts[BRIDGE_OCTET - 1])
        bridge_address = f"{self.bridge_address}/{subnet.prefixlen}"
        _ip("link", "add", self.bridge, "type", "bridge", "forward_delay", "0")
        self._made.append(("link", self.bridge))
        _ip("addr", "add", bridge_address, "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for namespace, veth, address in zip(
            self.namespaces, self.veths, self.addresses, strict=True
        ):
            _ip("netns", "add", namespace)
            self._made.append(("netns", namespace))
            _ip("-n", namespace, "link", "set", "lo", "up")
            _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", namespace)
            self._made.append(("link", veth))
            _ip("link", "set", veth, "master", self.bridge)
            _ip("link", "set", veth, "up")
            _ip("-n", namespace, "addr", "add", f"{address}/{subnet.prefixlen}", "dev", "eth0")
            _ip("-n", namespace, "link", "set", "eth0", "up")

    def remove(self) -> None:
        """Stop what runs in the namespaces, delete them, the veths and the bridge."""
        for kind, name in reversed(self._made):
            if kind == "netns":
                self._stop_processes(name)
                _ip("netns", "del", name, check=False)
            else:
                _ip("link", "del", name, check=False)  # a veth may be gone with its namespace
        self._made.clear()

    def _stop_processes(self, namespace: str, grace: float = 5.0) -> None:
        """SIGTERM what still runs in `namespace` (all started there by this run), then
        SIGKILL what is left after `grace`: a namespace with a process in it outlives `ip netns
        del`."""

        def pids() -> list[int]:
            out = _ip("netns", "pids", namespace, check=False)
            return [int(p) for p in out.split() if p.isdigit() and int(p) != os.getpid()]

        for sig in (signal.SIGTERM, signal.SIGKILL):
            running = pids()
            if not running:
                return
            for pid in running:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + grace
            while pids() and time.monotonic() < deadline:
                time.sleep(0.05)  # polling the namespace's processes, under a deadline

    def __enter__(self) -> Hosts:
        self.create()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.remove()

    # -- using -----------------------------------------------------------------------------

    def prefix(self, index: int) -> tuple[str, ...]:
        """The command prefix that runs a program on host `index` (0-based)."""
        return ("ip", "netns", "exec", self.namespaces[index])

    def cut(self, index: int) -> None:
        """Take host `index` off the network: its root-side veth down."""
        _ip("link", "set", self.veths[index], "down")

    def mend(self, index: int) -> None:
        """Put host `index` back on the network."""
        _ip("link", "set", self.veths[index], "up")

    def describe(self) -> str:
        hosts = ", ".join(
            f"{ns} {address}" for ns, address in zip(self.namespaces, self.addresses, strict=True)
        )
        return f"bridge {self.bridge} on {self.subnet}: {hosts}"
