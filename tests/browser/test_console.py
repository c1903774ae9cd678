"""The console and /docs in headless Chromium, with every other origin cut off.

Each test keeps a screenshot of the pages it saw under tests/artifacts/ (git-ignored);
``CO_UPDATE_DOCS_SCREENSHOT=1`` also refreshes docs/console.png, the README's picture.
"""

from __future__ import annotations

import os
import shutil
import uuid

import httpx
from playwright.async_api import expect

from common_operations.web.console.auth import COOKIE_NAME
from tests.auth_support import bearer, token
from tests.browser.conftest import DOCS_SCREENSHOT, Tab
from tests.web.support import TASKS, create, eventually_status, reported

TIMEOUT = 20_000  # ms: progress reaches the page within a second or two; this only bounds a failure


def _csp_complaints(tab: Tab) -> list[str]:
    return [m for m in tab.console_errors if "Content Security Policy" in m or "Refused to" in m]


def _streamed(tab: Tab, task_id: str) -> list[int]:
    """Statuses of the page's SSE requests for the task."""
    return [status for url, status in tab.responses if url.split("?")[0].endswith(f"/tasks/{task_id}/stream")]


async def test_docs_render_the_api_offline(tab: Tab) -> None:
    page = tab.page
    await page.goto(tab.base + "/docs")
    # Swagger UI rendered the operations from /docs/openapi.json (vendored assets, no CDN).
    await expect(page.get_by_text("Common Operations").first).to_be_visible(timeout=TIMEOUT)
    await expect(
        page.locator(".opblock-summary-path", has_text="/api/v1/operations/tasks").first
    ).to_be_visible(timeout=TIMEOUT)
    assert await page.locator(".opblock").count() > 10
    await tab.shot("docs")
    assert _csp_complaints(tab) == [], tab.console_errors


async def test_console_lists_tasks_and_the_progress_bar_follows_reports(
    tab: Tab, http: httpx.AsyncClient
) -> None:
    who = f"browser-{uuid.uuid4().hex[:10]}"
    first = await create(http, who, entityType="product", paramsObject={"sku": "A1"})
    other = await create(http, who, taskType="data_sync", entityType="customer")
    page = tab.page

    await page.goto(f"{tab.base}/console?requestedBy={who}")
    rows = page.locator("tr.task-row")
    await expect(rows).to_have_count(2, timeout=TIMEOUT)
    row = page.locator(f'tr[data-task-id="{first["id"]}"]')
    await expect(row.locator(".badge")).to_have_text("pending")
    bar = row.locator("progress")
    await expect(bar).to_have_js_property("value", 0)

    # Progress reported through the API reaches the open page (SSE), without a reload.
    await reported(http, first["id"], totalRecords=200, processedRecords=50, successRecords=50)
    await expect(row.locator(".badge")).to_have_text("processing", timeout=TIMEOUT)
    await expect(bar).to_have_js_property("value", 25, timeout=TIMEOUT)
    await reported(http, first["id"], processedRecords=150, successRecords=140, failedRecords=10)
    await expect(bar).to_have_js_property("value", 75, timeout=TIMEOUT)
    await expect(row.locator('[data-field="processedRecords"]')).to_have_text("150")
    assert 200 in _streamed(tab, first["id"]), tab.responses
    listed = await tab.shot("console-list")
    if os.environ.get("CO_UPDATE_DOCS_SCREENSHOT") == "1":
        shutil.copyfile(listed, DOCS_SCREENSHOT)

    # The filters are the API's: a status filter narrows the table (htmx swaps it in place).
    await page.select_option("select[name=status]", "pending")
    await expect(rows).to_have_count(1, timeout=TIMEOUT)
    await expect(page.locator(f'tr[data-task-id="{other["id"]}"]')).to_be_visible()
    assert "status=pending" in page.url

    # The task page: counts, the live bar, the end of the task, its logs and events.
    await page.goto(f"{tab.base}/console/tasks/{first['id']}")
    panel = page.locator("#task-panel")
    await expect(panel.locator('[data-field="processedRecords"]')).to_have_text("150", timeout=TIMEOUT)
    await expect(panel.locator('[data-field="failedRecords"]')).to_have_text("10")
    await reported(http, first["id"], processedRecords=200, successRecords=190, failedRecords=10)
    await expect(panel.locator("progress")).to_have_js_property("value", 100, timeout=TIMEOUT)
    await reported(http, first["id"], isCompleted=True)
    await expect(page.locator("#task-panel .badge").first).to_have_text("completed", timeout=TIMEOUT)
    # The status change refreshed the actions: a finished task can be deleted, no longer cancelled.
    await expect(page.locator("#delete-task")).to_be_visible(timeout=TIMEOUT)
    await expect(page.locator("#cancel-task")).to_have_count(0)
    await expect(page.locator("#task-events")).to_contain_text("task.completed", timeout=TIMEOUT)
    await expect(page.locator("#task-logs tr").first).to_be_visible()
    await tab.shot("console-task")
    assert _csp_complaints(tab) == [], tab.console_errors


async def test_cancel_and_delete_from_the_task_page(tab: Tab, http: httpx.AsyncClient) -> None:
    who = f"browser-{uuid.uuid4().hex[:10]}"
    task = await create(http, who, entityType="product")
    await reported(http, task["id"], totalRecords=10, processedRecords=3)
    page = tab.page

    await page.goto(f"{tab.base}/console/tasks/{task['id']}")
    await expect(page.locator("#task-panel .badge").first).to_have_text("processing", timeout=TIMEOUT)
    await page.fill("input[name=reason]", "superseded by a newer upload")
    await page.click("#cancel-task")
    await expect(page.locator("#task-panel .badge").first).to_have_text("cancelled", timeout=TIMEOUT)
    await expect(page.locator("#flash")).to_contain_text("cancel")
    await tab.shot("console-cancelled")
    shown = await eventually_status(http, task["id"], "cancelled")
    assert shown["status"] == "cancelled"
    events = (await http.get(f"{TASKS}/{task['id']}/events")).json()["events"]
    assert any("superseded by a newer upload" in e["eventData"] for e in events), events

    # Delete (after the confirm dialog) goes back to the list; the task is gone from the API.
    await page.click("#delete-task")
    await page.wait_for_url(f"{tab.base}/console?deleted={task['id']}", timeout=TIMEOUT)
    assert (await http.get(f"{TASKS}/{task['id']}")).status_code == 404


async def test_a_refused_action_is_shown_not_swallowed(tab: Tab, http: httpx.AsyncClient) -> None:
    viewer = f"viewer-{uuid.uuid4().hex[:8]}"
    task = await create(http, f"browser-{uuid.uuid4().hex[:10]}", requestedBy=viewer)
    # A viewer reads its own tasks but may not cancel them: the service refuses, the page says so.
    await tab.page.context.add_cookies(
        [{"name": COOKIE_NAME, "value": "bearer:" + token(viewer, ["viewer"]), "url": tab.base}]
    )
    page = tab.page
    await page.goto(f"{tab.base}/console/tasks/{task['id']}")
    await expect(page.locator("header .who")).to_contain_text(viewer, timeout=TIMEOUT)
    await page.click("#cancel-task")
    await expect(page.locator("#flash")).to_contain_text("PERMISSION_DENIED", timeout=TIMEOUT)
    await expect(page.locator("#task-panel .badge").first).to_have_text("pending")
    assert (await http.get(f"{TASKS}/{task['id']}")).json()["task"]["status"] == "pending"
    await tab.shot("console-refused")


async def test_create_a_task_from_the_console(tab: Tab, http: httpx.AsyncClient) -> None:
    page = tab.page
    who = f"browser-{uuid.uuid4().hex[:10]}"
    await page.goto(f"{tab.base}/console/new")
    await page.select_option("select[name=taskType]", "process")
    await page.fill("input[name=entityType]", "product")
    await page.fill("input[name=requestedBy]", who)
    await page.fill("textarea[name=params]", '{"sku": "B2", "qty": 3}')
    await tab.shot("console-new")
    await page.click("#create-submit")
    await page.wait_for_url(f"{tab.base}/console/tasks/*", timeout=TIMEOUT)
    task_id = page.url.rsplit("/", 1)[1]
    await expect(page.locator("#task-panel .badge").first).to_have_text("pending", timeout=TIMEOUT)
    created = (await http.get(f"{TASKS}/{task_id}")).json()["task"]
    assert created["requestedBy"] == who and created["paramsObject"] == {"sku": "B2", "qty": 3}

    # Bad params are refused in the page, with the reason.
    await page.goto(f"{tab.base}/console/new")
    await page.fill("textarea[name=params]", "{not json")
    await page.click("#create-submit")
    await expect(page.locator("#create-status")).to_contain_text("not JSON")


async def test_login_with_a_token_scopes_the_console_and_its_stream(
    tab: Tab, http: httpx.AsyncClient
) -> None:
    alice = f"alice-{uuid.uuid4().hex[:8]}"
    mine = (await http.post(TASKS, json={"taskType": "process"}, headers=bearer(alice))).json()["task"]
    await create(http, f"browser-{uuid.uuid4().hex[:10]}")  # someone else's
    page = tab.page

    await page.goto(f"{tab.base}/console/login")
    await page.fill("textarea[name=credential]", "Bearer not-a-token")
    await page.click("form.login button[type=submit]")
    await expect(page.locator(".flash-error")).to_be_visible(timeout=TIMEOUT)

    await page.fill("textarea[name=credential]", token(alice))
    await page.click("form.login button[type=submit]")
    await page.wait_for_url(f"{tab.base}/console", timeout=TIMEOUT)
    await expect(page.locator("header .who")).to_contain_text(alice)
    # alice (no roles) sees her own tasks only; the session cookie is invisible to scripts.
    await expect(page.locator("tr.task-row")).to_have_count(1, timeout=TIMEOUT)
    await expect(page.locator(f'tr[data-task-id="{mine["id"]}"]')).to_be_visible()
    assert await page.evaluate("document.cookie") == ""
    # The EventSource carries the cookie, which stands for alice's token.
    await reported(http, mine["id"], totalRecords=4, processedRecords=1)
    bar = page.locator(f'tr[data-task-id="{mine["id"]}"] progress')
    await expect(bar).to_have_js_property("value", 25, timeout=TIMEOUT)
    await tab.shot("console-alice")

    await page.click("header .who button")
    await page.wait_for_url(f"{tab.base}/console/login", timeout=TIMEOUT)
    await page.goto(f"{tab.base}/console")
    # Back to dev mode's local admin once the cookie is gone.
    await expect(page.locator("header .who")).to_contain_text("local-admin")


async def test_import_upload_and_result_report_download(tab: Tab, http: httpx.AsyncClient) -> None:
    tag = uuid.uuid4().hex[:8]
    who = f"browser-{tag}"
    csv_text = (
        f"sku,name,price,currency,category\nC{tag}-1,Lamp,19.90,EUR,{tag}\nC{tag}-2,Chair,free,EUR,{tag}\n"
    )
    page = tab.page
    await page.goto(f"{tab.base}/console/new")
    await page.select_option("select[name=taskType]", "import")
    await page.fill("input[name=entityType]", "products")
    await page.fill("input[name=requestedBy]", who)
    await page.set_input_files(
        "input[name=file]",
        files=[{"name": "products.csv", "mimeType": "text/csv", "buffer": csv_text.encode()}],
    )
    await page.click("#create-submit")
    # Created through the API, the file PUT to the task's upload URL, then the task page.
    await page.wait_for_url(f"{tab.base}/console/tasks/*", timeout=TIMEOUT)
    task_id = page.url.rsplit("/", 1)[1]
    await expect(page.locator("#task-panel .badge").first).to_have_text("completed", timeout=30_000)
    await expect(page.locator('#task-panel [data-field="failedRecords"]')).to_have_text("1")
    report = page.get_by_role("link", name="Download result report")
    await expect(report).to_be_visible(timeout=TIMEOUT)
    await tab.shot("console-import")

    async with page.expect_download() as info:
        await report.click()
    download = await info.value
    path = await download.path()
    result = path.read_text(encoding="utf-8-sig")
    assert "_status" in result.splitlines()[0]
    assert f"C{tag}-2" in result and "INVALID_DECIMAL" in result
    task = (await http.get(f"{TASKS}/{task_id}")).json()["task"]
    assert (task["fileName"], task["successRecords"], task["failedRecords"]) == ("products.csv", 1, 1)
