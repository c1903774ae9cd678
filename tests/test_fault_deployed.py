"""The deployed shape under faults: two API processes, two workers, one Temporal, one Postgres.

A few hundred tasks of every kind (external ones driven by a reporter in the test, delegated ones
served by an "other service" worker in the test, scheduled ones) go through both API processes and
both transports while one worker is killed with SIGKILL and replaced, and Postgres is stopped and
started again. Afterwards every task must be in the state its workflow ended in, with exactly the
counts the reporter sent, a gap-free event sequence, and no 500 was ever answered.

Every process the test starts is tracked by pid and killed at the end, whatever happened. The
random choices come from a seed printed in the summary (``FAULT_SEED`` repeats a run); the report
of a failed run and every process's log stay in the test's tmp dir.

The smaller tests at the end reproduce, deterministically, what runs of the big one found.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio
import httpx
import psutil
import pytest
from piccolo.engine.postgres import PostgresEngine
from temporalio import activity
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.worker import Worker

from common_operations.bootstrap import Runtime
from common_operations.db.repository import TaskRepository
from common_operations.domain.errors import ServiceUnavailable
from common_operations.domain.principal import Principal
from common_operations.domain.status import TaskStatus
from common_operations.domain.task import CreateTask, PageRequest, TaskQuery
from common_operations.domain.workflow_types import (
    PROGRESS_QUERY,
    DelegatedTaskInput,
    DelegatedTaskResult,
    ProgressSnapshot,
    workflow_id_for,
)
from common_operations.grpc.v1 import operations_pb2 as pb
from common_operations.grpc.v1 import operations_pb2_grpc
from common_operations.infra.embedded import EmbeddedPostgres, EmbeddedTemporal
from common_operations.worker import build_worker
from tests.auth_support import auth_settings, bearer
from tests.auth_support import metadata as auth_metadata
from tests.delegates import delegate_worker
from tests.stack import alive, free_port

if TYPE_CHECKING:
    from common_operations.grpc.v1.operations_pb2_grpc import OperationsServiceAsyncStub

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

CLI = str(Path(sys.executable).parent / "common-operations")
TASKS = "/api/v1/operations/tasks"
ACTIVE = frozenset({"scheduled", "pending", "processing"})
# Events added beside a task's state (they share the seq of a state event), not state changes.
ANNOTATIONS = frozenset({"task.stuck"})
CLOSED_AS = {
    WorkflowExecutionStatus.COMPLETED: "completed",
    WorkflowExecutionStatus.FAILED: "failed",
    WorkflowExecutionStatus.CANCELED: "cancelled",
}

# How many tasks of each kind (about 230 in all) and over how many seconds their scripts start.
KINDS = {
    "ext_complete": 60,  # reports by increments, then completes
    "ext_fail": 25,  # reports, then fails by a report with an error message
    "ext_cancel": 25,  # reports, then cancelled with a reason
    "ext_retry": 25,  # reports, fails, retried by hand, reports again, completes
    "sched_complete": 20,  # scheduled a few seconds ahead; reports once pending, completes
    "sched_cancel": 8,  # scheduled, cancelled with a reason while it waits
    "deleg_work": 40,  # delegated: heartbeats for a few seconds, returns its counts
    "deleg_echo": 10,  # delegated: returns at once
    "deleg_cancel": 12,  # delegated: runs until cancelled with a reason
}
LOAD_SPREAD = 30.0
PG_DOWN = 6.0
WORKER_DOWN = 4.0
CALL_DEADLINE = 90.0  # one call, retried through outages
RPC_TIMEOUT = 60.0  # one attempt (REST's client has the same timeout)
WAIT_DEADLINE = 90.0  # one wait for a task to reach a state
RETRYABLE = frozenset({0, 429, 500, 502, 503, 504})

GRPC_AS_HTTP = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNKNOWN: 500,
}


# -- the test's child processes ------------------------------------------------------------------


class Children:
    """The API and worker processes, by pid; :meth:`kill_all` leaves none running, whatever happened."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.tracked: list[psutil.Process] = []

    def spawn(self, name: str, command: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
        with (self.logs / f"{name}.log").open("ab") as out:
            popen = subprocess.Popen(
                [CLI, command],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,  # a Ctrl-C at the terminal reaches the test, which stops them
            )
        self.procs[name] = popen
        self.tracked.append(psutil.Process(popen.pid))
        return popen

    async def wait(self, popen: subprocess.Popen[bytes], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while popen.poll() is None:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    async def stop_all(self, grace: float = 15.0) -> None:
        """SIGTERM every one still running, then SIGKILL whatever did not stop within ``grace``."""
        running = [p for p in self.procs.values() if p.poll() is None]
        for popen in running:
            with contextlib.suppress(ProcessLookupError):
                popen.send_signal(signal.SIGTERM)
        await asyncio.gather(*(self.wait(p, grace) for p in running))
        self.kill_all()

    def kill_all(self) -> None:
        for process in self.tracked:
            if alive(process):
                with contextlib.suppress(psutil.Error):
                    process.kill()
        for popen in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                popen.wait(5)

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def errors(self, most: int = 5) -> str:
        """The first distinct ERROR lines of each process's log (the logs stay in the test's tmp dir)."""
        parts = []
        for name in self.procs:
            lines = [line for line in self.log(name).splitlines() if " ERROR " in line]
            distinct = list(dict.fromkeys(line[24:200] for line in lines))[:most]
            if distinct:
                parts.append(f"--- {name}: {len(lines)} ERROR lines, e.g.\n  " + "\n  ".join(distinct))
        return "\n".join(parts)


# Starts or stops the embedded Postgres of a data dir, from a process of its own: run as root, the
# server is started under another user, which makes subprocess fork() (not vfork) the test process,
# and a fork of a process running gRPC and Temporal client threads can crash before it execs (seen
# as "Postgres exited while starting (killed by SIGSEGV)").
PG_HELPER = """
import asyncio, sys
from pathlib import Path
from common_operations.infra.embedded import EmbeddedPostgres
server = EmbeddedPostgres(Path(sys.argv[2]))
print(asyncio.run(server.start() if sys.argv[1] == "start" else server.stop_orphan()))
"""


class Postgres:
    """An embedded Postgres the test can stop and start again on the same data dir; its postmasters
    are tracked by pid (and start time), so none is left running whatever happens."""

    def __init__(self, data_dir: Path) -> None:
        self.server = EmbeddedPostgres(data_dir)
        self.tracked: list[psutil.Process] = []

    async def _helper(self, action: str) -> str:
        helper = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            PG_HELPER,
            action,
            str(self.server.data_dir),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            output, _ = await asyncio.wait_for(helper.communicate(), 120)
        except TimeoutError:
            helper.kill()
            raise
        text = output.decode(errors="replace").strip()
        assert helper.returncode == 0, f"Postgres {action} failed: {text}"
        return text.splitlines()[-1]

    async def start(self) -> str:
        """Start the server (initdb the first time); its URL."""
        url = await self._helper("start")
        lines = (self.server.pgdata / "postmaster.pid").read_text().splitlines()
        self.tracked.append(psutil.Process(int(lines[0])))
        return url

    async def stop(self) -> None:
        """Fast shutdown, waited for (then immediate shutdown, then SIGKILL)."""
        await self._helper("stop")

    def kill(self) -> None:
        for process in self.tracked:
            with contextlib.suppress(psutil.Error):
                for child in [*process.children(recursive=True), process]:
                    if alive(child):
                        child.kill()


# -- the other service's activity ---------------------------------------------------------------


@dataclass
class WorkProbe:
    running: int = 0
    done: int = 0


def work_activity(probe: WorkProbe) -> Callable[[DelegatedTaskInput], Awaitable[DelegatedTaskResult]]:
    @activity.defn(name="fault_work")
    async def fault_work(inp: DelegatedTaskInput) -> DelegatedTaskResult:
        """Works for ``params.seconds``, heartbeating, then returns ``params.records`` as counts."""
        records, failed = int(inp.params["records"]), int(inp.params["failed"])
        probe.running += 1
        try:
            deadline = time.monotonic() + float(inp.params["seconds"])
            while time.monotonic() < deadline:
                activity.heartbeat()
                await asyncio.sleep(0.25)
        finally:
            probe.running -= 1
        probe.done += 1
        return DelegatedTaskResult(
            total_records=records,
            processed_records=records,
            success_records=records - failed,
            failed_records=failed,
            message=f"worked on {records} records",
        )

    return fault_work


# -- the API's clients ---------------------------------------------------------------------------


@dataclass
class Reply:
    code: int  # HTTP status; gRPC statuses as their HTTP equivalents; 0: no answer at all
    status: str | None = None  # the task's status in a successful answer
    task_id: str | None = None
    text: str = ""


@dataclass
class Endpoint:
    """One API process: its REST and gRPC clients."""

    name: str
    http: httpx.AsyncClient
    channel: grpc.aio.Channel
    stub: OperationsServiceAsyncStub


@dataclass
class Expected:
    """What the test did to one task, hence what the task must show at the end."""

    key: str
    kind: str
    task_type: str
    id: str = ""
    status: str = ""
    total: int = 0
    processed: int = 0
    success: int = 0
    failed: int = 0
    reports: int = 0  # reports applied by the latest attempt
    sent: int = 0  # report ids used so far
    error: str | None = None
    retry_count: int = 0
    reason: str | None = None
    finished: bool = False


@dataclass
class Stats:
    codes: Counter[str] = field(default_factory=Counter)
    server_errors: list[tuple[str, str]] = field(default_factory=list)  # (kind, what and when)
    problems: list[str] = field(default_factory=list)
    notes: Counter[str] = field(default_factory=Counter)
    in_flight: int = 0
    windows: set[str] = field(default_factory=set)  # faults under way
    calls_during: Counter[str] = field(default_factory=Counter)
    in_flight_at: dict[str, int] = field(default_factory=dict)
    created: int = 0
    closing: dict[str, Any] = field(default_factory=dict)


class Load:
    """Drives tasks through both API processes and both transports, retrying through outages."""

    def __init__(self, endpoints: list[Endpoint], owner: str, rng: random.Random, t0: float) -> None:
        self.endpoints = endpoints
        self.owner = owner
        self.rng = rng
        self.t0 = t0
        self.stats = Stats()
        self.doing: dict[str, str] = {}  # by task key: the call under way, to report a script that hangs
        self._turn = 0

    def now(self) -> float:
        return time.monotonic() - self.t0

    def _pick(self, op: str) -> tuple[Endpoint, str]:
        # Calls alternate transports (reads are REST's); the API process is picked at random.
        self._turn += 1
        transport = "grpc" if self._turn % 2 and op != "get" else "rest"
        return self.rng.choice(self.endpoints), transport

    async def call(
        self, op: str, key: str, send: Callable[[Endpoint, str], Awaitable[Reply]]
    ) -> tuple[Reply, int]:
        """``send`` until it is answered with something other than 'retry later'; the reply and attempts.

        Answers 429 and 503 and calls without an answer are retried (a report with the same id);
        a 500 is recorded (the service must never answer one) and retried too, so the run goes on
        and reports everything it found at the end.
        """
        deadline = time.monotonic() + CALL_DEADLINE
        attempt = 0
        while True:
            attempt += 1
            endpoint, transport = self._pick(op)
            self.doing[key] = f"{op} #{attempt} to {endpoint.name} by {transport} at t={self.now():.1f}s"
            self.stats.in_flight += 1
            for window in self.stats.windows:
                self.stats.calls_during[window] += 1
            try:
                reply = await send(endpoint, transport)
            finally:
                self.stats.in_flight -= 1
            self.stats.codes[f"{transport} {op} {reply.code}"] += 1
            if reply.code >= 500 and reply.code not in (502, 503, 504):
                self.stats.server_errors.append(
                    (
                        f"{transport} {op}: {reply.code} {reply.text[:100]}",
                        f"t={self.now():.1f}s {endpoint.name} {transport} {op} {key}: {reply.text[:300]}",
                    )
                )
            if reply.code not in RETRYABLE:
                return reply, attempt
            if time.monotonic() > deadline:
                self.stats.problems.append(
                    f"{key}: {op} still answered {reply.code} after {CALL_DEADLINE:g}s: {reply.text[:200]}"
                )
                return reply, attempt
            await asyncio.sleep(min(2.0, 0.2 * 2 ** min(attempt, 4)) * self.rng.uniform(0.5, 1.0))

    # -- operations, on either transport -------------------------------------------------------

    async def create(
        self, exp: Expected, params: dict[str, Any], scheduled_at: datetime | None = None
    ) -> bool:
        params = {**params, "key": exp.key}

        async def send(ep: Endpoint, transport: str) -> Reply:
            if transport == "rest":
                body: dict[str, Any] = {
                    "taskType": exp.task_type,
                    "entityType": "product",
                    "requestedBy": self.owner,
                    "params": json.dumps(params),
                }
                if scheduled_at is not None:
                    body["scheduledAt"] = scheduled_at.isoformat()
                return await rest(ep, "POST", TASKS, body)
            request = pb.CreateTaskRequest(
                task_type=exp.task_type,
                entity_type="product",
                requested_by=self.owner,
                params=json.dumps(params),
            )
            if scheduled_at is not None:
                request.scheduled_at.FromDatetime(scheduled_at)
            return await rpc(lambda: ep.stub.CreateTask(request, metadata=metadata(), timeout=RPC_TIMEOUT))

        reply, _ = await self.call("create", exp.key, send)
        if reply.code not in (200, 201) or reply.task_id is None:
            self.stats.problems.append(f"{exp.key}: create answered {reply.code}: {reply.text[:200]}")
            return False
        exp.id = reply.task_id
        exp.status = reply.status or ""
        self.stats.created += 1
        return True

    async def report(
        self,
        exp: Expected,
        processed: int,
        failed: int = 0,
        *,
        total: int | None = None,
        complete: bool = False,
        error: str | None = None,
    ) -> bool:
        """One report of increments (``processed`` records, ``failed`` of them failed), idempotent by id."""
        exp.sent += 1
        report_id = f"{exp.key}/{exp.retry_count}/{exp.sent}"
        success = processed - failed

        async def send(ep: Endpoint, transport: str) -> Reply:
            if transport == "rest":
                body: dict[str, Any] = {
                    "processedRecords": processed,
                    "successRecords": success,
                    "failedRecords": failed,
                    "increment": True,
                    "reportId": report_id,
                }
                if total is not None:
                    body["totalRecords"] = total
                if complete:
                    body["isCompleted"] = True
                if error is not None:
                    body["errorMessage"] = error
                return await rest(ep, "PATCH", f"{TASKS}/{exp.id}/progress", body)
            request = pb.UpdateTaskProgressRequest(
                task_id=exp.id,
                processed_records=processed,
                success_records=success,
                failed_records=failed,
                increment=True,
                report_id=report_id,
                is_completed=complete,
            )
            if total is not None:
                request.total_records = total
            if error is not None:
                request.error_message = error
            return await rpc(
                lambda: ep.stub.UpdateTaskProgress(request, metadata=metadata(), timeout=RPC_TIMEOUT)
            )

        reply, attempts = await self.call("report", exp.key, send)
        final = ("failed" if error else "completed") if complete else None
        applied = reply.code == 200
        if not applied and reply.code == 409 and attempts > 1 and final is not None:
            # An earlier attempt may have ended the task (its answer was lost): the task must show it.
            self.stats.notes["final report answered 409 on a retry"] += 1
            applied = await self.read_status(exp) == final
        if not applied:
            self.stats.problems.append(
                f"{exp.key} ({exp.id}): report {report_id} answered {reply.code} after {attempts} "
                f"attempts: {reply.text[:200]}"
            )
            return False
        exp.reports += 1
        exp.total = exp.total if total is None else total
        exp.processed += processed
        exp.success += success
        exp.failed += failed
        if final is not None:
            exp.status, exp.error = final, error
        else:
            exp.status = "processing"
        return True

    async def cancel(self, exp: Expected, reason: str) -> bool:
        async def send(ep: Endpoint, transport: str) -> Reply:
            if transport == "rest":
                return await rest(ep, "POST", f"{TASKS}/{exp.id}/cancel", {"id": exp.id, "reason": reason})
            request = pb.CancelTaskRequest(id=exp.id, reason=reason)
            return await rpc(lambda: ep.stub.CancelTask(request, metadata=metadata(), timeout=RPC_TIMEOUT))

        reply, attempts = await self.call("cancel", exp.key, send)
        applied = reply.code == 200
        if not applied and reply.code == 409 and attempts > 1:
            self.stats.notes["cancel answered 409 on a retry"] += 1
            applied = await self.read_status(exp) == "cancelled"
        if not applied:
            self.stats.problems.append(
                f"{exp.key} ({exp.id}): cancel answered {reply.code}: {reply.text[:200]}"
            )
            return False
        exp.status, exp.reason = "cancelled", reason
        return True

    async def retry(self, exp: Expected) -> bool:
        """Retry a failed task by hand; a 409 while its old run is still closing is tried again."""

        async def send(ep: Endpoint, transport: str) -> Reply:
            if transport == "rest":
                return await rest(ep, "POST", f"{TASKS}/{exp.id}/retry", None)
            return await rpc(
                lambda: ep.stub.RetryTask(
                    pb.RetryTaskRequest(id=exp.id), metadata=metadata(), timeout=RPC_TIMEOUT
                )
            )

        deadline = time.monotonic() + WAIT_DEADLINE
        while True:
            reply, _ = await self.call("retry", exp.key, send)
            if reply.code == 200:
                break
            status = await self.read_status(exp) if reply.code == 409 else None
            if status in ("pending", "processing"):
                self.stats.notes["retry answered 409 after an earlier attempt had retried it"] += 1
                break
            if status == "failed" and time.monotonic() < deadline:
                self.stats.notes[f"retry answered 409 while the task read failed: {reply.text[:120]}"] += 1
                await asyncio.sleep(0.5)
                continue
            self.stats.problems.append(
                f"{exp.key} ({exp.id}): retry answered {reply.code}: {reply.text[:200]}"
            )
            return False
        exp.retry_count += 1
        exp.status, exp.error = "pending", None
        exp.processed = exp.success = exp.failed = exp.reports = 0  # a new attempt counts from zero
        return await self.wait_for(exp, {"pending"})

    async def read_status(self, exp: Expected) -> str | None:
        async def send(ep: Endpoint, transport: str) -> Reply:
            return await rest(ep, "GET", f"{TASKS}/{exp.id}", None)

        reply, _ = await self.call("get", exp.key, send)
        return reply.status if reply.code == 200 else None

    async def wait_for(self, exp: Expected, statuses: set[str], interval: float = 1.0) -> bool:
        deadline = time.monotonic() + WAIT_DEADLINE
        while (status := await self.read_status(exp)) not in statuses:
            if time.monotonic() > deadline:
                self.stats.problems.append(
                    f"{exp.key} ({exp.id}): still {status} after {WAIT_DEADLINE:g}s, waiting for {statuses}"
                )
                return False
            await asyncio.sleep(interval)
        return True


def metadata() -> tuple[tuple[str, str], ...]:
    return auth_metadata("fault-test", ["admin"])


async def rest(ep: Endpoint, method: str, path: str, body: dict[str, Any] | None) -> Reply:
    try:
        r = await ep.http.request(method, path, json=body)
    except httpx.HTTPError as err:
        return Reply(0, text=f"{type(err).__name__}: {err}")
    if r.status_code >= 300:
        try:
            problem = r.json()
            return Reply(r.status_code, text=f"{problem['code']}: {problem['detail']}")
        except (ValueError, KeyError, TypeError):
            return Reply(r.status_code, text=r.text)
    task = r.json().get("task") or {}
    return Reply(r.status_code, task.get("status"), task.get("id"), r.text[:200])


async def rpc(call: Callable[[], Awaitable[Any]]) -> Reply:
    try:
        answer = await call()
    except grpc.aio.AioRpcError as err:
        return Reply(GRPC_AS_HTTP.get(err.code(), 500), text=f"{err.code().name}: {err.details()}")
    task = answer.task
    return Reply(200, task.status, task.id)


# -- what each kind of task goes through ---------------------------------------------------------


def split(records: int, parts: int, rng: random.Random) -> list[tuple[int, int]]:
    """``records`` in ``parts`` chunks of (processed, failed), each at least one record."""
    cuts = sorted(rng.sample(range(1, records), parts - 1))
    sizes = [b - a for a, b in zip([0, *cuts], [*cuts, records], strict=True)]
    return [(n, rng.randint(0, n // 4)) for n in sizes]


async def pause(rng: random.Random) -> None:
    await asyncio.sleep(rng.uniform(0.2, 1.5))


async def drive(load: Load, exp: Expected, rng: random.Random) -> None:
    kind = exp.kind
    if kind.startswith("ext_"):
        if not await load.create(exp, {"batch": exp.key}):
            return
        total = rng.randint(20, 200)
        chunks = split(total, rng.randint(3, 5), rng)
        if kind == "ext_complete":
            for i, (n, f) in enumerate(chunks):
                await pause(rng)
                last = i == len(chunks) - 1
                if not await load.report(exp, n, f, total=total if i == 0 else None, complete=last):
                    return
        else:
            partial = chunks[: rng.randint(1, len(chunks) - 1)]
            for i, (n, f) in enumerate(partial):
                await pause(rng)
                if not await load.report(exp, n, f, total=total if i == 0 else None):
                    return
            await pause(rng)
            if kind == "ext_cancel":
                if not await load.cancel(exp, f"superseded by batch {exp.key}-b"):
                    return
            else:
                if not await load.report(exp, 0, complete=True, error=f"catalog rejected {exp.key}"):
                    return
                if kind == "ext_retry":
                    await pause(rng)
                    if not await load.retry(exp):
                        return
                    for i, (n, f) in enumerate(chunks):
                        await pause(rng)
                        if not await load.report(exp, n, f, complete=i == len(chunks) - 1):
                            return
    elif kind == "sched_complete":
        at = datetime.now(UTC) + timedelta(seconds=rng.uniform(3, 8))
        if not await load.create(exp, {"batch": exp.key}, scheduled_at=at):
            return
        await asyncio.sleep(max(0.0, (at - datetime.now(UTC)).total_seconds()) + 0.5)
        if not await load.wait_for(exp, {"pending"}):
            return
        total = rng.randint(10, 50)
        chunks = split(total, 2, rng)
        for i, (n, f) in enumerate(chunks):
            if not await load.report(exp, n, f, total=total if i == 0 else None, complete=i == 1):
                return
            await pause(rng)
    elif kind == "sched_cancel":
        at = datetime.now(UTC) + timedelta(seconds=rng.uniform(20, 30))
        if not await load.create(exp, {"batch": exp.key}, scheduled_at=at):
            return
        await asyncio.sleep(rng.uniform(1, 4))
        if not await load.cancel(exp, f"schedule of {exp.key} withdrawn"):
            return
    elif kind == "deleg_work":
        records, failed = rng.randint(5, 500), rng.randint(0, 20)
        params = {"records": records, "failed": failed, "seconds": rng.uniform(3, 8)}
        if not await load.create(exp, params):
            return
        exp.status, exp.total, exp.processed = "completed", records, records
        exp.success, exp.failed = records - failed, failed
    elif kind == "deleg_echo":
        records = rng.randint(1, 100)
        if not await load.create(exp, {"records": records}):
            return
        exp.status = "completed"
        exp.total = exp.processed = exp.success = records
    elif kind == "deleg_cancel":
        if not await load.create(exp, {}):
            return
        await asyncio.sleep(rng.uniform(1, 3))
        if not await load.wait_for(exp, {"processing"}):
            return
        if not await load.cancel(exp, f"downstream job {exp.key} aborted"):
            return
    exp.finished = True


TASK_TYPE = {
    "ext_complete": "process",
    "ext_fail": "data_sync",
    "ext_cancel": "process",
    "ext_retry": "report_generation",
    "sched_complete": "process",
    "sched_cancel": "process",
    "deleg_work": "delegated_work",
    "deleg_echo": "delegated_echo",
    "deleg_cancel": "delegated_slow",
}


# -- the deployment ------------------------------------------------------------------------------


@dataclass
class Deployment:
    tmp: Path
    children: Children
    postgres: Postgres
    temporal: EmbeddedTemporal
    queue: str
    database_url: str = ""
    config: Path = field(init=False)

    def __post_init__(self) -> None:
        self.config = self.tmp / "config.yaml"

    def env(self, **extra: str) -> dict[str, str]:
        inherited = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("CO_")
            and k
            not in ("DATABASE_URL", "TEMPORAL_ADDRESS", "TEMPORAL_NAMESPACE", "REDIS_URL", "CONFIG_FILE")
        }
        return {
            **inherited,
            "DATABASE_URL": self.database_url,
            "TEMPORAL_ADDRESS": self.temporal.address,
            "CONFIG_FILE": str(self.config),
            "CO_TEMPORAL__TASK_QUEUE": self.queue,
            "CO_DATA_DIR": str(self.tmp / "data"),
            "CO_LOG_LEVEL": "INFO",
            **extra,
        }


def write_config(path: Path, delegate_queue: str, work_queue: str) -> None:
    external = {"kind": "external", "heartbeat_timeout": 300}
    # Delegated activities run in this test's busy process. The SDK sends heartbeats at most every
    # 0.8 x the timeout, so only a fifth of it is slack: 20 s leaves 4 s for a stalled event loop.
    # Retries are quick in case one is missed all the same.
    retry = {"maximum_attempts": 10, "initial_interval": 0.5, "maximum_interval": 2}
    delegated = {"kind": "delegated", "heartbeat_timeout": 20, "retry": retry}
    config = {
        "log_level": "INFO",
        # As deployed: every request needs credentials (the test's tokens), no rate limits.
        "auth": auth_settings("required"),
        "limits": {"enabled": False, "max_unfinished_tasks": None},
        "operations": {
            "cancel_wait": 10,
            "reconcile_interval": 1,
            "orphan_grace": 2,
            "progress_interval": 1,
            "task_types": {
                "process": external,
                "data_sync": external,
                "report_generation": external,
                "delegated_work": {**delegated, "task_queue": work_queue, "activity": "fault_work"},
                "delegated_echo": {**delegated, "task_queue": delegate_queue, "activity": "echo_task"},
                "delegated_slow": {**delegated, "task_queue": delegate_queue, "activity": "slow_task"},
            },
        },
    }
    path.write_text(json.dumps(config, indent=2))  # JSON is YAML


async def pollers(client: Client, queue: str) -> set[str]:
    answer = await client.workflow_service.describe_task_queue(
        DescribeTaskQueueRequest(
            namespace=client.namespace,
            task_queue=TaskQueue(name=queue),
            task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
        )
    )
    return {p.identity for p in answer.pollers}


async def wait_until(
    what: str, probe: Callable[[], Awaitable[bool]], timeout: float, interval: float = 0.2
) -> None:
    deadline = time.monotonic() + timeout
    while not await probe():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g}s: {what}")
        await asyncio.sleep(interval)


async def start_worker(dep: Deployment, client: Client, name: str) -> subprocess.Popen[bytes]:
    # Two workers on one host: no worker /metrics listener (it would be the same port for both).
    popen = dep.children.spawn(name, "worker", dep.env(CO_OBSERVABILITY__WORKER_METRICS_PORT="0"))

    async def polling() -> bool:
        assert popen.poll() is None, f"{name} exited ({popen.returncode}):\n{dep.children.log(name)[-3000:]}"
        return any(identity.startswith(f"{popen.pid}@") for identity in await pollers(client, dep.queue))

    await wait_until(f"{name} polls {dep.queue}", polling, timeout=60)
    return popen


async def start_api(dep: Deployment, name: str) -> Endpoint:
    http_port, grpc_port = free_port(), free_port()
    env = dep.env(
        CO_HTTP__HOST="127.0.0.1",
        CO_HTTP__PORT=str(http_port),
        CO_GRPC__HOST="127.0.0.1",
        CO_GRPC__PORT=str(grpc_port),
    )
    popen = dep.children.spawn(name, "api", env)
    http = httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{http_port}",
        # Every request is the fault test's admin (the deployment requires credentials).
        headers=bearer("fault-test", ["admin"]),
        timeout=httpx.Timeout(60.0),
        limits=httpx.Limits(max_connections=100, max_keepalive_connections=50),
    )
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}")
    endpoint = Endpoint(name, http, channel, operations_pb2_grpc.OperationsServiceStub(channel))

    async def ready() -> bool:
        assert popen.poll() is None, f"{name} exited ({popen.returncode}):\n{dep.children.log(name)[-3000:]}"
        try:
            if (await http.get("/health/ready", timeout=5)).status_code != 200:
                return False
            await endpoint.stub.Health(pb.HealthRequest(), timeout=5)
        except (httpx.HTTPError, grpc.aio.AioRpcError):
            return False
        return True

    await wait_until(f"{name} answers on REST and gRPC", ready, timeout=60)
    return endpoint


@pytest.fixture
async def deployment(tmp_path: Path) -> AsyncIterator[Deployment]:
    """Temporal and Postgres of the test's own; every process stopped afterwards, by pid."""
    logs = tmp_path / "logs"
    logs.mkdir()
    dep = Deployment(
        tmp=tmp_path,
        children=Children(logs),
        postgres=Postgres(tmp_path / "postgres"),
        temporal=EmbeddedTemporal(tmp_path / "temporal", port=free_port(), ui_port=free_port()),
        queue=f"co-fault-{uuid.uuid4().hex[:8]}",
    )
    try:
        yield dep
    finally:
        try:
            await dep.children.stop_all()
        finally:
            dep.children.kill_all()
            try:
                await dep.temporal.stop()
                await dep.postgres.stop()
            finally:
                dep.postgres.kill()


# -- the test ------------------------------------------------------------------------------------


async def test_deployed_stack_survives_a_killed_worker_and_a_postgres_restart(deployment: Deployment) -> None:
    dep = deployment
    seed = int(os.environ.get("FAULT_SEED") or random.randrange(1 << 30))
    rng = random.Random(seed)
    print(f"FAULT_SEED={seed}")  # shown with the output of a failed run
    phases: dict[str, float] = {}
    started = time.monotonic()

    def mark(name: str) -> None:
        phases[name] = round(time.monotonic() - started, 1)

    dep.database_url = await dep.postgres.start()
    address = await dep.temporal.start()
    delegate_queue, work_queue = f"{dep.queue}-delegate", f"{dep.queue}-work"
    write_config(dep.config, delegate_queue, work_queue)
    migrate = await asyncio.create_subprocess_exec(
        CLI, "migrate", env=dep.env(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        output, _ = await asyncio.wait_for(migrate.communicate(), 120)
    except TimeoutError:
        migrate.kill()
        raise
    assert migrate.returncode == 0, output.decode(errors="replace")
    client = await Client.connect(address)

    probe = WorkProbe()
    async with (
        delegate_worker(client, delegate_queue),
        Worker(
            client, task_queue=work_queue, activities=[work_activity(probe)], max_concurrent_activities=100
        ),
    ):
        workers = list(await asyncio.gather(*(start_worker(dep, client, f"worker-{i}") for i in (1, 2))))
        endpoints = list(await asyncio.gather(*(start_api(dep, f"api-{i}") for i in (1, 2))))
        mark("stack ready")
        owner = f"fault-{uuid.uuid4().hex[:10]}"
        try:
            load = Load(endpoints, owner, rng, time.monotonic())
            expected = await run_load_with_faults(dep, client, load, workers, probe, rng, mark)
            mark("load done")
            mismatches = await verify(dep, client, load, expected, owner)
            mark("verified")
        finally:
            for ep in endpoints:
                await ep.http.aclose()
                await ep.channel.close()

    summary = {
        "seed": seed,
        "tasks": dict(Counter(e.kind for e in expected)),
        "phases (s since start)": phases,
        "calls during faults": dict(load.stats.calls_during),
        "calls in flight when the faults began": load.stats.in_flight_at,
        "answers": dict(sorted(load.stats.codes.items())),
        "notes": dict(load.stats.notes),
        "closing": load.stats.closing,
    }
    print(json.dumps(summary, indent=2))
    (dep.tmp / "summary.json").write_text(json.dumps(summary, indent=2))

    report = []
    if errors := load.stats.server_errors:
        kinds = Counter(kind for kind, _ in errors)
        report.append(
            f"{len(errors)} answers were 500s; by kind:\n  "
            + "\n  ".join(f"{n} x {kind}" for kind, n in kinds.most_common(15))
            + "\n the first ones:\n  "
            + "\n  ".join(line for _, line in errors[:10])
        )
    if load.stats.problems:
        report.append(
            f"{len(load.stats.problems)} unexpected answers:\n  " + "\n  ".join(load.stats.problems[:30])
        )
    if mismatches:
        report.append(f"{len(mismatches)} tasks differ:\n  " + "\n  ".join(mismatches[:30]))
    dead = [name for name, p in dep.children.procs.items() if p.poll() is not None and name != "worker-1"]
    if dead:
        report.append(f"processes that died on their own: {dead}")
    if report:
        text = "\n\n".join(report) + f"\n\nsummary: {json.dumps(summary)}\n\n{dep.children.errors()}"
        (dep.tmp / "report.txt").write_text(text)
        raise AssertionError(f"{text}\n\n(report and logs in {dep.tmp})")
    # The faults happened under load, not beside it.
    assert load.stats.calls_during["worker down"] > 0 and load.stats.calls_during["postgres down"] > 0, (
        summary
    )


async def run_load_with_faults(
    dep: Deployment,
    client: Client,
    load: Load,
    workers: list[subprocess.Popen[bytes]],
    probe: WorkProbe,
    rng: random.Random,
    mark: Callable[[str], None],
) -> list[Expected]:
    kinds = [kind for kind, n in KINDS.items() for _ in range(n)]
    rng.shuffle(kinds)
    expected = [Expected(f"{kind}-{i}", kind, TASK_TYPE[kind]) for i, kind in enumerate(kinds)]

    async def script(exp: Expected, delay: float, task_rng: random.Random) -> None:
        await asyncio.sleep(delay)
        await drive(load, exp, task_rng)

    scripts = [
        asyncio.create_task(script(exp, i * LOAD_SPREAD / len(expected), random.Random(rng.random())))
        for i, exp in enumerate(expected)
    ]
    stats = load.stats

    async def faults() -> None:
        # SIGKILL a worker while delegated activities and reports are under way, replace it later.
        async def busy() -> bool:
            return load.now() > 8 and probe.running >= 4 and stats.created >= 40

        await wait_until("delegated activities running under load", busy, timeout=90)
        stats.in_flight_at["worker killed"] = stats.in_flight
        stats.windows.add("worker down")
        workers[0].send_signal(signal.SIGKILL)
        workers[0].wait(10)
        mark("worker-1 killed")
        await asyncio.sleep(WORKER_DOWN)
        workers.append(await start_worker(dep, client, "worker-3"))
        stats.windows.discard("worker down")
        mark("worker-3 polling")

        # Then stop Postgres (fast shutdown) for a few seconds, and start it on the same data dir.
        async def later() -> bool:
            return load.now() > 22

        await wait_until("load still running", later, timeout=60)
        stats.in_flight_at["postgres stopped"] = stats.in_flight
        stats.windows.add("postgres down")
        await dep.postgres.stop()
        mark("postgres stopped")
        await asyncio.sleep(PG_DOWN)
        assert await dep.postgres.start() == dep.database_url
        stats.windows.discard("postgres down")
        mark("postgres started")

    fault_task = asyncio.create_task(faults())
    try:
        await asyncio.wait_for(fault_task, 240)
        _, pending = await asyncio.wait(scripts, timeout=240)
        stuck = [
            f"{e.key} ({e.id}): {load.doing.get(e.key)}"
            for e, s in zip(expected, scripts, strict=True)
            if s in pending
        ]
        assert not stuck, f"{len(stuck)} scripts did not finish within 240s: {stuck[:20]}"
        for s in scripts:
            s.result()
    finally:
        for t in [*scripts, fault_task]:
            t.cancel()
    return expected


async def verify(
    dep: Deployment, client: Client, load: Load, expected: list[Expected], owner: str
) -> list[str]:
    """Every task against its workflow and against what the test did; a line per difference."""
    ep = load.endpoints[0]

    async def listed() -> dict[str, dict[str, Any]]:
        tasks: dict[str, dict[str, Any]] = {}
        page = 1
        while True:
            r = await ep.http.get(TASKS, params={"requestedBy": owner, "pageSize": 1000, "page": page})
            assert r.status_code == 200, r.text
            batch = r.json()["tasks"]
            tasks.update({t["id"]: t for t in batch})
            if len(batch) < 1000:
                return tasks
            page += 1

    # Every task closes (delegated ones finish their work, the reconciler may repair some).
    kind_of = {e.id: e.kind for e in expected if e.id}
    # A task whose script stopped on an unexpected answer (reported already) may never close.
    abandoned = {e.id for e in expected if e.id and not e.finished}
    closing_started = time.monotonic()
    while True:
        tasks = await listed()
        active = {i: t["status"] for i, t in tasks.items() if t["status"] in ACTIVE and i not in abandoned}
        if not load.stats.closing:
            load.stats.closing["active when the load ended"] = dict(Counter(kind_of.get(i) for i in active))
        if not active:
            break
        if time.monotonic() - closing_started > 120:
            return [f"{i}: still {s} 120s after the load ended" for i, s in list(active.items())[:30]]
        await asyncio.sleep(1)
    load.stats.closing["seconds until all closed"] = round(time.monotonic() - closing_started, 1)

    mismatches: list[str] = []
    by_id = {e.id: e for e in expected if e.id}
    unknown = set(tasks) - set(by_id)
    for task_id in sorted(unknown):
        # A create whose answer the test never got, yet it made a task (the test retried it).
        mismatches.append(f"{task_id}: a task the test did not know of: {tasks[task_id]['params']}")
    unfinished = [e for e in expected if not e.finished]
    for e in unfinished:
        mismatches.append(f"{e.key} ({e.id or 'never created'}): its script did not finish")

    limit = asyncio.Semaphore(16)

    async def check(exp: Expected) -> None:
        async with limit:
            mismatches.extend(await check_task(client, load, exp))

    await asyncio.gather(*(check(e) for e in expected if e.id and e.finished))
    return mismatches


async def check_task(client: Client, load: Load, exp: Expected) -> list[str]:
    try:
        return await compare(client, load, exp)
    except Exception as err:  # one task's failed read must not hide the others' findings
        return [f"{exp.key} ({exp.id}): could not be read: {type(err).__name__}: {err}"]


async def compare(client: Client, load: Load, exp: Expected) -> list[str]:
    where = f"{exp.key} ({exp.id})"
    ep = load.endpoints[hash(exp.id) % len(load.endpoints)]
    r = await ep.http.get(f"{TASKS}/{exp.id}")
    if r.status_code != 200:
        return [f"{where}: GET answered {r.status_code}"]
    task = r.json()["task"]
    r = await ep.http.get(f"{TASKS}/{exp.id}/events", params={"pageSize": 1000})
    if r.status_code != 200:
        return [f"{where}: GET events answered {r.status_code}"]
    events = r.json()["events"]
    handle = client.get_workflow_handle(workflow_id_for(exp.id))
    described = await handle.describe()
    snapshot = await handle.query(PROGRESS_QUERY, result_type=ProgressSnapshot)

    found: list[str] = []
    api_counts = (
        task["totalRecords"],
        task["processedRecords"],
        task["successRecords"],
        task["failedRecords"],
    )
    wf_counts = (
        snapshot.total_records,
        snapshot.processed_records,
        snapshot.success_records,
        snapshot.failed_records,
    )
    sent = (exp.total, exp.processed, exp.success, exp.failed)
    workflow_status = CLOSED_AS.get(described.status) if described.status else None
    if not task["status"] == snapshot.status == workflow_status == exp.status:
        found.append(
            f"status: API {task['status']}, progress query {snapshot.status}, workflow "
            f"{described.status.name if described.status else None}, expected {exp.status}"
        )
    if not api_counts == wf_counts == sent:
        found.append(
            f"counts (total, processed, success, failed): API {api_counts}, workflow {wf_counts}, sent {sent}"
        )
    if exp.kind.startswith(("ext_", "sched_")) and snapshot.reports != exp.reports:
        found.append(f"reports applied by the workflow: {snapshot.reports}, sent and answered: {exp.reports}")
    if task["retryCount"] != exp.retry_count or snapshot.retry_count != exp.retry_count:
        found.append(
            f"retryCount: API {task['retryCount']}, workflow {snapshot.retry_count}, "
            f"expected {exp.retry_count}"
        )
    if exp.error is not None and not task["errorMessage"] == snapshot.error_message == exp.error:
        found.append(f"errorMessage: API {task['errorMessage']!r}, workflow {snapshot.error_message!r}")

    state_events = [e for e in events if e["eventType"] not in ANNOTATIONS]
    seqs = [e["seq"] for e in state_events]
    if seqs != list(range(len(seqs))):
        found.append(f"event seqs not 0..n: {seqs} ({[e['eventType'] for e in state_events]})")
    elif seqs[-1] != snapshot.seq:
        found.append(f"last event seq {seqs[-1]}, workflow seq {snapshot.seq}")
    if state_events:
        first, last = state_events[0], state_events[-1]
        if first["eventType"] != "task.created":
            found.append(f"first event {first['eventType']}")
        if last["status"] != exp.status or last["eventType"] != f"task.{exp.status}":
            found.append(f"last event {last['eventType']} ({last['status']}), expected task.{exp.status}")
        if exp.reason and exp.reason not in last["payload"].get("message", ""):
            found.append(f"cancel reason missing from {last['payload'].get('message')!r}")
    return [f"{where}: {line}" for line in found]


# -- what runs of the test above found, reproduced ----------------------------------------------


async def test_a_delegated_activity_that_stops_answering_while_cancelled_ends_the_task_cancelled(
    runtime: Runtime, worker: Worker, client: Client, delegate_queue: str
) -> None:
    """The other service's worker stalls once the cancellation reached it: its heartbeat times out.

    The run must still record the cancellation itself (it once failed unrecorded, the API showed
    ``processing`` until the reconciler wrote ``failed``, and the reason was lost).
    """
    started = asyncio.Event()

    @activity.defn(name="slow_task")
    async def stalls_when_cancelled(inp: DelegatedTaskInput) -> None:
        started.set()
        try:
            while True:
                activity.heartbeat()
                await asyncio.sleep(0.1)
        except asyncio.CancelledError:
            await asyncio.sleep(3)  # stuck in its cleanup: no heartbeat (timeout 1 s), no answer
            raise

    me = Principal("fault-test")
    async with Worker(client, task_queue=delegate_queue, activities=[stalls_when_cancelled]):
        task = await runtime.tasks.create_task(
            me, CreateTask(task_type="delegated_slow", entity_type="product", requested_by="fault-test")
        )
        await asyncio.wait_for(started.wait(), 30)
        await asyncio.sleep(0.5)  # the first heartbeats reached Temporal
        answered = await runtime.tasks.cancel_task(me, task.id, "order withdrawn")

        handle = client.get_workflow_handle(workflow_id_for(str(task.id)))
        assert (await handle.describe()).status is WorkflowExecutionStatus.CANCELED
        snapshot = await handle.query(PROGRESS_QUERY, result_type=ProgressSnapshot)
        events = (await runtime.tasks.task_events(me, task.id, PageRequest())).items
    assert answered.status is TaskStatus.CANCELLED
    assert snapshot.status == "cancelled" and snapshot.seq == events[-1].seq
    assert [e.event_type for e in events] == ["task.created", "task.started", "task.cancelled"]
    assert "order withdrawn" in events[-1].payload["message"]


@pytest.mark.filterwarnings("ignore:.*Unable to connect to database")  # Piccolo's, on purpose here
async def test_an_unreachable_postgres_is_service_unavailable_not_an_internal_error() -> None:
    """What the API answers 503 for (retry later) while Postgres is down or restarting, not 500."""
    engine = PostgresEngine(config={"dsn": f"postgresql://postgres@127.0.0.1:{free_port()}/none"})
    await engine.start_connection_pool(min_size=0, max_size=1)
    try:
        repository = TaskRepository(engine)
        with pytest.raises(ServiceUnavailable, match="Postgres cannot be reached"):
            await repository.get(uuid.uuid4())
        with pytest.raises(ServiceUnavailable):
            await repository.page(TaskQuery())
    finally:
        await engine.close_connection_pool()


async def test_a_task_cancelled_before_its_first_workflow_task_ends_cancelled(
    runtime: Runtime, client: Client
) -> None:
    """Behind a dead or overloaded worker, a scheduled task is cancelled and its time passes.

    The run's first workflow task then starts the task and is cancelled while it writes that. The
    run once lost track of that write: its cancellation was fenced out as if another run owned the
    task, the run failed and the task stayed ``scheduled`` for good.
    """
    me = Principal("fault-test")
    at = datetime.now(UTC) + timedelta(seconds=1)
    task = await runtime.tasks.create_task(
        me, CreateTask("process", "product", "fault-test", scheduled_at=at)
    )
    await runtime.workflows.cancel(str(task.id), "schedule withdrawn", wait=0)
    await asyncio.sleep(1.5)  # the scheduled time passes before any worker runs the workflow
    async with build_worker(runtime):
        handle = client.get_workflow_handle(workflow_id_for(str(task.id)))
        result = await asyncio.gather(handle.result(), return_exceptions=True)
        status = (await handle.describe()).status
    assert status is WorkflowExecutionStatus.CANCELED, result
    assert (await runtime.tasks.get_task(me, task.id)).status is TaskStatus.CANCELLED
    events = (await runtime.tasks.task_events(me, task.id, PageRequest())).items
    assert [(e.seq, e.event_type) for e in events] == [
        (0, "task.created"),
        (1, "task.pending"),
        (2, "task.cancelled"),
    ]
