"""The HTTP sink and source against a real HTTP server in a thread."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest

from common_operations.domain.entities import (
    EntitySpec,
    FieldSpec,
    FieldType,
    RowConverter,
    SinkSpec,
    parse_filters,
)
from common_operations.infra.sinks.http import (
    CircuitBreaker,
    HttpSink,
    HttpSource,
    SinkRejected,
    SinkUnavailable,
)

Reply = tuple[int, dict[str, str], Any]


@dataclass
class Script:
    """What the server answers: ``handler(request)`` -> (status, headers, JSON body); requests kept."""

    handler: Callable[[dict[str, Any]], Reply]
    requests: list[dict[str, Any]] = field(default_factory=list)


def _all_ok(request: dict[str, Any]) -> Reply:
    return 200, {}, {"results": [{"row": r["row"], "ok": True} for r in request["body"]["rows"]]}


@pytest.fixture
def server() -> Iterator[tuple[str, Script]]:
    script = Script(_all_ok)

    class Handler(BaseHTTPRequestHandler):
        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            parts = urlsplit(self.path)
            request = {
                "method": self.command,
                "path": parts.path,
                "query": parse_qsl(parts.query),
                "headers": dict(self.headers.items()),
                "body": json.loads(raw) if raw else None,
            }
            script.requests.append(request)
            status, headers, body = script.handler(request)
            data = json.dumps(body).encode() if not isinstance(body, bytes) else body
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        # The names http.server dispatches on.
        do_GET = _handle  # noqa: N815
        do_POST = _handle  # noqa: N815

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", script
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as c:
        yield c


def entity(base: str) -> EntitySpec:
    return EntitySpec(
        name="products",
        fields=(
            FieldSpec("sku", FieldType.STRING, required=True, key=True),
            FieldSpec("price", FieldType.DECIMAL, filterable=True),
            FieldSpec("active", FieldType.BOOL, filterable=True),
            FieldSpec("updated_at", FieldType.DATETIME),
            FieldSpec("tags", FieldType.JSON),
        ),
        sink=SinkSpec(kind="http", url=f"{base}/import", export_url=f"{base}/export", timeout=2),
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def rows(spec: EntitySpec) -> list[tuple[int, tuple[Any, ...]]]:
    conv = RowConverter(spec, ["sku", "price", "active", "updated_at", "tags"])
    return [
        (2, conv.convert(["A", "1.50", "yes", "2024-05-01T10:00:00", '["x"]'])),
        (3, conv.convert(["B", "", "no", "", ""])),
    ]


def sink(spec: EntitySpec, client: httpx.AsyncClient, **kwargs: Any) -> HttpSink:
    kwargs.setdefault("backoff", 0.01)
    return HttpSink(spec, client, **kwargs)


async def test_rows_are_posted_and_per_row_results_returned(
    server: tuple[str, Script], client: httpx.AsyncClient
) -> None:
    base, script = server

    def answer(request: dict[str, Any]) -> Reply:
        return (
            200,
            {},
            {
                "results": [
                    {"row": 2, "ok": True},
                    {"row": 3, "ok": False, "code": "OUT_OF_RANGE", "field": "price", "message": "no price"},
                ]
            },
        )

    script.handler = answer
    spec = entity(base)
    rejected = await sink(spec, client).write_chunk("job-1", 7, rows(spec), "upsert", False)
    assert rejected == [(3, "OUT_OF_RANGE", "price", "no price")]
    [request] = script.requests
    assert request["path"] == "/import"
    assert request["headers"]["Idempotency-Key"] == "job-1:7"
    assert request["body"] == {
        "entity": "products",
        "mode": "upsert",
        "dryRun": False,
        "rows": [
            {
                "row": 2,
                "data": {
                    "sku": "A",
                    "price": "1.50",
                    "active": True,
                    "updated_at": "2024-05-01T10:00:00Z",
                    "tags": ["x"],
                },
            },
            {
                "row": 3,
                "data": {"sku": "B", "price": None, "active": False, "updated_at": None, "tags": None},
            },
        ],
    }


async def test_batch_size_splits_a_chunk_with_distinct_keys(
    server: tuple[str, Script], client: httpx.AsyncClient
) -> None:
    base, script = server
    spec = entity(base)
    spec = EntitySpec(spec.name, spec.fields, SinkSpec(kind="http", url=f"{base}/import", batch_size=1))
    assert await sink(spec, client).write_chunk("job-b", 1, rows(spec), "insert", True) == []
    assert [r["headers"]["Idempotency-Key"] for r in script.requests] == ["job-b:1.1", "job-b:1.2"]
    assert script.requests[0]["body"]["dryRun"] is True


async def test_server_error_is_retried(server: tuple[str, Script], client: httpx.AsyncClient) -> None:
    base, script = server
    calls = {"n": 0}

    def flaky(request: dict[str, Any]) -> Reply:
        calls["n"] += 1
        if calls["n"] == 1:
            return 500, {}, {"title": "boom"}
        if calls["n"] == 2:
            return 429, {"Retry-After": "0"}, {"title": "slow down"}
        return _all_ok(request)

    script.handler = flaky
    spec = entity(base)
    assert await sink(spec, client).write_chunk("job-r", 1, rows(spec), "upsert", False) == []
    assert calls["n"] == 3
    keys = {r["headers"]["Idempotency-Key"] for r in script.requests}
    assert keys == {"job-r:1"}


async def test_persistent_server_error_is_unavailable(
    server: tuple[str, Script], client: httpx.AsyncClient
) -> None:
    base, script = server
    script.handler = lambda request: (503, {}, {"title": "maintenance"})
    spec = entity(base)
    with pytest.raises(SinkUnavailable, match="after 3 attempts: HTTP 503: maintenance"):
        await sink(spec, client, retries=2).write_chunk("job-u", 1, rows(spec), "upsert", False)


async def test_client_error_is_rejected_without_retry(
    server: tuple[str, Script], client: httpx.AsyncClient
) -> None:
    base, script = server
    script.handler = lambda request: (400, {}, {"title": "Bad Request", "detail": "unknown mode"})
    spec = entity(base)
    with pytest.raises(SinkRejected, match="HTTP 400: Bad Request; unknown mode") as info:
        await sink(spec, client).write_chunk("job-x", 1, rows(spec), "upsert", False)
    assert info.value.code == "SINK_REJECTED"
    assert len(script.requests) == 1


async def test_missing_results_are_an_error(server: tuple[str, Script], client: httpx.AsyncClient) -> None:
    base, script = server
    script.handler = lambda request: (200, {}, {"results": [{"row": 2, "ok": True}]})
    spec = entity(base)
    with pytest.raises(SinkRejected, match=r"without a result for 1 row\(s\): 3"):
        await sink(spec, client).write_chunk("job-m", 1, rows(spec), "upsert", False)


async def test_connection_refused_opens_the_breaker(client: httpx.AsyncClient) -> None:
    spec = entity(f"http://127.0.0.1:{free_port()}")
    now = {"t": 0.0}
    breaker = CircuitBreaker(failure_threshold=3, reset_after=30, clock=lambda: now["t"])
    s = sink(spec, client, retries=1, breaker=breaker)
    with pytest.raises(SinkUnavailable, match="after 2 attempts: ConnectError"):
        await s.write_chunk("job-c", 1, rows(spec), "upsert", False)
    assert breaker.state == "closed"
    # The third consecutive failure opens the circuit; the retry then fails fast.
    with pytest.raises(SinkUnavailable, match="circuit open until"):
        await s.write_chunk("job-c", 1, rows(spec), "upsert", False)
    assert breaker.state == "open"
    with pytest.raises(SinkUnavailable, match="circuit open until") as info:
        await s.write_chunk("job-c", 2, rows(spec), "upsert", False)
    assert info.value.code == "SINK_UNAVAILABLE"
    # After reset_after one trial goes through; it fails, so the circuit opens again at once.
    now["t"] = 31
    assert breaker.state == "half_open"
    with pytest.raises(SinkUnavailable, match="circuit open until"):
        await s.write_chunk("job-c", 2, rows(spec), "upsert", False)
    assert breaker.state == "open"


async def test_breaker_closes_after_a_successful_trial(
    server: tuple[str, Script], client: httpx.AsyncClient
) -> None:
    base, _ = server
    now = {"t": 0.0}
    breaker = CircuitBreaker(failure_threshold=1, reset_after=5, clock=lambda: now["t"])
    breaker.record_failure()
    assert breaker.state == "open"
    spec = entity(base)
    with pytest.raises(SinkUnavailable, match="circuit open"):
        await sink(spec, client, breaker=breaker).write_chunk("job-t", 1, rows(spec), "upsert", False)
    now["t"] = 6
    assert (
        await sink(spec, client, breaker=breaker).write_chunk("job-t", 1, rows(spec), "upsert", False) == []
    )
    assert breaker.state == "closed"


async def test_source_pages_and_filters(server: tuple[str, Script], client: httpx.AsyncClient) -> None:
    base, script = server
    pages = {
        "1": {
            "items": [{"sku": "A", "price": "1.5", "active": True, "updated_at": "2024-01-01T00:00:00Z"}],
            "nextPage": 2,
        },
        "2": {
            "items": [{"sku": "B", "price": 2, "active": "no", "tags": {"a": 1}}, {"sku": "C"}],
            "nextPage": None,
        },
    }
    script.handler = lambda request: (200, {}, pages[dict(request["query"])["page"]])
    spec = entity(base)
    flt = parse_filters(spec, {"active": True, "price": {"gte": "1", "in": ["1.5", "2"]}})
    source = HttpSource(spec, client, backoff=0.01)
    batches = [b async for b in source.stream(flt, batch_rows=2)]
    assert batches == [
        [("A", Decimal("1.5"), True, datetime(2024, 1, 1, tzinfo=UTC), None)],
        [("B", Decimal(2), False, None, {"a": 1}), ("C", None, None, None, None)],
    ]
    first = script.requests[0]
    assert first["path"] == "/export"
    assert first["query"] == [
        ("page", "1"),
        ("pageSize", "2"),
        ("active", "true"),
        ("price[gte]", "1"),
        ("price", "1.5"),
        ("price", "2"),
    ]
    assert dict(script.requests[1]["query"])["page"] == "2"


async def test_source_rejects_malformed_items(server: tuple[str, Script], client: httpx.AsyncClient) -> None:
    base, script = server
    script.handler = lambda request: (200, {}, {"items": [{"sku": "A", "price": "cheap"}], "nextPage": None})
    source = HttpSource(entity(base), client)
    with pytest.raises(SinkRejected, match="page 1 item 0: price: not a decimal number"):
        [b async for b in source.stream([])]
