"""Built-in import and export, end to end: service -> workflow -> bulk activities -> storage and sink.

Real parts throughout: the local storage backend, the session's Postgres (the ``commerce`` sink
database beside the service's), the Temporal dev server and the service's worker.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import uuid
from datetime import datetime
from typing import Any

import asyncpg
import httpx
import openpyxl
import pytest
from temporalio.client import Client
from temporalio.worker import Worker

from common_operations.bootstrap import Runtime, open_runtime
from common_operations.config import S3Settings, Settings, StorageSettings
from common_operations.domain.entities import InvalidFilter
from common_operations.domain.errors import NotAvailable, ValidationFailed
from common_operations.domain.principal import Principal
from common_operations.domain.status import TaskStatus
from common_operations.domain.task import CreateTask, Task
from common_operations.worker import build_worker
from tests.helpers import assert_eventually

ADMIN = Principal(subject="bulk-tester", roles=frozenset({"admin"}))


def sku() -> str:
    return f"T{uuid.uuid4().hex[:10]}"


def products_csv(rows: list[list[str]], header: str = "sku,name,price,currency,stock,active") -> bytes:
    return (header + "\n" + "\n".join(",".join(r) for r in rows) + "\n").encode()


async def create_import(runtime: Runtime, file_name: str = "products.csv", **params: Any) -> Task:
    return await runtime.tasks.create_task(
        ADMIN,
        CreateTask(
            task_type="import", entity_type="products", requested_by="", params=params, file_name=file_name
        ),
    )


def upload(runtime: Runtime, task: Task, data: bytes) -> None:
    with runtime.storage.open_write(task.files["input"]["key"], content_type="text/csv") as out:
        out.write(data)


def read_object(runtime: Runtime, key: str) -> bytes:
    with runtime.storage.open_read(key) as stream:
        return stream.read()


async def finished(runtime: Runtime, task_id: uuid.UUID, timeout: float = 60) -> Task:
    async def get() -> Task:
        return await runtime.tasks.get_task(ADMIN, task_id)

    return await assert_eventually(get, lambda t: t.status.is_closed, timeout=timeout)


async def commerce(runtime: Runtime) -> asyncpg.Connection:
    url = runtime.settings.bulk.databases["commerce"]
    assert url is not None
    return await asyncpg.connect(url)


async def test_import_applies_good_rows_skips_bad_ones_and_writes_a_result_file(
    runtime: Runtime, worker: Worker
) -> None:
    a, b, c = sku(), sku(), sku()
    task = await create_import(runtime)
    assert task.upload_url and task.upload_url_expires_at
    upload(
        runtime,
        task,
        products_csv(
            [
                [a, "Widget", "9.99", "EUR", "5", "true"],
                [b, "", "1.00", "EUR", "1", "true"],  # name required
                [c, "Gadget", "-3", "EUR", "1", "false"],  # price below minimum
                [a, "Widget v2", "10.50", "USD", "7", "true"],  # same key again: the later row wins
            ]
        ),
    )
    done = await finished(runtime, task.id)
    assert done.status is TaskStatus.COMPLETED, done.error_message
    assert (done.counts.total, done.counts.processed, done.counts.success, done.counts.failed) == (4, 4, 2, 2)
    conn = await commerce(runtime)
    try:
        rows = await conn.fetch(
            "SELECT sku, name, price, currency FROM products WHERE sku = ANY($1)", [a, b, c]
        )
    finally:
        await conn.close()
    assert [(r["sku"], r["name"], str(r["price"]), r["currency"]) for r in rows] == [
        (a, "Widget v2", "10.50", "USD")
    ]

    result = list(csv.reader(io.StringIO(read_object(runtime, done.files["result"]["key"]).decode())))
    assert result[0] == [
        "sku",
        "name",
        "price",
        "currency",
        "stock",
        "active",
        "_status",
        "_error_code",
        "_error_field",
        "_error_message",
    ]
    by_row = {r[0] + r[1]: r[6:9] for r in result[1:]}
    assert by_row[a + "Widget"][0] == "ok"
    assert by_row[b][:3] == ["failed", "REQUIRED", "name"]
    assert by_row[c + "Gadget"][:3] == ["failed", "BELOW_MINIMUM", "price"]
    url = await runtime.tasks.download_url(ADMIN, task.id, "result")
    assert (
        "/api/v1/files/" in url.url and url.expires_at is not None and url.file_name == "products.result.csv"
    )

    # Only the failed rows, fixed, as a new task linked to this one.
    retry = await runtime.tasks.retry_failed_rows(ADMIN, task.id, file_name="fixed.csv")
    assert retry.source_task_id == task.id and retry.upload_url
    upload(
        runtime,
        retry,
        products_csv([[b, "Fixed", "1.00", "EUR", "1", "true"], [c, "Gadget", "3", "EUR", "1", "x"]]),
    )
    again = await finished(runtime, retry.id)
    assert (again.counts.processed, again.counts.success, again.counts.failed) == (2, 1, 1)
    assert (await runtime.tasks.get_task(ADMIN, task.id)).counts.failed == 2  # the source keeps its counts


async def test_retry_of_failed_rows_without_a_new_file_takes_them_from_the_source(
    runtime: Runtime, worker: Worker
) -> None:
    a, b = sku(), sku()
    task = await create_import(runtime, mode="insert")
    upload(
        runtime,
        task,
        products_csv([[a, "One", "1", "EUR", "1", "true"], [b, "Two", "oops", "EUR", "1", "true"]]),
    )
    done = await finished(runtime, task.id)
    assert (done.counts.success, done.counts.failed) == (1, 1)
    retry = await runtime.tasks.retry_failed_rows(ADMIN, task.id)
    assert retry.upload_url is None
    again = await finished(runtime, retry.id)
    # The same bad row, taken over as it was: it fails again, alone.
    assert (again.counts.processed, again.counts.failed) == (1, 1), again.error_message
    result = read_object(runtime, again.files["result"]["key"]).decode()
    assert "oops" in result and "INVALID_DECIMAL" in result and a not in result


async def test_a_bad_header_fails_the_task_before_any_row_is_written(
    runtime: Runtime, worker: Worker
) -> None:
    task = await create_import(runtime)
    upload(runtime, task, b"sku,name,colour\nX1,Thing,red\n")
    done = await finished(runtime, task.id)
    assert done.status is TaskStatus.FAILED
    assert done.error_message is not None and "colour" in done.error_message and "price" in done.error_message


async def test_too_many_errors_stop_the_import_with_what_was_committed(
    runtime: Runtime, worker: Worker
) -> None:
    rows = [[sku(), "ok", "1", "EUR", "1", "true"] for _ in range(3)] + [
        [sku(), "bad", "x", "EUR", "1", "true"]
    ] * 3
    task = await create_import(runtime, maxErrors=1)
    upload(runtime, task, products_csv(rows))
    done = await finished(runtime, task.id)
    assert done.status is TaskStatus.FAILED
    assert done.error_message and "maxErrors 1" in done.error_message
    assert done.counts.failed == 3 and done.counts.success == 3
    assert "result" in done.files


async def test_dry_run_validates_and_writes_nothing(runtime: Runtime, worker: Worker) -> None:
    a = sku()
    task = await create_import(runtime, dryRun=True)
    upload(
        runtime,
        task,
        products_csv([[a, "One", "1", "EUR", "1", "true"], [sku(), "", "1", "EUR", "1", "true"]]),
    )
    done = await finished(runtime, task.id)
    assert done.status is TaskStatus.COMPLETED and (done.counts.success, done.counts.failed) == (1, 1)
    conn = await commerce(runtime)
    try:
        assert await conn.fetchval("SELECT count(*) FROM products WHERE sku = $1", a) == 0
    finally:
        await conn.close()


async def test_export_writes_the_filtered_rows_with_a_manifest(runtime: Runtime, worker: Worker) -> None:
    category = f"cat-{uuid.uuid4().hex[:8]}"
    skus = sorted(sku() for _ in range(25))
    await runtime.sinks.ensure_tables(runtime.entities)
    conn = await commerce(runtime)
    try:
        await conn.executemany(
            "INSERT INTO products (sku, name, price, currency, category, active)"
            " VALUES ($1, $2, 1.5, 'EUR', $3, true)",
            [
                (s, ["=cmd|' /C calc'!A", "+1", "-2", "@x", "\tt", "\rr"][i % 6] + str(i), category)
                for i, s in enumerate(skus)
            ],
        )
    finally:
        await conn.close()
    task = await runtime.tasks.create_task(
        ADMIN,
        CreateTask(
            task_type="export",
            entity_type="products",
            requested_by="",
            params={"format": "csv", "filters": {"category": category}},
        ),
    )
    done = await finished(runtime, task.id)
    assert done.status is TaskStatus.COMPLETED, done.error_message
    assert done.counts.processed == 25 and done.counts.total == 25
    data = read_object(runtime, done.files["output"]["key"])
    manifest = done.manifest
    assert manifest is not None and manifest["rows"] == 25 and manifest["bytes"] == len(data)

    assert manifest["sha256"] == hashlib.sha256(data).hexdigest()
    rows = list(csv.DictReader(io.StringIO(data.decode())))
    assert [r["sku"] for r in rows] == skus
    assert all(r["name"].startswith("'") for r in rows)  # a spreadsheet would have run them
    url = await runtime.tasks.download_url(ADMIN, task.id)
    assert url.file_name and url.file_name.endswith(".csv")


async def test_bad_options_are_refused_at_create(runtime: Runtime) -> None:
    with pytest.raises(ValidationFailed, match="fileName"):
        await runtime.tasks.create_task(
            ADMIN, CreateTask(task_type="import", entity_type="products", requested_by="")
        )
    with pytest.raises(ValidationFailed, match="entityType"):
        await runtime.tasks.create_task(
            ADMIN, CreateTask(task_type="import", entity_type="planets", requested_by="", file_name="p.csv")
        )
    with pytest.raises(InvalidFilter, match="cannot filter on 'name'"):
        await runtime.tasks.create_task(
            ADMIN,
            CreateTask(
                task_type="export", entity_type="products", requested_by="", params={"filters": {"name": "x"}}
            ),
        )


async def test_a_task_without_output_says_so(runtime: Runtime, worker: Worker) -> None:
    task = await create_import(runtime)
    with pytest.raises(NotAvailable, match="output"):
        await runtime.tasks.download_url(ADMIN, task.id)
    await runtime.tasks.cancel_task(ADMIN, task.id)


async def test_xlsx_and_jsonl_imports(runtime: Runtime, worker: Worker) -> None:
    a, b, c = sku(), sku(), sku()
    book = openpyxl.Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.title = "Products"
    sheet.append(["SKU", "Product name", "price", "Updated at"])
    sheet.append([a, "From a sheet", 12.5, datetime(2026, 1, 2, 3, 4, 5)])
    sheet.append([b, "Bad price", "n/a", None])
    buf = io.BytesIO()
    book.save(buf)
    task = await create_import(runtime, "products.xlsx", sheet="Products")
    upload(runtime, task, buf.getvalue())
    done = await finished(runtime, task.id)
    assert (done.status, done.counts.success, done.counts.failed) == (TaskStatus.COMPLETED, 1, 1), (
        done.error_message
    )
    assert done.files["result"]["name"] == "products.result.xlsx"  # the result file in the input's format
    result = openpyxl.load_workbook(
        io.BytesIO(read_object(runtime, done.files["result"]["key"])), read_only=True
    )
    rows = [list(r) for r in result.worksheets[0].iter_rows(values_only=True)]
    assert rows[0][-4:] == ["_status", "_error_code", "_error_field", "_error_message"]
    assert rows[2][4:6] == ["failed", "INVALID_DECIMAL"]

    lines = [
        {"sku": c, "name": "From JSON", "price": 3, "tags": ["x", "y"], "active": True},
        {"sku": sku(), "name": "No price"},
    ]
    task = await create_import(runtime, "products.jsonl")
    upload(runtime, task, "".join(json.dumps(line) + "\n" for line in lines).encode())
    done = await finished(runtime, task.id)
    assert (done.status, done.counts.success, done.counts.failed) == (TaskStatus.COMPLETED, 1, 1), (
        done.error_message
    )
    conn = await commerce(runtime)
    try:
        row = await conn.fetchrow("SELECT price, tags, active FROM products WHERE sku = $1", c)
    finally:
        await conn.close()
    assert (
        row is not None
        and str(row["price"]) == "3"
        and json.loads(row["tags"]) == ["x", "y"]
        and row["active"]
    )


async def test_deleting_a_task_deletes_its_files(runtime: Runtime, worker: Worker) -> None:
    task = await create_import(runtime)
    upload(runtime, task, products_csv([[sku(), "One", "1", "EUR", "1", "true"]]))
    done = await finished(runtime, task.id)
    keys = [done.files[role]["key"] for role in ("input", "result")]
    assert all(runtime.storage.stat(key) is not None for key in keys)
    await runtime.tasks.delete_task(ADMIN, task.id)
    assert all(runtime.storage.stat(key) is None for key in keys)


@pytest.fixture
def s3_backed(settings: Settings, s3_settings: S3Settings) -> Settings:
    """The suite's settings with task files on the session's S3 server (moto), a bucket of their own."""
    return settings.model_copy(update={"storage": StorageSettings(backend="s3", s3=s3_settings)})


async def test_import_and_export_with_the_s3_backend(s3_backed: Settings, client: Client) -> None:
    async with open_runtime(s3_backed, client=client, with_worker=True) as rt, build_worker(rt):
        a = sku()
        task = await create_import(rt)
        assert task.upload_url and s3_backed.storage.s3.endpoint in task.upload_url
        assert "X-Amz-Signature" in task.upload_url
        async with httpx.AsyncClient() as http:  # the client's own upload, straight to S3
            put = await http.put(task.upload_url, content=products_csv([[a, "S3", "2", "EUR", "1", "true"]]))
            assert put.status_code == 200, put.text
            done = await finished(rt, task.id)
            assert (done.status, done.counts.success) == (TaskStatus.COMPLETED, 1), done.error_message
            url = await rt.tasks.download_url(ADMIN, task.id, "result")
            got = await http.get(url.url)
            assert got.status_code == 200 and a in got.text
            assert 'filename="products.result.csv"' in got.headers["content-disposition"]
            export = await rt.tasks.create_task(
                ADMIN,
                CreateTask(
                    task_type="export",
                    entity_type="products",
                    requested_by="",
                    params={"format": "jsonl", "filters": {"currency": "EUR"}},
                ),
            )
            exported = await finished(rt, export.id)
            assert exported.status is TaskStatus.COMPLETED, exported.error_message
            body = (await http.get((await rt.tasks.download_url(ADMIN, export.id)).url)).content
            assert hashlib.sha256(body).hexdigest() == exported.manifest["sha256"]  # type: ignore[index]
            assert any(json.loads(line)["sku"] == a for line in body.splitlines())
