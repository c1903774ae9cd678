"""Webhooks end to end: real Postgres, Temporal worker and a real HTTP receiver on 127.0.0.1.

The receiver is on loopback, which the default configuration refuses; these tests allow exactly
``127.0.0.1`` (``webhooks.allowed_hosts``). No request ever leaves the machine.
"""

from __future__ import annotations

import ipaddress
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from temporalio.client import WorkflowExecutionStatus
from temporalio.worker import Worker

from common_operations.bootstrap import Runtime
from common_operations.config import RetrySettings, Settings, WebhookSettings
from common_operations.domain.errors import ValidationFailed
from common_operations.domain.principal import Principal
from common_operations.domain.status import TaskStatus
from common_operations.domain.task import CreateTask, PageRequest, ProgressReport, Task, TaskEvent
from common_operations.domain.webhooks import (
    HEADER_EVENT,
    HEADER_ID,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    parse_callback_url,
    verify_signature,
)
from common_operations.infra import webhooks as http
from tests.helpers import assert_eventually

ALICE = Principal("alice", frozenset({"admin"}))
SECRET = "test-webhook-secret"


@dataclass
class Received:
    """One request the receiver got."""

    headers: dict[str, str]
    body: bytes
    at: float

    @property
    def document(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """A local HTTP server that records POSTs and answers from a script (then 204)."""

    url: str
    answers: list[int] = field(default_factory=list)
    requests: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self) -> int:
        with self.lock:
            return self.answers.pop(0) if self.answers else 204

    def received(self) -> list[Received]:
        with self.lock:
            return list(self.requests)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """The receiver, on a free port of 127.0.0.1."""
    state: list[Receiver] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            rec = state[0]
            with rec.lock:
                rec.requests.append(Received(dict(self.headers.items()), body, time.monotonic()))
            self.send_response(rec.answer())
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.append(Receiver(url=f"http://127.0.0.1:{server.server_address[1]}/hooks/tasks?token=abc"))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state[0]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The test settings with webhooks on: a secret, 127.0.0.1 allowed, fast retries."""
    settings.webhooks = WebhookSettings(
        secret=SECRET,
        allowed_hosts=["127.0.0.1"],
        timeout=5,
        retry=RetrySettings(
            maximum_attempts=4, initial_interval=0.3, backoff_coefficient=2, maximum_interval=2
        ),
    )
    return settings


async def _create(runtime: Runtime, url: str, task_type: str = "process") -> Task:
    return await runtime.tasks.create_task(
        ALICE, CreateTask(task_type=task_type, entity_type="product", requested_by="", callback_url=url)
    )


async def _complete(runtime: Runtime, task: Task, error: str | None = None) -> Task:
    return await runtime.tasks.update_progress(
        ALICE,
        task.id,
        ProgressReport(total_records=1, processed_records=1, is_completed=True, error_message=error),
    )


async def _events(runtime: Runtime, task: Task) -> list[TaskEvent]:
    return (await runtime.tasks.task_events(ALICE, task.id, PageRequest(page_size=100))).items


def _of(events: list[TaskEvent], event_type: str) -> list[TaskEvent]:
    return [e for e in events if e.event_type == event_type]


async def _delivered(runtime: Runtime, task: Task, count: int = 1) -> list[TaskEvent]:
    return await assert_eventually(
        lambda: _events(runtime, task), lambda events: len(_of(events, "webhook.delivered")) >= count
    )


def _assert_signed(request: Received) -> None:
    headers = request.headers
    assert verify_signature(SECRET, headers[HEADER_TIMESTAMP], request.body, headers[HEADER_SIGNATURE])
    assert not verify_signature("wrong", headers[HEADER_TIMESTAMP], request.body, headers[HEADER_SIGNATURE])
    assert headers["Content-Type"] == "application/json"


async def test_a_completed_task_sends_one_signed_webhook(
    runtime: Runtime, worker: Worker, receiver: Receiver
) -> None:
    task = await _create(runtime, receiver.url)
    assert task.callback_url == receiver.url
    await runtime.tasks.update_progress(ALICE, task.id, ProgressReport(total_records=1))
    done = await _complete(runtime, task)
    assert done.status is TaskStatus.COMPLETED

    events = await _delivered(runtime, task)
    [request] = receiver.received()
    _assert_signed(request)
    completed = _of(events, "task.completed")[0]
    assert request.headers[HEADER_ID] == f"{task.id}:{completed.seq}"
    assert request.headers[HEADER_EVENT] == "task.completed"
    assert request.headers["Host"] == receiver.url.split("/")[2]
    document = request.document
    assert document["event"] == "task.completed" and document["taskId"] == str(task.id)
    assert document["task"]["status"] == "completed" and document["task"]["processedRecords"] == 1
    assert document["task"]["callbackUrl"] == receiver.url
    [attempt] = _of(events, "webhook.attempt")
    assert attempt.seq == completed.seq and attempt.status is TaskStatus.COMPLETED
    assert attempt.payload["attempt"] == 1 and attempt.payload["statusCode"] == 204
    assert attempt.payload["host"] == "127.0.0.1" and "token" not in json.dumps(attempt.payload)
    # The task itself is untouched by the delivery records.
    assert (await runtime.tasks.get_task(ALICE, task.id)).seq == completed.seq
    logs = (await runtime.tasks.task_logs(ALICE, task.id, PageRequest(page_size=100))).items
    assert any("webhook task.completed attempt 1" in line.message for line in logs)


async def test_a_failing_receiver_is_retried_with_backoff_until_it_answers_2xx(
    runtime: Runtime, worker: Worker, receiver: Receiver
) -> None:
    receiver.answers = [500, 503]
    task = await _create(runtime, receiver.url)
    await _complete(runtime, task)

    events = await _delivered(runtime, task)
    requests = receiver.received()
    assert len(requests) == 3
    assert len({r.headers[HEADER_ID] for r in requests}) == 1  # one delivery id to deduplicate on
    for request in requests:
        _assert_signed(request)
    # Exponential backoff: 0.3 s, then 0.6 s (lower bounds only; Temporal never retries sooner).
    assert requests[1].at - requests[0].at >= 0.25
    assert requests[2].at - requests[1].at >= 0.5
    attempts = _of(events, "webhook.attempt")
    assert [a.payload["attempt"] for a in attempts] == [1, 2, 3]
    assert [a.payload["statusCode"] for a in attempts] == [500, 503, 204]
    assert _of(events, "webhook.delivered")[0].payload["attempts"] == 3
    assert not _of(events, "webhook.failed")


async def test_a_4xx_answer_is_not_retried_and_recorded_as_a_failed_delivery(
    runtime: Runtime, worker: Worker, receiver: Receiver
) -> None:
    receiver.answers = [410]
    task = await _create(runtime, receiver.url)
    await _complete(runtime, task)

    events = await assert_eventually(
        lambda: _events(runtime, task), lambda events: bool(_of(events, "webhook.failed"))
    )
    seq = _of(events, "task.completed")[0].seq
    handle = runtime.client.get_workflow_handle(f"webhook-{task.id}-{seq}")
    description = await assert_eventually(
        handle.describe, lambda d: d.status is not WorkflowExecutionStatus.RUNNING
    )
    assert description.status is WorkflowExecutionStatus.FAILED
    assert len(receiver.received()) == 1
    [attempt] = _of(await _events(runtime, task), "webhook.attempt")
    assert attempt.payload["statusCode"] == 410
    assert "410" in _of(events, "webhook.failed")[0].payload["message"]


async def test_failed_retried_and_cancelled_tasks_each_send_their_own_webhook(
    runtime: Runtime, worker: Worker, receiver: Receiver
) -> None:
    failing = await _create(runtime, receiver.url)
    assert (await _complete(runtime, failing, error="disk full")).status is TaskStatus.FAILED
    await _delivered(runtime, failing)
    # The webhook does not hold the failed run open: the task can be retried at once.
    retried = await runtime.tasks.retry_task(ALICE, failing.id)
    assert retried.status is TaskStatus.PENDING
    await _complete(runtime, failing)
    await _delivered(runtime, failing, count=2)

    cancelled = await _create(runtime, receiver.url)
    assert (await runtime.tasks.cancel_task(ALICE, cancelled.id, "not needed")).status is TaskStatus.CANCELLED
    await _delivered(runtime, cancelled)

    by_task: dict[str, list[str]] = {}
    for request in receiver.received():
        _assert_signed(request)
        by_task.setdefault(request.document["taskId"], []).append(request.headers[HEADER_EVENT])
    assert by_task == {
        str(failing.id): ["task.failed", "task.completed"],
        str(cancelled.id): ["task.cancelled"],
    }
    failed_body = next(r.document for r in receiver.received() if r.headers[HEADER_EVENT] == "task.failed")
    assert failed_body["task"]["errorMessage"] == "disk full"
    assert len({r.headers[HEADER_ID] for r in receiver.received()}) == 3


async def test_no_webhook_without_a_callback_url(
    runtime: Runtime, worker: Worker, receiver: Receiver
) -> None:
    task = await runtime.tasks.create_task(
        ALICE, CreateTask(task_type="process", entity_type="p", requested_by="")
    )
    await _complete(runtime, task)
    events = await _events(runtime, task)
    assert [e.event_type for e in events] == ["task.created", "task.started", "task.completed"]
    assert receiver.received() == []


async def test_delivery_checks_the_address_again_and_refuses_a_forbidden_one(
    runtime: Runtime, worker: Worker, receiver: Receiver
) -> None:
    task = await _create(runtime, receiver.url)
    # The worker's configuration no longer allows the address the URL was accepted with (as a
    # name rebinding to 127.0.0.1 would look): nothing is sent, and it is not retried.
    runtime.settings.webhooks.allowed_hosts = []
    await _complete(runtime, task)

    events = await assert_eventually(
        lambda: _events(runtime, task), lambda events: bool(_of(events, "webhook.failed"))
    )
    [attempt] = _of(events, "webhook.attempt")
    assert attempt.payload["statusCode"] is None and "refused" in attempt.payload["error"]
    assert receiver.received() == []


async def test_create_refuses_loopback_names_unless_allowed(runtime: Runtime, receiver: Receiver) -> None:
    port = receiver.url.split("/")[2].split(":")[1]
    with pytest.raises(ValidationFailed) as err:
        await _create(runtime, f"http://localhost:{port}/hook")
    assert err.value.details["field"] == "callbackUrl"
    assert "127.0.0.1" in err.value.message or "::1" in err.value.message
    runtime.settings.webhooks.allowed_hosts = ["localhost"]
    assert (await _create(runtime, f"http://localhost:{port}/hook")).callback_url is not None


async def test_send_refuses_a_name_that_resolves_to_loopback(receiver: Receiver) -> None:
    port = receiver.url.split("/")[2].split(":")[1]
    with pytest.raises(ValidationFailed):
        await http.send(f"http://localhost:{port}/x", b"{}", {}, WebhookSettings(secret=SECRET))
    allowed = WebhookSettings(secret=SECRET, allowed_hosts=["localhost"])
    result = await http.send(f"http://localhost:{port}/x", b"{}", {}, allowed)
    assert result.status_code == 204 and ipaddress.ip_address(result.address).is_loopback
    assert receiver.received()[0].headers["Host"] == f"localhost:{port}"
    assert parse_callback_url(receiver.url).ip is not None
