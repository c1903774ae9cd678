"""Structured logs: the format, the context fields, one handler for every library, no secrets."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from typing import Any

import grpc
import pytest
import uvicorn
from opentelemetry.sdk.trace import TracerProvider
from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.testing import ActivityEnvironment
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from common_operations.config import AuthSettings, Settings
from common_operations.grpc.log_context import LogContextInterceptor
from common_operations.grpc.v1 import operations_pb2 as pb
from common_operations.infra.logs import (
    TEMPORAL_CORE_LOGGER,
    bind,
    configure_logging,
    current_context,
    log_context,
    redact,
    resolve_format,
    temporal_core_logging,
)
from common_operations.services.identity import Authenticator
from common_operations.web.log_context import log_context_middleware
from tests.auth_support import auth_settings, bearer

TASK_ID = "0b6b8ad2-5d5f-4a52-9d44-1c1f4a3c2d10"


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """The process's logging routed into a buffer as JSON lines; the previous setup restored after."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    out = io.StringIO()
    configure_logging(Settings(log_level="INFO"), stream=out, log_format="json", temporal_core=False)
    yield out
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in saved[0]:
        root.addHandler(handler)
    root.setLevel(saved[1])
    logging.captureWarnings(False)
    workflow.logger.workflow_info_on_message = activity.logger.activity_info_on_message = True


def _lines(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_a_json_line_has_timestamp_level_logger_and_message(stream: io.StringIO) -> None:
    logging.getLogger("common_operations.test").warning("task %s: %d rows\nsecond line", "t-1", 3)

    (line,) = stream.getvalue().splitlines()  # one line, though the message has two
    entry = json.loads(line)
    assert list(entry) == ["timestamp", "level", "logger", "message"]
    assert entry["level"] == "WARNING"
    assert entry["logger"] == "common_operations.test"
    assert entry["message"] == "task t-1: 3 rows\nsecond line"
    assert entry["timestamp"].endswith("Z") and "T" in entry["timestamp"]


def test_below_the_configured_level_nothing_is_written(stream: io.StringIO) -> None:
    logging.getLogger("common_operations.test").debug("not shown")
    assert stream.getvalue() == ""


def test_an_exception_is_one_line_too(stream: io.StringIO) -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("common_operations.test").exception("failed")
    (entry,) = _lines(stream)
    assert entry["message"] == "failed"
    assert "ValueError: boom" in entry["exception"]


def test_bound_context_fields_and_their_end(stream: io.StringIO) -> None:
    log = logging.getLogger("common_operations.test")
    with log_context(task_id=TASK_ID):
        bind(principal="catalog-service")
        log.info("inside")
    log.info("outside")

    inside, outside = _lines(stream)
    assert inside["task_id"] == TASK_ID
    assert inside["principal"] == "catalog-service"
    assert "task_id" not in outside and "principal" not in outside


def test_trace_and_span_ids_come_from_the_current_span(stream: io.StringIO) -> None:
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("request") as span:
        logging.getLogger("common_operations.test").info("traced")
    (entry,) = _lines(stream)
    context = span.get_span_context()
    assert entry["trace_id"] == format(context.trace_id, "032x")
    assert entry["span_id"] == format(context.span_id, "016x")


async def test_an_activity_s_lines_carry_its_task_workflow_and_run(stream: io.StringIO) -> None:
    env = ActivityEnvironment()
    env.info = replace(env.info, workflow_id=f"task-{TASK_ID}", workflow_run_id="run-7")

    def work() -> None:
        # A plain module logger, as the service's activities use, and the SDK's activity logger.
        logging.getLogger("common_operations.activities.test").info("chunk written")
        activity.logger.info("heartbeat")

    env.run(work)
    plain, sdk = _lines(stream)
    for entry in (plain, sdk):
        assert (entry["task_id"], entry["workflow_id"], entry["run_id"]) == (
            TASK_ID,
            f"task-{TASK_ID}",
            "run-7",
        )
    assert sdk["logger"] == "temporalio.activity"


@workflow.defn(name="LoggingTestWorkflow")
class _LoggingWorkflow:
    @workflow.run
    async def run(self) -> dict[str, str]:
        workflow.logger.info("workflow says hello")
        # What any record logged here would carry.
        return current_context()


async def test_a_workflow_s_lines_carry_its_ids(stream: io.StringIO, client: Client) -> None:
    queue = f"co-logging-{uuid.uuid4().hex[:8]}"
    task_id = str(uuid.uuid4())
    workflow_id = f"task-{task_id}"
    # Unsandboxed so this test module need not be importable in the sandbox; the context is read
    # from the workflow's event loop either way.
    async with Worker(
        client, task_queue=queue, workflows=[_LoggingWorkflow], workflow_runner=UnsandboxedWorkflowRunner()
    ):
        handle = await client.start_workflow(
            _LoggingWorkflow.run, id=workflow_id, task_queue=queue, execution_timeout=timedelta(seconds=30)
        )
        fields = await handle.result()
    assert fields == {"task_id": task_id, "workflow_id": workflow_id, "run_id": handle.result_run_id}
    (entry,) = [e for e in _lines(stream) if e["logger"] == "temporalio.workflow"]
    assert entry["message"] == "workflow says hello"  # the ids are fields, not appended text
    assert (entry["task_id"], entry["workflow_id"], entry["run_id"]) == (
        task_id,
        workflow_id,
        handle.result_run_id,
    )


def test_uvicorn_lines_go_through_the_same_handler(stream: io.StringIO) -> None:
    # Uvicorn's own logging config installs handlers of its own; configuring again routes them back.
    uvicorn.Config(app=lambda: None)  # the default log_config: handlers on the uvicorn loggers
    configure_logging(Settings(log_level="INFO"), stream=stream, log_format="json", temporal_core=False)
    # The service's server passes log_config=None, so serving installs none afterwards.
    uvicorn.Config(app=lambda: None, log_config=None, log_level="warning")
    logging.getLogger("uvicorn.error").warning("cannot bind")
    entries = _lines(stream)
    assert [(e["logger"], e["message"]) for e in entries] == [("uvicorn.error", "cannot bind")]


def test_temporal_sdk_loggers_go_through_the_same_handler(stream: io.StringIO) -> None:
    logging.getLogger("temporalio.worker._workflow").warning("workflow task failed")
    logging.getLogger(TEMPORAL_CORE_LOGGER).warning("core says so")
    logging.getLogger("temporalio.worker").info("worker started")  # the SDK's chatter stays out
    assert [e["logger"] for e in _lines(stream)] == ["temporalio.worker._workflow", TEMPORAL_CORE_LOGGER]
    forwarding = temporal_core_logging().forwarding
    assert forwarding is not None and forwarding.logger.name == TEMPORAL_CORE_LOGGER


SECRETS = [
    ("authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl", "eyJ"),
    ("refused token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl", "c2lnbmF0dXJl"),
    ("key co_0123456789ab_s3cr3tS3cr3tS3cr3tS3cr3t was revoked", "s3cr3t"),
    ("cannot reach postgresql://svc:hunter2@db:5432/ops", "hunter2"),
    ('settings {"password": "hunter2", "user": "svc"}', "hunter2"),
    ("retrying with api_key=abcdef123456 now", "abcdef123456"),
    ("x-api-key: abcdef123456", "abcdef123456"),
]


@pytest.mark.parametrize(("text", "secret"), SECRETS)
def test_no_secret_reaches_the_output(stream: io.StringIO, text: str, secret: str) -> None:
    logging.getLogger("common_operations.test").warning("%s", text)
    try:
        raise RuntimeError(text)
    except RuntimeError:
        logging.getLogger("common_operations.test").exception("failed")
    output = stream.getvalue()
    assert secret not in output
    assert "[REDACTED]" in output


def test_redaction_keeps_what_is_not_secret() -> None:
    assert (
        redact("task 12 processed 40/100 records (tokens: none)")
        == "task 12 processed 40/100 records (tokens: none)"
    )
    # An API key's prefix names the key (it is public); its secret is masked.
    assert redact("co_0123456789ab_s3cr3tS3cr3tS3cr3tS3cr3t") == "co_0123456789ab_[REDACTED]"
    assert redact("postgresql://svc:pw@db/ops") == "postgresql://svc:[REDACTED]@db/ops"


def test_plain_lines_on_a_terminal_json_otherwise() -> None:
    assert resolve_format("auto", _Terminal()) == "plain"
    assert resolve_format("auto", io.StringIO()) == "json"
    assert resolve_format("json", _Terminal()) == "json"

    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    terminal = _Terminal()
    try:
        handler = configure_logging(Settings(log_level="INFO"), stream=terminal, temporal_core=False)
        assert sum(h is handler for h in root.handlers) == 1
        with log_context(task_id=TASK_ID):
            logging.getLogger("common_operations.test").info("readable")
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in saved[0]:
            root.addHandler(h)
        root.setLevel(saved[1])
        logging.captureWarnings(False)
    (line,) = terminal.getvalue().splitlines()
    assert line.endswith(f"INFO    common_operations.test: readable [task_id={TASK_ID}]")


def test_configuring_again_replaces_the_handler(stream: io.StringIO) -> None:
    configure_logging(Settings(log_level="INFO"), stream=stream, log_format="json", temporal_core=False)
    logging.getLogger("common_operations.test").info("once")
    assert len(_lines(stream)) == 1


# -- the transports bind the request's task and caller -------------------------------------------


async def test_a_rest_request_s_lines_carry_its_task_and_caller(stream: io.StringIO) -> None:
    authenticator = Authenticator(AuthSettings(**auth_settings("required")))

    async def route(scope: Any, receive: Any, send: Any) -> None:
        # What a handler does: authenticate, then log.
        await authenticator.authenticate({"authorization": bearer("catalog-service")["authorization"]})
        logging.getLogger("common_operations.test").info("handled")

    app = log_context_middleware(route)
    await app({"type": "http", "path_params": {"taskId": TASK_ID}}, None, None)  # type: ignore[arg-type]
    logging.getLogger("common_operations.test").info("after the request")

    handled, after = _lines(stream)
    assert (handled["task_id"], handled["principal"]) == (TASK_ID, "catalog-service")
    # Nothing of the request is left on the next line of the same task (an in-process client).
    assert "task_id" not in after and "principal" not in after
    # The token itself never shows.
    assert "eyJ" not in stream.getvalue()


async def test_a_grpc_call_s_lines_carry_its_task(stream: io.StringIO) -> None:
    async def behavior(request: Any, context: Any) -> str:
        logging.getLogger("common_operations.test").info("called")
        return "ok"

    async def continuation(details: Any) -> Any:
        return grpc.unary_unary_rpc_method_handler(behavior)

    handler = await LogContextInterceptor().intercept_service(continuation, None)  # type: ignore[arg-type]
    assert handler is not None
    unary: Any = handler.unary_unary

    async def call() -> Any:  # grpc.aio runs every call in a task of its own
        return await unary(pb.GetTaskRequest(id=TASK_ID), None)

    assert await asyncio.create_task(call()) == "ok"
    (entry,) = _lines(stream)
    assert entry["task_id"] == TASK_ID
