"""The events tests' second connection; `nats`, `nats_client` and `js` come from
tests/integration/conftest.py."""

from __future__ import annotations

from collections.abc import AsyncIterator

import nats as nats_py
import pytest
from nats.aio.client import Client

from hms_tools.devstack import NatsProcess


@pytest.fixture
async def second_client(nats: NatsProcess) -> AsyncIterator[Client]:
    """Another connection, as a second replica in another process would have."""
    client = await nats_py.connect(nats.url, allow_reconnect=False)
    try:
        yield client
    finally:
        await client.close()
