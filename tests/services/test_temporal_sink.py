"""Imports into a ``temporal`` sink: the owning service's activity takes batches and answers per row.

The test plays the owning service: a worker on its own queue (``delegate_queue``) with the activity
the entity's sink names. The service's worker runs one ``SinkBatch`` workflow per batch.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.worker import Worker

from common_operations.bootstrap import open_runtime
from common_operations.config import Settings
from common_operations.domain.status import TaskStatus
from common_operations.domain.task import CreateTask
from common_operations.infra.sinks.http import SinkUnavailable
from common_operations.infra.sinks.temporal_sink import TemporalSink
from common_operations.worker import build_worker
from tests.services.test_bulk_import import ADMIN, finished, read_object, upload

ACTIVITY = "import_widget_batch"


def widgets(directory: Path, task_queue: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "widgets.yaml").write_text(
        yaml.safe_dump(
            {
                "fields": [
                    {"name": "code", "type": "string", "key": True, "required": True},
                    {"name": "name", "type": "string", "required": True},
                ],
                "sink": {
                    "kind": "temporal",
                    "task_queue": task_queue,
                    "activity": ACTIVITY,
                    "batch_size": 2,
                    "timeout": 5,
                },
            }
        )
    )
    return directory


@dataclass
class Owner:
    """The owning service: the batches its activity took, and whether it is broken."""

    broken: bool = False
    batches: list[list[dict[str, Any]]] = field(default_factory=list)
    attempts: int = 0

    @activity.defn(name=ACTIVITY)
    async def import_widget_batch(self, request: dict[str, Any]) -> dict[str, Any]:
        self.attempts += 1
        if self.broken:
            raise ApplicationError("widget catalog is down for maintenance")
        assert request["entityType"] == "widgets" and request["mode"] == "upsert"
        self.batches.append(request["rows"])
        return {
            "results": [
                {"row": r["row"], "ok": False, "code": "REFUSED", "field": "name", "message": "no bad ones"}
                if r["data"]["name"] == "bad"
                else {"row": r["row"], "ok": True}
                for r in request["rows"]
            ]
        }

    def names(self) -> list[str]:
        return [r["data"]["name"] for batch in self.batches for r in batch]


@asynccontextmanager
async def owner_worker(client: Client, task_queue: str, owner: Owner) -> AsyncIterator[Owner]:
    async with Worker(client, task_queue=task_queue, activities=[owner.import_widget_batch]):
        yield owner


async def test_an_import_into_a_temporal_sink_applies_each_row_once_with_the_owners_verdicts(
    settings: Settings, client: Client, tmp_path: Path, delegate_queue: str
) -> None:
    settings = settings.model_copy(deep=True)
    settings.bulk.entities_dir = widgets(tmp_path / "entities", delegate_queue)
    async with (
        open_runtime(settings, client=client, with_worker=True) as rt,
        owner_worker(client, delegate_queue, Owner()) as owner,
        build_worker(rt),
    ):
        task = await rt.tasks.create_task(
            ADMIN, CreateTask(task_type="import", entity_type="widgets", requested_by="", file_name="w.csv")
        )
        upload(rt, task, b"code,name\nW1,good\nW2,bad\nW3,fine\nW4,ok\nW5,x\n")
        done = await finished(rt, task.id, timeout=60)
        assert done.status is TaskStatus.COMPLETED, done.error_message
        assert (done.counts.processed, done.counts.success, done.counts.failed) == (5, 4, 1)
        result = read_object(rt, done.files["result"]["key"]).decode()
        assert "REFUSED" in result and "no bad ones" in result
        assert [len(b) for b in owner.batches] == [2, 2, 1]  # batch_size 2: three batch workflows
        assert sorted(owner.names()) == sorted(["good", "bad", "fine", "ok", "x"])  # each row once

        # A chunk sent again (an import attempt that crashed before its checkpoint) finds its
        # batches' earlier results: the owner is not asked again and the verdicts are the same.
        sink = TemporalSink(rt.entities["widgets"], client, settings.temporal.task_queue)
        job, rows = f"resend-{uuid.uuid4().hex[:8]}", [(1, ("A1", "bad")), (2, ("A2", "y")), (3, ("A3", "z"))]
        first = await sink.write_chunk(job, 1, rows, "upsert")
        seen = len(owner.batches)
        again = await sink.write_chunk(job, 1, rows, "upsert")
        assert first == again == [(1, "REFUSED", "name", "no bad ones")]
        assert len(owner.batches) == seen

        with pytest.raises(ValueError, match="exports from a 'temporal' sink are not supported"):
            await rt.sinks.row_source(rt.entities["widgets"])


async def test_an_owner_activity_failing_for_good_fails_the_import_with_its_message(
    settings: Settings, client: Client, tmp_path: Path, delegate_queue: str
) -> None:
    settings = settings.model_copy(deep=True)
    settings.bulk.entities_dir = widgets(tmp_path / "entities", delegate_queue)
    # One attempt of the import: each attempt waits out the batch's own retries of the owner.
    settings.operations.task_types["import"].retry.maximum_attempts = 1
    async with (
        open_runtime(settings, client=client, with_worker=True) as rt,
        owner_worker(client, delegate_queue, Owner(broken=True)) as owner,
        build_worker(rt),
    ):
        task = await rt.tasks.create_task(
            ADMIN, CreateTask(task_type="import", entity_type="widgets", requested_by="", file_name="w.csv")
        )
        upload(rt, task, b"code,name\nW1,good\nW2,fine\n")
        done = await finished(rt, task.id, timeout=60)
        assert done.status is TaskStatus.FAILED
        assert done.error_message and ACTIVITY in done.error_message, done.error_message
        assert "down for maintenance" in done.error_message
        assert done.counts.success == 0
        assert owner.attempts == 5  # the batch workflow's retries, then it gave up

        sink = TemporalSink(rt.entities["widgets"], client, settings.temporal.task_queue)
        with pytest.raises(SinkUnavailable, match=ACTIVITY):
            await sink.write_chunk(f"down-{uuid.uuid4().hex[:8]}", 1, [(1, ("B1", "n"))], "upsert")
