"""A stand-in for the Dapr sidecar: the official ``Dapr/PublishEvent`` gRPC contract, recorded.

It implements ``dapr.proto.runtime.v1.dapr_pb2_grpc.DaprServicer.PublishEvent`` (every other RPC
stays UNIMPLEMENTED) on a grpc.aio server in a thread of its own, so it keeps answering while a
test's event loop is busy. ``down = True`` makes it answer UNAVAILABLE, as a sidecar whose broker
is unreachable does.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from typing import Any

import grpc
from dapr.proto.runtime.v1 import dapr_pb2_grpc
from google.protobuf import empty_pb2


@dataclass(frozen=True)
class Published:
    """One PublishEventRequest the stand-in accepted."""

    pubsub_name: str
    topic: str
    data: bytes
    data_content_type: str
    metadata: dict[str, str]
    call_metadata: dict[str, Any] = field(default_factory=dict)


class _Servicer(dapr_pb2_grpc.DaprServicer):  # type: ignore[misc]
    def __init__(self, sidecar: DaprSidecar) -> None:
        self._sidecar = sidecar

    async def PublishEvent(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:  # noqa: N802
        if self._sidecar.down:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "pubsub broker unreachable")
        with self._sidecar.lock:
            self._sidecar.published.append(
                Published(
                    request.pubsub_name,
                    request.topic,
                    request.data,
                    request.data_content_type,
                    dict(request.metadata),
                    dict(context.invocation_metadata() or ()),
                )
            )
        return empty_pb2.Empty()


class DaprSidecar:
    """``with DaprSidecar() as sidecar:`` serves on ``sidecar.endpoint`` (127.0.0.1, a free port)."""

    def __init__(self) -> None:
        self.published: list[Published] = []
        self.lock = threading.Lock()
        self.down = False
        self.port = 0
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, name="dapr-sidecar", daemon=True)

    @property
    def endpoint(self) -> str:
        """``host:port`` of the gRPC listener."""
        return f"127.0.0.1:{self.port}"

    def received(self) -> list[Published]:
        """A copy of what was published so far."""
        with self.lock:
            return list(self.published)

    def _main(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._loop.run_until_complete(self._serve())
        self._loop.close()

    async def _serve(self) -> None:
        server = grpc.aio.server()
        dapr_pb2_grpc.add_DaprServicer_to_server(_Servicer(self), server)
        self.port = server.add_insecure_port("127.0.0.1:0")
        self._stop = asyncio.Event()
        await server.start()
        self._ready.set()
        # Stopped through an asyncio.Event set from the test's thread (server.stop() scheduled
        # from another thread onto wait_for_termination() hangs).
        await self._stop.wait()
        await server.stop(0)

    def __enter__(self) -> DaprSidecar:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the Dapr stand-in did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
