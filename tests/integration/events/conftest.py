"""A real nats-server with JetStream per test, a connection to it and the two event streams."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats as nats_py
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from hms_tools.devstack import NatsProcess
from mesh.events.publisher import ensure_stream
from mesh.events.subjects import dead_letter_stream, events_stream


@pytest.fixture
def nats(tmp_path: Path) -> Iterator[NatsProcess]:
    process = NatsProcess(tmp_path / "nats.data")
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
async def nats_client(nats: NatsProcess) -> AsyncIterator[Client]:
    client = await nats_py.connect(nats.url, allow_reconnect=False)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def second_client(nats: NatsProcess) -> AsyncIterator[Client]:
    """Another connection, as a second replica in another process would have."""
    client = await nats_py.connect(nats.url, allow_reconnect=False)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def js(nats_client: Client) -> JetStreamContext:
    context = nats_client.jetstream()
    await ensure_stream(context, events_stream())
    await ensure_stream(context, dead_letter_stream())
    return context
