"""`--workers N`: one service on every core, as N worker processes under one supervisor.

A Python process serves on one core. With `--workers N` the process started becomes a
supervisor of N workers, each the same service with `--workers=1 --worker=I`: its own port,
its own registry entry (instance id ``<id>-w<I>`` when an id is given) under the same
deployment, so mesh channels balance across workers *per request*. (SO_REUSEPORT would spread
connections, and HTTP/2 pins a caller's calls to one connection: one worker would take all of
a busy caller's calls.)

The supervisor does nothing else:
- SIGTERM or SIGINT is passed to every worker once; each drains as a single service does
  (NOT_SERVING, deregistered, in-flight calls finished), and the supervisor exits with the
  worst status once all have. A second signal is passed on too: the workers stop at once.
- A worker that exits on its own is logged and started again (same index, same port), with
  backoff, for as long as the supervisor runs; it registers again as it starts.
- Workers run in sessions of their own (a Ctrl-C in the terminal reaches the supervisor only,
  which passes it on once) and get SIGTERM if the supervisor dies (PR_SET_PDEATHSIG), so no
  worker outlives it.

Workers share `--data-dir`: a service that keeps state there must be safe with several
processes on it (`mesh up --workers` gives workers only to services without state).
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import signal
import sys
from collections.abc import Callable, Sequence

from mesh.aio import cancel_and_wait
from mesh.resilience.backoff import Backoff, BackoffPolicy

__all__ = ["Workers", "worker_command"]

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
#: A worker that ran this long before exiting had started well: its next restart is quick.
_STABLE_AFTER = 10.0


def worker_command(
    argv: Sequence[str],
    index: int,
    *,
    instance_id: str = "",
    port: int = 0,
    metrics_port: int = 0,
    interpreter: Sequence[str] | None = None,
) -> list[str]:
    """The command line of worker `index` (1-based): this program again with `argv`, then
    the worker's own flags, last so that they win (argparse keeps the last of a repeated
    option). A fixed port or metrics port becomes one per worker (``port + index - 1``)."""
    if index < 1:
        raise ValueError(f"worker index must be >= 1, got {index}")
    command = [*(interpreter if interpreter is not None else _this_program()), *argv]
    command += ["--workers=1", f"--worker={index}"]
    if instance_id:
        command.append(f"--instance-id={instance_id}-w{index}")
    if port:
        command.append(f"--port={port + index - 1}")
    if metrics_port:
        command.append(f"--metrics-port={metrics_port + index - 1}")
    return command


def _this_program() -> list[str]:
    """How this process was started, without its arguments: ``python -m module`` or
    ``python script``."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name:
        return [sys.executable, "-m", spec.name.removesuffix(".__main__")]
    return [sys.executable, sys.argv[0]]


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class Workers:
    """N worker processes, each started by `command(index)`, kept running until a signal.

    >>> status = await Workers(lambda i: worker_command(argv, i), 4).run()
    """

    def __init__(
        self,
        command: Callable[[int], Sequence[str]],
        count: int,
        *,
        backoff: BackoffPolicy | None = None,
        pass_fds: Sequence[int] = (),
    ) -> None:
        if count < 1:
            raise ValueError(f"workers must be >= 1, got {count}")
        self.command = command
        self.count = count
        #: Descriptors the workers inherit (the gateway's listening sockets, shared).
        self.pass_fds = tuple(pass_fds)
        self.backoff = backoff or BackoffPolicy(base=0.5, cap=10.0)
        self.processes: dict[int, asyncio.subprocess.Process] = {}
        self._stopping = asyncio.Event()
        self._signals = 0

    async def run(self) -> int:
        """Start the workers, keep them running, and on a signal stop them; the worst exit
        status of the last generation of workers (0: all drained)."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        try:
            keepers = [
                asyncio.create_task(self._keep(index), name=f"worker-{index}")
                for index in range(1, self.count + 1)
            ]
            statuses = await asyncio.gather(*keepers)
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        return max(statuses, key=abs, default=0)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """As if the supervisor got `sig`."""
        self._on_signal(sig)

    def _on_signal(self, sig: int) -> None:
        self._signals += 1
        self._stopping.set()
        log.info("signal %s: passing it to %d worker(s)", signal.Signals(sig).name, self.count)
        for process in self.processes.values():
            if process.returncode is None:
                process.send_signal(sig)

    async def _keep(self, index: int) -> int:
        """Worker `index`, started again whenever it exits on its own; its last status."""
        backoff = Backoff(self.backoff)
        while True:
            process = await self._start(index)
            started = _now()
            status = await process.wait()
            if self._stopping.is_set():
                return status
            ran = _now() - started
            if ran >= _STABLE_AFTER:
                backoff.reset()
            delay = backoff.next_delay()
            log.error(
                "worker %d (pid %d) exited on its own with status %d after %.1f s: "
                "starting it again in %.2f s",
                index,
                process.pid,
                status,
                ran,
                delay,
            )
            stopping = asyncio.ensure_future(self._stopping.wait())
            try:
                await asyncio.wait({stopping}, timeout=delay)
            finally:
                await cancel_and_wait(stopping)
            if self._stopping.is_set():
                return status

    async def _start(self, index: int) -> asyncio.subprocess.Process:
        command = list(self.command(index))
        process = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.DEVNULL,
            start_new_session=True,
            pass_fds=self.pass_fds,
            # Safe here: the supervisor runs no other thread (it starts no gRPC).
            preexec_fn=_die_with_parent,
        )
        self.processes[index] = process
        log.info("worker %d started (pid %d)", index, process.pid)
        if self._stopping.is_set():  # a signal came while it was starting
            process.send_signal(signal.SIGTERM)
        return process


def _now() -> float:
    return asyncio.get_running_loop().time()
