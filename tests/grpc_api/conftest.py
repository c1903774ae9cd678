"""A real grpc.aio server on a free port, backed by the test's runtime and worker."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc.aio
import pytest
from temporalio.worker import Worker

from common_operations.bootstrap import Runtime
from common_operations.grpc.server import build_server
from common_operations.grpc.v1 import operations_pb2_grpc

if TYPE_CHECKING:
    from common_operations.grpc.v1.operations_pb2_grpc import OperationsServiceAsyncStub


@pytest.fixture
async def grpc_address(runtime: Runtime, worker: Worker) -> AsyncIterator[str]:
    """``host:port`` of a started server; the worker runs the workflows the RPCs start."""
    server, port = await build_server(runtime, "127.0.0.1", 0)
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(grace=None)


@pytest.fixture
async def channel(grpc_address: str) -> AsyncIterator[grpc.aio.Channel]:
    """A client channel to the server."""
    async with grpc.aio.insecure_channel(grpc_address) as ch:
        yield ch


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> OperationsServiceAsyncStub:
    """The OperationsService client."""
    return operations_pb2_grpc.OperationsServiceStub(channel)
