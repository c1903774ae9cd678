"""The bulk journey of a new user, through the REST API only (local storage, signed URLs).

Create an import for ``products``, upload a CSV with bad rows to the returned URL, watch it complete
with exact counts, download the row-level result file, retry only the failed rows after fixing
them, export the products back as CSV and XLSX and download both.
"""

from __future__ import annotations

import csv
import io
import uuid
from typing import Any
from urllib.parse import urlsplit

import httpx
import openpyxl

from tests.helpers import assert_eventually
from tests.web.support import TASKS


def local(url: str) -> str:
    """A signed URL's path and query, for the ASGI test client (it serves the same app)."""
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


async def until_final(api: httpx.AsyncClient, task_id: str) -> dict[str, Any]:
    async def get() -> dict[str, Any]:
        resp = await api.get(f"{TASKS}/{task_id}")
        assert resp.status_code == 200, resp.text
        task: dict[str, Any] = resp.json()["task"]
        return task

    return await assert_eventually(
        get, lambda t: t["status"] in ("completed", "failed", "cancelled"), timeout=60
    )


async def download(api: httpx.AsyncClient, task_id: str, file: str = "output") -> httpx.Response:
    resp = await api.get(f"{TASKS}/{task_id}/download", params={"file": file})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["expiresAt"] is not None
    got = await api.get(local(body["downloadUrl"]))
    assert got.status_code == 200, got.text
    assert body["fileName"] in got.headers["content-disposition"]
    assert got.headers["content-type"].count("charset") <= 1, got.headers["content-type"]
    return got


async def test_import_fix_retry_and_export_through_rest(api: httpx.AsyncClient, who: str) -> None:
    tag = uuid.uuid4().hex[:8]
    good, bad = f"R{tag}-1", f"R{tag}-2"
    created = await api.post(
        TASKS,
        json={
            "taskType": "import",
            "entityType": "products",
            "requestedBy": who,
            "fileName": "My products.csv",
        },
    )
    assert created.status_code == 201, created.text
    body = created.json()
    task_id = body["task"]["id"]
    assert body["uploadUrl"] and body["uploadUrlExpiresAt"]
    data = (
        "SKU,Product Name,Price (EUR),currency,category\n"
        f"{good},Lamp,19.90,EUR,{tag}\n{bad},Chair,free,EUR,{tag}\n"
    ).encode()
    put = await api.put(local(body["uploadUrl"]), content=data)
    assert put.status_code == 200, put.text

    task = await until_final(api, task_id)
    assert task["status"] == "completed", task["errorMessage"]
    counts = (task["totalRecords"], task["processedRecords"], task["successRecords"], task["failedRecords"])
    assert counts == (2, 2, 1, 1)
    assert set(task["filesAvailable"]) >= {"input", "result"}
    result = list(csv.reader(io.StringIO((await download(api, task_id, "result")).text)))
    assert result[0][-4:] == ["_status", "_error_code", "_error_field", "_error_message"]
    assert [r[0] for r in result[1:] if r[5] == "failed"] == [bad]
    assert result[2][6:8] == ["INVALID_DECIMAL", "price"]

    retry = await api.post(f"{TASKS}/{task_id}/retry-failed-rows", json={"fileName": "fixed.csv"})
    assert retry.status_code == 201, retry.text
    retried = retry.json()
    assert retried["task"]["sourceTaskId"] == task_id
    fixed = f"sku,name,price,currency,category\n{bad},Chair,49.00,EUR,{tag}\n".encode()
    assert (await api.put(local(retried["uploadUrl"]), content=fixed)).status_code == 200
    again = await until_final(api, retried["task"]["id"])
    assert (again["status"], again["successRecords"], again["failedRecords"]) == ("completed", 1, 0)

    for fmt in ("csv", "xlsx"):
        export = await api.post(
            TASKS,
            json={
                "taskType": "export",
                "entityType": "products",
                "requestedBy": who,
                "paramsObject": {"format": fmt, "filters": {"category": tag}},
            },
        )
        assert export.status_code == 201, export.text
        assert export.json()["uploadUrl"] is None
        done = await until_final(api, export.json()["task"]["id"])
        assert done["status"] == "completed", done["errorMessage"]
        assert done["manifest"]["rows"] == 2 and len(done["manifest"]["sha256"]) == 64
        content = (await download(api, done["id"])).content
        assert len(content) == done["manifest"]["bytes"]
        if fmt == "csv":
            rows = list(csv.DictReader(io.StringIO(content.decode())))
        else:
            sheet = openpyxl.load_workbook(io.BytesIO(content), read_only=True).active
            assert sheet is not None
            values = [list(r) for r in sheet.iter_rows(values_only=True)]
            # A read-only sheet leaves out trailing empty cells of a row.
            rows = [dict(zip(values[0], [*r, *[None] * len(values[0])], strict=False)) for r in values[1:]]
        assert {(r["sku"], str(r["price"])) for r in rows} == {
            (good, "19.9" if fmt == "xlsx" else "19.90"),
            (bad, "49" if fmt == "xlsx" else "49.00"),
        }


async def test_download_of_a_file_a_task_does_not_have_is_a_clear_409(
    api: httpx.AsyncClient, who: str
) -> None:
    created = await api.post(
        TASKS, json={"taskType": "import", "entityType": "products", "requestedBy": who, "fileName": "p.csv"}
    )
    task_id = created.json()["task"]["id"]
    resp = await api.get(f"{TASKS}/{task_id}/download", params={"file": "result"})
    assert resp.status_code == 409 and resp.json()["code"] == "NOT_AVAILABLE"
    resp = await api.get(f"{TASKS}/{task_id}/download", params={"file": "secrets"})
    assert resp.status_code == 400 and resp.json()["code"] == "VALIDATION_FAILED"
    missing = await api.post(TASKS, json={"taskType": "import", "entityType": "products", "requestedBy": who})
    assert missing.status_code == 400 and "fileName" in missing.json()["detail"]
    unknown = await api.post(
        TASKS, json={"taskType": "import", "entityType": "planets", "requestedBy": who, "fileName": "p.csv"}
    )
    assert unknown.status_code == 400 and unknown.json()["code"] == "UNKNOWN_ENTITY_TYPE"
    await api.post(f"{TASKS}/{task_id}/cancel", json={})
