"""Bulk jobs under faults and bad input: each ends with a clear error and nothing half-written.

A worker killed mid-import or mid-export (a real ``common-operations worker`` process, SIGKILL) is
replaced by another; the job resumes from its last committed chunk (import, in ``insert`` mode so a
row applied twice would show as a duplicate) or starts its snapshot again (export).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import signal
import sys
import threading
import uuid
import zipfile
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import asyncpg
import pytest
import yaml
from temporalio.client import Client

from common_operations.bootstrap import Runtime, open_runtime
from common_operations.config import Settings
from common_operations.domain.status import TaskStatus
from common_operations.domain.task import CreateTask, PageRequest, Task
from common_operations.worker import build_worker
from tests.helpers import assert_eventually
from tests.services.test_bulk_import import (
    ADMIN,
    create_import,
    finished,
    products_csv,
    read_object,
    sku,
    upload,
)

PROJECT = Path(__file__).resolve().parents[2]


def rows_csv(n: int, prefix: str) -> bytes:
    return products_csv(
        [[f"{prefix}-{i:07d}", f"Item {i}", "1.25", "EUR", str(i % 50), "true"] for i in range(n)]
    )


async def sink_count(runtime: Runtime, prefix: str) -> int:
    url = runtime.settings.bulk.databases["commerce"]
    assert url is not None
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM products WHERE sku LIKE $1", prefix + "-%"))
    finally:
        await conn.close()


@pytest.fixture
def small_chunks(settings: Settings) -> Settings:
    """Chunks of 500 rows, so that a job of tens of thousands of rows takes several seconds."""
    settings.bulk.chunk_rows = 500
    return settings


@pytest.fixture
async def runtime(small_chunks: Settings, client: Client) -> AsyncIterator[Runtime]:
    async with open_runtime(small_chunks, client=client, with_worker=True) as rt:
        yield rt


class WorkerProcess:
    """``common-operations worker`` on the test's queue, data directory and databases."""

    def __init__(self, settings: Settings, tmp_path: Path) -> None:
        config = yaml.safe_load((PROJECT / "configs" / "config.yaml").read_text())
        config["bulk"]["chunk_rows"] = settings.bulk.chunk_rows
        config["bulk"]["databases"] = dict(settings.bulk.databases)
        config["data_dir"] = str(settings.data_dir)
        config["temporal"]["address"] = settings.temporal.address
        config["temporal"]["task_queue"] = settings.temporal.task_queue
        config["database"]["url"] = settings.database.url
        self.config_file = tmp_path / "worker-config.yaml"
        self.config_file.write_text(yaml.safe_dump(config))
        self.log = tmp_path / "worker.log"
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CO_") and k != "DATABASE_URL"}
        env["CONFIG_FILE"] = str(self.config_file)
        # No worker /metrics listener: a fixed port would clash with other workers of the session.
        env["CO_OBSERVABILITY__WORKER_METRICS_PORT"] = "0"
        with self.log.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                str(Path(sys.executable).parent / "common-operations"),
                "worker",
                env=env,
                stdout=log,
                stderr=log,
            )

    async def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        await self.process.wait()


async def wait_processed(runtime: Runtime, task_id: uuid.UUID, at_least: int) -> Task:
    async def get() -> Task:
        return await runtime.tasks.get_task(ADMIN, task_id)

    return await assert_eventually(
        get, lambda t: t.counts.processed >= at_least or t.status.is_closed, timeout=60
    )


@pytest.mark.slow
async def test_a_worker_killed_mid_import_is_replaced_and_every_row_applies_once(
    runtime: Runtime, tmp_path: Path
) -> None:
    prefix, n = f"K{uuid.uuid4().hex[:8]}", 40_000
    task = await create_import(runtime, mode="insert")  # a chunk applied twice would be DUPLICATE_KEY
    upload(runtime, task, rows_csv(n, prefix))
    proc = WorkerProcess(runtime.settings, tmp_path)
    await proc.start()
    seen = await wait_processed(runtime, task.id, 2_000)
    assert seen.status is TaskStatus.PROCESSING, (seen.status, proc.log.read_text()[-2000:])
    await proc.kill()
    at_kill = await sink_count(runtime, prefix)
    assert 0 < at_kill < n
    async with build_worker(runtime):
        done = await finished(runtime, task.id, timeout=120)
    assert done.status is TaskStatus.COMPLETED, done.error_message
    assert (done.counts.total, done.counts.processed, done.counts.success, done.counts.failed) == (n, n, n, 0)
    assert await sink_count(runtime, prefix) == n
    result = read_object(runtime, done.files["result"]["key"]).decode()
    assert result.count(",ok,") == n


@pytest.mark.slow
async def test_a_worker_killed_mid_export_is_replaced_and_the_file_is_whole(
    runtime: Runtime, tmp_path: Path
) -> None:
    prefix, n = f"E{uuid.uuid4().hex[:8]}", 40_000
    seed = await create_import(runtime)
    upload(runtime, seed, rows_csv(n, prefix))
    async with build_worker(runtime):
        assert (await finished(runtime, seed.id, timeout=120)).counts.success == n
    task = await runtime.tasks.create_task(
        ADMIN,
        CreateTask(
            task_type="export",
            entity_type="products",
            requested_by="",
            params={"format": "jsonl"},
        ),
    )
    proc = WorkerProcess(runtime.settings, tmp_path)
    await proc.start()
    seen = await wait_processed(runtime, task.id, 1_000)
    assert seen.status is TaskStatus.PROCESSING
    await proc.kill()
    async with build_worker(runtime):
        done = await finished(runtime, task.id, timeout=120)
    assert done.status is TaskStatus.COMPLETED, done.error_message
    data = read_object(runtime, done.files["output"]["key"])
    # JSON lines: written row by row by the service (a CSV export of a Postgres source is one COPY,
    # too quick to be caught half-way here).
    skus = [json.loads(line)["sku"] for line in data.splitlines()]
    assert len(skus) == done.counts.processed == done.manifest["rows"]  # type: ignore[index]
    assert len(set(skus)) == len(skus)  # no row twice
    assert sum(1 for s in skus if s.startswith(prefix)) == n
    assert done.manifest is not None and done.manifest["sha256"] == hashlib.sha256(data).hexdigest()


async def test_a_cancel_mid_import_stops_and_keeps_the_committed_chunks(runtime: Runtime) -> None:
    prefix, n = f"C{uuid.uuid4().hex[:8]}", 300_000
    task = await create_import(runtime)
    upload(runtime, task, rows_csv(n, prefix))
    async with build_worker(runtime):
        seen = await wait_processed(runtime, task.id, 1_000)
        assert seen.status is TaskStatus.PROCESSING
        cancelled = await runtime.tasks.cancel_task(ADMIN, task.id, "enough")
        assert cancelled.status is TaskStatus.CANCELLED
    committed = await sink_count(runtime, prefix)
    assert 0 < committed < n
    assert cancelled.counts.processed == committed  # the counts say what stays
    logs = await runtime.tasks.task_logs(ADMIN, task.id, PageRequest(1, 100))
    assert any("committed before the cancellation stay written" in line.message for line in logs.items)


def zip_bomb() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("[Content_Types].xml", "<Types/>")
        z.writestr("xl/workbook.xml", "<workbook/>")
        z.writestr("xl/worksheets/sheet1.xml", b"0" * (300 * 1024 * 1024))
    return buf.getvalue()


BAD_FILES: dict[str, tuple[str, bytes, dict[str, Any], str]] = {
    # case: (file name, bytes, params, text the task's error must contain)
    "empty file": ("p.csv", b"", {}, "empty (0 bytes)"),
    "whitespace only": ("p.csv", b"\n\n  \n", {}, "empty"),
    "header only": ("p.csv", b"sku,name,price\n", {}, "header but no data rows"),
    "wrong delimiter": ("p.csv", b"sku,name,price\nA1,x,1\n", {"delimiter": ";"}, "','"),
    "invalid UTF-8": ("p.csv", b"sku,name,price\nA1,ok,1\nA2,caf\xe9,1\n", {}, "UTF-8"),
    "a 1 MB field": ("p.csv", b"sku,name,price\nA1," + b"x" * 1_000_000 + b",1\n", {}, "over the limit"),
    "xlsx zip bomb": ("p.xlsx", zip_bomb(), {}, "zip"),
    "xlsx not a workbook": ("p.xlsx", b"sku,name,price\nA1,x,1\n", {}, "not an XLSX workbook"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
async def test_bad_files_fail_clearly_and_write_nothing(runtime: Runtime, case: str) -> None:
    name, data, params, expected = BAD_FILES[case]
    task = await create_import(runtime, name, **params)
    with runtime.storage.open_write(
        task.files["input"]["key"], content_type="application/octet-stream"
    ) as out:
        out.write(data)
    async with build_worker(runtime):
        done = await finished(runtime, task.id)
    assert done.status is TaskStatus.FAILED, (case, done)
    assert done.error_message is not None and expected.lower() in done.error_message.lower(), (
        done.error_message
    )
    assert done.counts.success == 0


async def test_ragged_rows_are_counted_and_reported_per_row(runtime: Runtime) -> None:
    a, b = sku(), sku()
    task = await create_import(runtime)
    upload(runtime, task, f"sku,name,price\n{a},ok,1\n{b},too,many,fields\n".encode())
    async with build_worker(runtime):
        done = await finished(runtime, task.id)
    assert (done.status, done.counts.success, done.counts.failed) == (TaskStatus.COMPLETED, 1, 1)
    assert "RAGGED_ROW" in read_object(runtime, done.files["result"]["key"]).decode()


async def test_a_file_over_the_size_limit_is_refused(runtime: Runtime) -> None:
    runtime.settings.storage.max_upload_bytes = 100
    with pytest.raises(Exception, match="over the upload limit"):
        await runtime.tasks.create_task(
            ADMIN,
            CreateTask(
                task_type="import", entity_type="products", requested_by="", file_name="p.csv", file_size=101
            ),
        )
    task = await create_import(runtime)  # size not announced: refused once uploaded
    upload(runtime, task, rows_csv(20, sku()))
    async with build_worker(runtime):
        done = await finished(runtime, task.id)
    assert (
        done.status is TaskStatus.FAILED
        and done.error_message
        and "more than the limit of 100" in done.error_message
    )
    assert runtime.storage.stat(task.files["input"]["key"]) is None  # not kept


async def test_an_upload_that_never_comes_fails_the_task_when_its_url_expires(runtime: Runtime) -> None:
    runtime.settings.storage.upload_url_ttl = 1.5
    task = await create_import(runtime)
    assert task.status is TaskStatus.PENDING
    async with build_worker(runtime):
        done = await finished(runtime, task.id)
    assert done.status is TaskStatus.FAILED
    assert done.error_message and "not uploaded before its upload URL expired" in done.error_message
    assert done.started_at is None  # it never started


class _Sink(BaseHTTPRequestHandler):
    """An owning service's import endpoint: rows named 'bad' are refused."""

    def do_POST(self) -> None:
        import json

        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        results = [
            {"row": r["row"], "ok": r["data"].get("name") != "bad"}
            | (
                {}
                if r["data"].get("name") != "bad"
                else {"code": "REFUSED", "field": "name", "message": "no"}
            )
            for r in body["rows"]
        ]
        data = json.dumps({"results": results}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def http_sink() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/import"
    server.shutdown()


def widgets(directory: Path, url: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "widgets.yaml").write_text(
        yaml.safe_dump(
            {
                "fields": [
                    {"name": "code", "type": "string", "key": True, "required": True},
                    {"name": "name", "type": "string", "required": True},
                ],
                "sink": {"kind": "http", "url": url, "timeout": 2},
            }
        )
    )
    return directory


@pytest.mark.parametrize("reachable", [True, False])
async def test_an_http_sink_rejecting_rows_or_unreachable(
    small_chunks: Settings, client: Client, tmp_path: Path, http_sink: str, reachable: bool
) -> None:
    url = http_sink if reachable else "http://127.0.0.1:9/import"  # discard port: refused
    settings = small_chunks.model_copy(deep=True)
    settings.bulk.entities_dir = widgets(tmp_path / "entities", url)
    async with open_runtime(settings, client=client, with_worker=True) as rt:
        task = await rt.tasks.create_task(
            ADMIN, CreateTask(task_type="import", entity_type="widgets", requested_by="", file_name="w.csv")
        )
        upload(rt, task, b"code,name\nW1,good\nW2,bad\nW3,fine\n")
        async with build_worker(rt):
            done = await finished(rt, task.id, timeout=90)
    if reachable:
        assert (done.status, done.counts.success, done.counts.failed) == (TaskStatus.COMPLETED, 2, 1)
        assert "REFUSED" in read_object(rt, done.files["result"]["key"]).decode()
    else:
        assert done.status is TaskStatus.FAILED
        assert done.error_message and "127.0.0.1:9" in done.error_message, done.error_message
        assert done.counts.success == 0


class _FlakySink(BaseHTTPRequestHandler):
    """Accepts the first two chunks, then fails until told to recover; records every row it took."""

    taken: ClassVar[list[str]] = []
    accepted_chunks: ClassVar[int] = 0
    healthy: ClassVar[bool] = False

    def do_POST(self) -> None:
        import json

        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        cls = type(self)
        if cls.accepted_chunks >= 2 and not cls.healthy:
            self.send_response(503)
            self.end_headers()
            return
        cls.accepted_chunks += 1
        cls.taken.extend(r["data"]["code"] for r in body["rows"])
        data = json.dumps({"results": [{"row": r["row"], "ok": True} for r in body["rows"]]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


async def test_a_retried_import_resumes_after_its_last_committed_chunk(
    small_chunks: Settings, client: Client, tmp_path: Path
) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FlakySink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    settings = small_chunks.model_copy(deep=True)
    settings.bulk.entities_dir = widgets(
        tmp_path / "entities", f"http://127.0.0.1:{server.server_address[1]}/i"
    )
    settings.bulk.breaker_reset_after = 0.5  # the retry's first call is the breaker's trial call
    n = 2_000  # four chunks of 500: two go in, then the sink fails
    try:
        async with open_runtime(settings, client=client, with_worker=True) as rt:
            task = await rt.tasks.create_task(
                ADMIN,
                CreateTask(task_type="import", entity_type="widgets", requested_by="", file_name="w.csv"),
            )
            upload(rt, task, ("code,name\n" + "".join(f"W{i},n{i}\n" for i in range(n))).encode())
            async with build_worker(rt):
                failed = await finished(rt, task.id, timeout=90)
                assert failed.status is TaskStatus.FAILED, failed
                assert failed.error_message and "503" in failed.error_message
                _FlakySink.healthy = True
                await rt.tasks.retry_task(ADMIN, task.id)
                done = await finished(rt, task.id, timeout=60)
        assert done.status is TaskStatus.COMPLETED, done.error_message
        assert (done.counts.processed, done.counts.success, done.counts.failed) == (n, n, 0)
        assert sorted(_FlakySink.taken) == sorted(f"W{i}" for i in range(n))  # each row sent once
    finally:
        server.shutdown()
