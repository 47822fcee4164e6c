"""Echo service processes for the benchmarks that start and stop real instances, the bounded
waits around them, and how their timings become figures."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from bench import BenchmarkFailed, Figures, percentile
from hms_tools.devstack import backend_environment
from mesh.aio import cancel_and_wait

__all__ = [
    "CHANGE_TIMEOUT",
    "STARTUP_TIMEOUT",
    "EchoProcess",
    "child_env",
    "first_exit",
    "in_ms",
    "reaped",
    "spawn_echo",
    "summary",
    "within",
]

T = TypeVar("T")

# Generous bounds: on loopback each of these takes milliseconds; a timeout means a bug.
CHANGE_TIMEOUT = 5.0
STARTUP_TIMEOUT = 60.0


async def within(timeout: float, what: str, awaitable: Awaitable[T]) -> T:
    """`await awaitable`, or BenchmarkFailed naming `what` after `timeout` s (a hang is a
    finding, not something to wait out)."""
    try:
        async with asyncio.timeout(timeout) as deadline:
            result = await awaitable
    except TimeoutError:
        raise BenchmarkFailed(f"{what} did not finish within {timeout} s") from None
    if deadline.expired():  # it swallowed our cancellation and returned only then
        raise BenchmarkFailed(f"{what} hung for {timeout} s, until cancelled")
    return result


def in_ms(seconds: Sequence[float]) -> list[float]:
    return [s * 1000 for s in seconds]


def summary(prefix: str, values: Sequence[float], unit: str, *, p99: bool = False) -> Figures:
    """p50 (and p99 when there are enough samples for it to mean something), min, max, count."""
    figures: Figures = {f"{prefix}_p50_{unit}": percentile(values, 50)}
    if p99:
        figures[f"{prefix}_p99_{unit}"] = percentile(values, 99)
    figures |= {f"{prefix}_min_{unit}": min(values), f"{prefix}_max_{unit}": max(values)}
    figures = {k: round(float(v), 3) for k, v in figures.items()}
    figures[f"{prefix}_samples"] = len(values)
    return figures


@dataclass
class EchoProcess:
    """One `tests.backends.echo.main` process, told apart from the others by its deployment name."""

    deployment: str
    ttl: int
    proc: asyncio.subprocess.Process
    log_path: Path
    instance_id: str = ""

    def tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-1500:]
        except OSError:
            return "(no log)"


def child_env() -> dict[str, str]:
    """This process's environment without MESH_*: a child takes only the flags it is given;
    the test backend is imported from the checkout, whatever its working directory."""
    return backend_environment({k: v for k, v in os.environ.items() if not k.startswith("MESH_")})


async def spawn_echo(
    endpoint: str,
    deployment: str,
    ttl: int,
    work_dir: Path,
    *,
    namespace: str = "bench",
    tls_dir: Path | None = None,
    extra: Sequence[str] = (),
) -> EchoProcess:
    """Start `tests.backends.echo.main` (plaintext, or mTLS with the `echo` certificate of
    `tls_dir`); its log is `work_dir/<deployment>.log`."""
    log_path = work_dir / f"{deployment}.log"
    security = ["--insecure"] if tls_dir is None else [f"--tls-dir={tls_dir}", "--cert-name=echo"]
    # A local log file opens at once; the child writes to it, not this loop.
    with open(log_path, "ab") as log_file:  # noqa: ASYNC230
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.backends.echo.main",
            *security,
            f"--etcd={endpoint}",
            f"--namespace={namespace}",
            f"--ttl={ttl}",
            f"--deployment={deployment}",
            f"--data-dir={work_dir / deployment}",
            *extra,
            stdout=log_file,
            stderr=asyncio.subprocess.STDOUT,
            stdin=asyncio.subprocess.DEVNULL,
            cwd=work_dir,
            env=child_env(),
            start_new_session=True,
        )
    return EchoProcess(deployment, ttl, proc, log_path)


@asynccontextmanager
async def reaped(fleet: list[EchoProcess]) -> AsyncIterator[list[EchoProcess]]:
    """Kill -9 whatever is still running on the way out, whatever happened."""
    try:
        yield fleet
    finally:
        for echo in fleet:
            if echo.proc.returncode is None:
                with suppress(ProcessLookupError):
                    echo.proc.kill()
            await echo.proc.wait()


async def first_exit(fleet: Sequence[EchoProcess]) -> EchoProcess:
    """The first process of `fleet` to exit."""
    waits = {asyncio.ensure_future(echo.proc.wait()): echo for echo in fleet}
    try:
        done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        await cancel_and_wait(*waits)
    return waits[done.pop()]
