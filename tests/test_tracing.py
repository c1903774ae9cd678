"""Tracing end to end: REST/gRPC server spans → service → Temporal → workflow → activity → SQL.

The OTel SDK accepts one global tracer provider per process, so the session gets one provider with
an in-memory exporter (:func:`_provider`), installed through the service's own ``enable_tracing``;
each test reads only the spans of the trace it started (the exporter is cleared per test), and
tracing is switched off again when this module is done, so later modules run untraced.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import asyncpg
import grpc.aio
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, Decision
from opentelemetry.trace import SpanKind
from temporalio.client import Client
from temporalio.contrib.opentelemetry import TracingInterceptor

from common_operations.bootstrap import Runtime, open_runtime
from common_operations.config import ObservabilitySettings, Settings, WebhookSettings
from common_operations.domain.entities import EntitySpec, FieldSpec, FieldType, SinkSpec
from common_operations.grpc.server import build_server
from common_operations.grpc.v1 import operations_pb2 as pb
from common_operations.grpc.v1 import operations_pb2_grpc
from common_operations.infra import telemetry, temporal, webhooks
from common_operations.infra.sinks.http import HttpSink
from common_operations.web.app import create_app
from common_operations.worker import build_worker
from tests.helpers import assert_eventually

TASKS = "/api/v1/operations/tasks"


@cache
def _provider() -> tuple[TracerProvider, InMemorySpanExporter]:
    """The session's tracer provider (set once per process) and its in-memory exporter."""
    exporter = InMemorySpanExporter()
    provider = telemetry.enable_tracing(telemetry.build_provider("co-test"))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry.disable_tracing()
    return provider, exporter


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on for this test, its exporter empty; off again afterwards."""
    provider, exporter = _provider()
    telemetry.enable_tracing(provider)
    exporter.clear()
    try:
        yield exporter
    finally:
        telemetry.disable_tracing()
        exporter.clear()


def traceparent() -> tuple[int, int, str]:
    """A fresh incoming trace: (trace id, parent span id, the W3C header value)."""
    trace_id, span_id = random.getrandbits(128), random.getrandbits(64)
    return trace_id, span_id, f"00-{trace_id:032x}-{span_id:016x}-01"


def of_trace(exporter: InMemorySpanExporter, trace_id: int) -> list[ReadableSpan]:
    """The finished spans of ``trace_id``."""
    return [
        s for s in exporter.get_finished_spans() if s.context is not None and s.context.trace_id == trace_id
    ]


def one(spans: Sequence[ReadableSpan], name: str) -> ReadableSpan:
    """The span called ``name`` (the first one, if several)."""
    named = [s for s in spans if s.name == name]
    assert named, f"no span {name!r} among {sorted({s.name for s in spans})}"
    return named[0]


def ancestors(span: ReadableSpan, spans: Sequence[ReadableSpan]) -> list[str]:
    """Names of ``span``'s ancestors among ``spans``, nearest first."""
    by_id = {s.context.span_id: s for s in spans if s.context is not None}
    names: list[str] = []
    parent = span.parent
    while parent is not None and parent.span_id in by_id:
        above = by_id[parent.span_id]
        names.append(above.name)
        parent = above.parent
    return names


@pytest.fixture
async def traced_runtime(settings: Settings, spans: InMemorySpanExporter) -> AsyncIterator[Runtime]:
    """A runtime whose Temporal client (and so its worker) carries the tracing interceptor.

    The session's shared client has no interceptor: it was connected before tracing was on, which is
    how the service behaves too (the interceptor is chosen when the client connects).
    """
    assert settings.temporal.address is not None
    client: Client = await temporal.connect(settings.temporal.address, settings.temporal.namespace)
    assert any(isinstance(i, TracingInterceptor) for i in client.config()["interceptors"])
    async with open_runtime(settings, client=client, with_worker=True) as runtime:
        yield runtime


async def test_one_trace_from_rest_through_workflow_and_activity_to_sql(
    traced_runtime: Runtime, spans: InMemorySpanExporter
) -> None:
    trace_id, incoming_parent, header = traceparent()
    transport = httpx.ASGITransport(app=create_app(traced_runtime))  # type: ignore[arg-type]
    async with (
        build_worker(traced_runtime),
        httpx.AsyncClient(transport=transport, base_url="http://testserver.local") as api,
    ):
        created = await api.post(
            TASKS,
            json={"taskType": "process", "entityType": "product", "params": "{}"},
            headers={"traceparent": header},
        )
        assert created.status_code == 201, created.text
        task_id = created.json()["task"]["id"]
        # The owning service reports within the same trace (as a worker continuing it would).
        report_header = f"00-{trace_id:032x}-{random.getrandbits(64):016x}-01"
        done = await api.patch(
            f"{TASKS}/{task_id}/progress",
            json={"totalRecords": 2, "processedRecords": 2, "successRecords": 2, "isCompleted": True},
            headers={"traceparent": report_header},
        )
        assert done.status_code == 200, done.text
        assert done.json()["task"]["status"] == "completed"

        def mirrored_sql(found: list[ReadableSpan]) -> bool:
            return any(
                s.kind is SpanKind.CLIENT and any(a.startswith("RunActivity:") for a in ancestors(s, found))
                for s in found
            )

        async def probe() -> list[ReadableSpan]:
            return of_trace(spans, trace_id)

        trace_spans = await assert_eventually(probe, mirrored_sql)

    server = one(trace_spans, "POST /api/v1/operations/tasks")
    assert server.kind is SpanKind.SERVER
    assert server.parent is not None and server.parent.span_id == incoming_parent
    assert server.parent.is_remote

    service = one(trace_spans, "TaskService.create")
    assert "POST /api/v1/operations/tasks" in ancestors(service, trace_spans)

    start = one(trace_spans, "StartWorkflow:TaskWorkflow")
    assert "TaskService.create" in ancestors(start, trace_spans)

    run = one(trace_spans, "RunWorkflow:TaskWorkflow")
    assert ancestors(run, trace_spans)[0] == "StartWorkflow:TaskWorkflow"

    activity = one(trace_spans, "RunActivity:mirror_task_state")
    assert "StartWorkflow:TaskWorkflow" in ancestors(activity, trace_spans)

    sql = [
        s
        for s in trace_spans
        if s.kind is SpanKind.CLIENT and "RunActivity:mirror_task_state" in ancestors(s, trace_spans)
    ]
    assert sql, "the mirror activity's queries have no spans"
    assert all(s.instrumentation_scope is not None for s in sql)
    assert any(s.instrumentation_scope.name == "opentelemetry.instrumentation.asyncpg" for s in sql)  # type: ignore[union-attr]
    assert any(str(s.attributes.get("db.system", "")) == "postgresql" for s in sql if s.attributes)

    # The progress request joined the same trace; its server span is named after the route (not
    # the task's own path: one span name per route), and its service span names the task.
    report = [s for s in trace_spans if s.kind is SpanKind.SERVER and s.name.startswith("PATCH ")]
    assert [s.name for s in report] == [f"PATCH {TASKS}/{{taskId}}/progress"]
    assert report[0].parent is not None and report[0].parent.is_remote
    update = one(trace_spans, "TaskService.update_progress")
    assert update.attributes is not None and update.attributes.get(telemetry.TASK_ID_ATTRIBUTE) == task_id


async def test_grpc_call_continues_the_callers_trace(
    traced_runtime: Runtime, spans: InMemorySpanExporter
) -> None:
    trace_id, incoming_parent, header = traceparent()
    server, port = await build_server(traced_runtime, "127.0.0.1", 0)
    await server.start()
    try:
        async with build_worker(traced_runtime), grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = operations_pb2_grpc.OperationsServiceStub(channel)
            created = await stub.CreateTask(
                pb.CreateTaskRequest(task_type="process", entity_type="product"),
                metadata=(("traceparent", header),),
            )
            assert created.task.id
            # A call without traceparent starts a trace of its own.
            await stub.GetTask(pb.GetTaskRequest(id=created.task.id))
            # Health checks are not traced (every few seconds, they would bury the calls that matter).
            health = health_pb2_grpc.HealthStub(channel)
            await health.Check(health_pb2.HealthCheckRequest(service=""))  # type: ignore[attr-defined]
    finally:
        await server.stop(grace=None)

    found = of_trace(spans, trace_id)
    rpc = one(found, "/api.operations.v1.OperationsService/CreateTask")
    assert rpc.kind is SpanKind.SERVER
    assert rpc.parent is not None and rpc.parent.span_id == incoming_parent and rpc.parent.is_remote
    assert "/api.operations.v1.OperationsService/CreateTask" in ancestors(
        one(found, "TaskService.create"), found
    )
    assert "TaskService.create" in ancestors(one(found, "StartWorkflow:TaskWorkflow"), found)
    everything = spans.get_finished_spans()
    assert not any(s.name.endswith("/GetTask") for s in found)
    assert any(s.name.endswith("/GetTask") and s.parent is None for s in everything)
    assert not any("grpc.health" in s.name for s in everything)


class _Receiver:
    """A local HTTP server keeping the headers of every request."""

    def __init__(self) -> None:
        self.headers: list[dict[str, str]] = []
        received = self.headers

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                received.append({k.lower(): v for k, v in self.headers.items()})
                rows = body.get("rows", [])
                data = json.dumps({"results": [{"row": r["row"], "ok": True} for r in rows]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)


@pytest.fixture
def receiver() -> Iterator[_Receiver]:
    r = _Receiver()
    r.thread.start()
    yield r
    r.httpd.shutdown()
    r.httpd.server_close()


async def test_webhooks_and_http_sinks_carry_traceparent(
    spans: InMemorySpanExporter, receiver: _Receiver
) -> None:
    tracer = trace.get_tracer("tests")
    entity = EntitySpec(
        name="products",
        fields=(FieldSpec("sku", FieldType.STRING, required=True, key=True),),
        sink=SinkSpec(kind="http", url=f"{receiver.url}/import", timeout=2),
    )
    with tracer.start_as_current_span("activity") as span:
        trace_hex = format(span.get_span_context().trace_id, "032x")
        sent = await webhooks.send(
            f"{receiver.url}/hook",
            b"{}",
            {"Content-Type": "application/json"},
            WebhookSettings(secret="s", allow_private_addresses=True),
        )
        assert sent.status_code == 200
        async with httpx.AsyncClient() as client:
            rejected = await HttpSink(entity, client).write_chunk("job", 1, [(2, ("A1",))], "upsert")
        assert rejected == []

    assert len(receiver.headers) == 2
    for headers in receiver.headers:
        version, trace_part, parent_part, _flags = headers["traceparent"].split("-")
        assert (version, trace_part) == ("00", trace_hex)
        # The parent is the client span of that request, a child of the activity's span.
        client_span = next(
            s for s in spans.get_finished_spans() if f"{s.context.span_id:016x}" == parent_part
        )
        assert client_span.kind is SpanKind.CLIENT
        assert (
            client_span.parent is not None and client_span.parent.span_id == span.get_span_context().span_id
        )


async def test_background_queries_start_no_trace_of_their_own(
    spans: InMemorySpanExporter, database_url: str
) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.fetchval("SELECT 1")  # outside any operation: the sampler drops it
        assert spans.get_finished_spans() == ()
        with trace.get_tracer("tests").start_as_current_span("operation"):
            await conn.fetchval("SELECT 2")
    finally:
        await conn.close()
    names = [s.name for s in spans.get_finished_spans()]
    assert len(names) == 2 and "operation" in names, names


def test_tracing_is_off_unless_configured_or_an_endpoint_is_set() -> None:
    off = ObservabilitySettings()
    assert not telemetry.tracing_requested(off, {})
    assert telemetry.tracing_requested(ObservabilitySettings(tracing=True), {})
    assert telemetry.tracing_requested(off, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert telemetry.tracing_requested(off, {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"})
    assert not telemetry.tracing_requested(ObservabilitySettings(tracing=True), {"OTEL_SDK_DISABLED": "true"})


def test_the_exporter_follows_the_otlp_protocol_variable() -> None:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as Grpc
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as Http

    assert isinstance(telemetry.otlp_exporter({}), Http)
    assert isinstance(telemetry.otlp_exporter({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}), Grpc)
    assert isinstance(
        telemetry.otlp_exporter(
            {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"}
        ),
        Http,
    )
    with pytest.raises(ValueError, match="http/json"):
        telemetry.otlp_exporter({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})


def test_the_sampler_drops_only_client_spans_without_a_parent() -> None:
    sampler = telemetry.SkipBackgroundRoots(ALWAYS_ON)
    root_client = sampler.should_sample(None, 1, "SELECT", SpanKind.CLIENT)
    root_server = sampler.should_sample(None, 1, "GET /", SpanKind.SERVER)
    assert root_client.decision is Decision.DROP
    assert root_server.decision is Decision.RECORD_AND_SAMPLE
    parent = trace.set_span_in_context(
        trace.NonRecordingSpan(trace.SpanContext(1, 2, is_remote=False, trace_flags=trace.TraceFlags(1)))
    )
    assert sampler.should_sample(parent, 1, "SELECT", SpanKind.CLIENT).decision is Decision.RECORD_AND_SAMPLE


def test_use_case_spans_cost_nothing_when_tracing_is_off() -> None:
    calls: list[uuid.UUID] = []

    @telemetry.traced_use_cases
    class Service:
        async def get_task(self, task_id: uuid.UUID) -> uuid.UUID:
            calls.append(task_id)
            return task_id

        async def _private(self) -> None:
            raise AssertionError("not wrapped, not called")

    _provider()
    telemetry.disable_tracing()
    task_id = uuid.uuid4()
    assert asyncio.run(Service().get_task(task_id)) == task_id
    assert Service.get_task.__name__ == "get_task"
    assert calls == [task_id]
