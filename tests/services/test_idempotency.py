"""CreateTask with an idempotency key, enforced by Postgres (no Redis in these runtimes)."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pytest
from temporalio.worker import Worker

from common_operations.bootstrap import Runtime
from common_operations.domain.errors import IdempotencyKeyReused, ValidationFailed
from common_operations.domain.principal import Principal
from common_operations.domain.task import CreateTask, ProgressReport, TaskQuery
from common_operations.services.idempotency import request_hash
from tests.helpers import assert_eventually


def body(key: str, **changes: object) -> CreateTask:
    cmd = CreateTask(
        task_type="process",
        entity_type="product",
        requested_by="",
        params={"sku": "A1", "n": 1},
        idempotency_key=key,
    )
    return replace(cmd, **changes)  # type: ignore[arg-type]


@pytest.fixture
def caller() -> Principal:
    # A service: it reports progress on its tasks ("*" reporters) and may create for others.
    return Principal(f"idem-{uuid.uuid4().hex[:10]}", frozenset({"service"}))


async def owned(runtime: Runtime, who: Principal) -> int:
    return (await runtime.tasks.list_tasks(who, TaskQuery(requested_by=who.subject))).total


async def test_the_same_key_and_body_answer_the_first_task(
    runtime: Runtime, worker: Worker, caller: Principal
) -> None:
    assert runtime.tasks.cache is None  # enforced without Redis
    key = uuid.uuid4().hex
    first = await runtime.tasks.create(caller, body(key))
    assert first.created
    # Key order of params and an explicit default do not make another request.
    again = await runtime.tasks.create(caller, body(key, params={"n": 1, "sku": "A1"}, max_retries=3))
    assert not again.created
    assert again.task.id == first.task.id
    assert await owned(runtime, caller) == 1


async def test_the_same_key_with_another_body_is_refused(
    runtime: Runtime, worker: Worker, caller: Principal
) -> None:
    key = uuid.uuid4().hex
    first = await runtime.tasks.create(caller, body(key))
    with pytest.raises(IdempotencyKeyReused) as err:
        await runtime.tasks.create(caller, body(key, priority=5))
    assert err.value.code == "IDEMPOTENCY_KEY_REUSED"
    assert err.value.details["task_id"] == str(first.task.id)
    assert await owned(runtime, caller) == 1


async def test_keys_belong_to_their_caller(runtime: Runtime, worker: Worker) -> None:
    key = uuid.uuid4().hex
    tag = uuid.uuid4().hex[:8]
    alice, bob = (
        Principal(f"alice-{tag}", frozenset({"service"})),
        Principal(f"bob-{tag}", frozenset({"service"})),
    )
    a = await runtime.tasks.create(alice, body(key, requested_by="shared"))
    b = await runtime.tasks.create(bob, body(key, requested_by="shared"))
    assert a.created and b.created and a.task.id != b.task.id


async def test_concurrent_creates_with_one_key_make_one_task(
    runtime: Runtime, worker: Worker, caller: Principal
) -> None:
    key = uuid.uuid4().hex
    results = await asyncio.gather(*(runtime.tasks.create(caller, body(key)) for _ in range(8)))
    assert len({r.task.id for r in results}) == 1
    assert sum(r.created for r in results) == 1
    assert await owned(runtime, caller) == 1


async def test_a_deleted_task_frees_its_key(runtime: Runtime, worker: Worker, caller: Principal) -> None:
    key = uuid.uuid4().hex
    first = await runtime.tasks.create(caller, body(key))
    await runtime.tasks.update_progress(caller, first.task.id, ProgressReport(is_completed=True))
    await assert_eventually(
        lambda: runtime.repository.get(first.task.id),
        lambda t: t is not None and t.status.value == "completed",
    )
    await runtime.tasks.delete_task(caller, first.task.id)
    second = await runtime.tasks.create(caller, body(key))
    assert second.created and second.task.id != first.task.id


@pytest.mark.parametrize("key", ["", "x" * 256, "tab\there", "ключ"])
async def test_malformed_keys_are_refused(runtime: Runtime, caller: Principal, key: str) -> None:
    with pytest.raises(ValidationFailed) as err:
        await runtime.tasks.create(caller, body(key))
    assert err.value.details["field"] == "idempotencyKey"
    assert await owned(runtime, caller) == 0


def test_the_fingerprint_covers_every_field_of_the_request() -> None:
    base = body("k", requested_by="alice", max_retries=3)
    variants = {
        "task_type": "other",
        "entity_type": "order",
        "requested_by": "bob",
        "priority": 1,
        "params": {"sku": "A2", "n": 1},
        "file_name": "a.csv",
        "file_size": 3,
        "scheduled_at": datetime(2030, 1, 1, tzinfo=UTC),
        "max_retries": 4,
        "content_type": "text/csv",
        "callback_url": "https://example.com/hook",
    }
    assert len({request_hash(replace(base, **{f: v})) for f, v in variants.items()}) == len(variants)  # type: ignore[arg-type]
    assert all(request_hash(replace(base, **{f: v})) != request_hash(base) for f, v in variants.items())  # type: ignore[arg-type]
    # Not part of it: the key, and the offset an instant is written in.
    assert request_hash(replace(base, idempotency_key="other")) == request_hash(base)
    at = datetime(2030, 1, 1, 12, tzinfo=UTC)
    shifted = at.astimezone(timezone(timedelta(hours=2)))
    assert request_hash(replace(base, scheduled_at=at)) == request_hash(replace(base, scheduled_at=shifted))
