"""Task lifecycle through REST: progress, failure and retry, cancel, delete, logs and events."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from tests.web.support import (
    TASKS,
    Client,
    assert_problem,
    create,
    eventually_status,
    get,
    report,
    reported,
)


async def test_external_progress_to_completed(api: Client, who: str) -> None:
    task = await create(api, who, entityType="product", fileName="products.csv", fileSize=2048)
    assert task["status"] == "pending"
    assert task["requestedBy"] == who  # defaulted to the caller of the x-user-id header
    assert task["maxRetries"] == 3 and task["retryCount"] == 0
    assert (task["fileName"], task["fileSize"], task["entityType"]) == ("products.csv", 2048, "product")

    task = await reported(api, task["id"], totalRecords=10, processedRecords=4, successRecords=4)
    assert task["status"] == "processing"
    assert task["progressPercentage"] == 40.0
    assert task["startedAt"] is not None

    await reported(api, task["id"], processedRecords=10, successRecords=9, failedRecords=1, isCompleted=True)
    task = await get(api, task["id"])
    assert task["status"] == "completed"
    assert (task["totalRecords"], task["processedRecords"]) == (10, 10)
    assert (task["successRecords"], task["failedRecords"]) == (9, 1)
    assert task["progressPercentage"] == 100.0
    assert task["completedAt"] is not None and task["errorMessage"] is None

    resp = await report(api, task["id"], processedRecords=10)
    assert_problem(resp, 409, "INVALID_TRANSITION")


async def test_task_json_uses_the_seed_field_names(api: Client, who: str) -> None:
    task = await create(api, who)
    assert set(task) == {
        "id", "taskType", "entityType", "status", "priority", "requestedBy", "params", "fileName",
        "fileSize", "inputFileUrl", "outputFileUrl", "totalRecords", "processedRecords",
        "successRecords", "failedRecords", "progressPercentage", "scheduledAt", "startedAt",
        "completedAt", "errorMessage", "retryCount", "maxRetries", "createdAt", "updatedAt",
        "paramsObject", "nextRetryAt", "manifest", "sourceTaskId", "filesAvailable", "callbackUrl",
        "workflowUrl",
    }  # fmt: skip


async def test_explicit_requested_by_wins_over_the_caller(api: Client, who: str) -> None:
    task = await create(api, "someone-else", requestedBy=who)
    assert task["requestedBy"] == who


async def test_failure_then_retry_starts_a_new_run(api: Client, who: str) -> None:
    task = await create(api, who)
    await reported(api, task["id"], totalRecords=5, processedRecords=2)
    failed = await reported(api, task["id"], isCompleted=True, errorMessage="downstream rejected the batch")
    assert failed["status"] == "failed"
    assert failed["errorMessage"] == "downstream rejected the batch"

    resp = await api.post(f"{TASKS}/{task['id']}/retry")
    assert resp.status_code == 200, resp.text
    retried = resp.json()["task"]
    assert retried["status"] == "pending"
    assert retried["retryCount"] == 1
    assert retried["errorMessage"] is None

    # The new run accepts reports and can complete.
    await reported(api, task["id"], totalRecords=5, processedRecords=5, successRecords=5, isCompleted=True)
    assert (await get(api, task["id"]))["status"] == "completed"


async def test_retry_refused_at_the_limit(api: Client, who: str) -> None:
    none_left = await create(api, who, maxRetries=0)
    await reported(api, none_left["id"], isCompleted=True, errorMessage="boom")
    resp = await api.post(f"{TASKS}/{none_left['id']}/retry")
    assert_problem(resp, 409, "RETRY_LIMIT_EXCEEDED")

    one_left = await create(api, who, maxRetries=1)
    await reported(api, one_left["id"], isCompleted=True, errorMessage="boom")
    assert (await api.post(f"{TASKS}/{one_left['id']}/retry")).status_code == 200
    await reported(api, one_left["id"], isCompleted=True, errorMessage="boom again")
    resp = await api.post(f"{TASKS}/{one_left['id']}/retry")
    body = assert_problem(resp, 409, "RETRY_LIMIT_EXCEEDED")
    assert body["details"] == {"retry_count": 1, "max_retries": 1}
    assert (await get(api, one_left["id"]))["status"] == "failed"


async def test_retry_refused_unless_failed(api: Client, who: str) -> None:
    pending = await create(api, who)
    assert_problem(await api.post(f"{TASKS}/{pending['id']}/retry"), 409, "INVALID_TRANSITION")

    completed = await create(api, who)
    await reported(api, completed["id"], totalRecords=1, processedRecords=1, isCompleted=True)
    assert_problem(await api.post(f"{TASKS}/{completed['id']}/retry"), 409, "INVALID_TRANSITION")


async def test_cancel_pending_scheduled_and_processing(api: Client, who: str) -> None:
    pending = await create(api, who)
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    scheduled = await create(api, who, scheduledAt=later)
    assert scheduled["status"] == "scheduled"
    assert scheduled["scheduledAt"] is not None
    processing = await create(api, who)
    processing = await reported(api, processing["id"], totalRecords=10, processedRecords=1)
    assert processing["status"] == "processing"

    for task in (pending, scheduled, processing):
        resp = await api.post(f"{TASKS}/{task['id']}/cancel")
        assert resp.status_code == 200, resp.text
        assert resp.json()["success"] is True
        await eventually_status(api, task["id"], "cancelled")
        assert (await get(api, task["id"]))["completedAt"] is not None


async def test_cancel_of_a_completed_task_is_refused(api: Client, who: str) -> None:
    task = await create(api, who)
    await reported(api, task["id"], totalRecords=1, processedRecords=1, isCompleted=True)
    body = assert_problem(await api.post(f"{TASKS}/{task['id']}/cancel"), 409, "INVALID_TRANSITION")
    assert body["details"]["current"] == "completed"
    assert (await get(api, task["id"]))["status"] == "completed"


async def test_delete_finished_task_only(api: Client, who: str) -> None:
    pending = await create(api, who)
    assert_problem(await api.delete(f"{TASKS}/{pending['id']}"), 409, "INVALID_TRANSITION")
    assert (await get(api, pending["id"]))["status"] == "pending"

    done = await create(api, who)
    await reported(api, done["id"], totalRecords=2, processedRecords=2, isCompleted=True)
    resp = await api.delete(f"{TASKS}/{done['id']}")
    assert resp.status_code == 200 and resp.json() == {"success": True}  # the seed's answer
    assert_problem(await api.get(f"{TASKS}/{done['id']}"), 404, "TASK_NOT_FOUND")
    assert_problem(await api.get(f"{TASKS}/{done['id']}/events"), 404, "TASK_NOT_FOUND")


async def test_logs_and_events_in_order(api: Client, who: str) -> None:
    task = await create(api, who)
    await reported(api, task["id"], totalRecords=10, processedRecords=3, successRecords=3)
    await reported(api, task["id"], processedRecords=6, successRecords=6, message="halfway")
    await reported(api, task["id"], processedRecords=10, successRecords=10, isCompleted=True)

    resp = await api.get(f"{TASKS}/{task['id']}/events")
    assert resp.status_code == 200, resp.text
    page = resp.json()
    events = page["events"]
    assert page["total"] == len(events) and (page["page"], page["pageSize"]) == (1, 100)
    types = [e["eventType"] for e in events]
    assert types[:2] == ["task.created", "task.started"]
    assert types[-1] == "task.completed"
    assert set(types[2:-1]) == {"task.progress"} and types[2:-1]
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert all(e["taskId"] == task["id"] for e in events)
    assert events[-1]["status"] == "completed"
    assert events[-1]["payload"]["processedRecords"] == 10
    assert all(json.loads(e["eventData"]) == e["payload"] for e in events)  # the seed's JSON text

    resp = await api.get(f"{TASKS}/{task['id']}/logs")
    assert resp.status_code == 200, resp.text
    logs = resp.json()
    assert logs["total"] == len(logs["logs"]) >= len(events)
    assert [line["seq"] for line in logs["logs"]] == sorted(line["seq"] for line in logs["logs"])
    assert all(line["message"] and line["level"] for line in logs["logs"])
    log_ids = [line["id"] for line in logs["logs"]]
    assert log_ids == sorted(log_ids) and len(set(log_ids)) == len(log_ids)

    second = (await api.get(f"{TASKS}/{task['id']}/events", params={"page": 2, "pageSize": 2})).json()
    assert [e["seq"] for e in second["events"]] == seqs[2:4]
    assert second["total"] == len(events) and (second["page"], second["pageSize"]) == (2, 2)


async def test_params_as_json_string_equals_params_as_object(api: Client, who: str) -> None:
    params = {"format": "csv", "filters": {"category": ["shoes", "bags"]}, "limit": 500}
    as_object = await create(api, who, params=params)
    as_string = await create(
        api, who, params='{"format": "csv", "filters": {"category": ["shoes", "bags"]}, "limit": 500}'
    )
    as_params_object = await create(api, who, paramsObject=params)
    for task in (as_object, as_string, as_params_object, await get(api, as_string["id"])):
        # The seed's params is a string holding the JSON object; paramsObject is the object itself.
        assert isinstance(task["params"], str)
        assert json.loads(task["params"]) == task["paramsObject"] == params
    empty = await create(api, who, params="")
    assert (empty["params"], empty["paramsObject"]) == ("{}", {})


async def test_unknown_id_is_404(api: Client) -> None:
    missing = "00000000-0000-4000-8000-000000000000"
    for method, path in (
        ("GET", ""),
        ("DELETE", ""),
        ("POST", "/cancel"),
        ("POST", "/retry"),
        ("GET", "/logs"),
        ("GET", "/events"),
        ("GET", "/download"),
    ):
        resp = await api.request(method, f"{TASKS}/{missing}{path}")
        assert_problem(resp, 404, "TASK_NOT_FOUND")
    assert_problem(await report(api, missing, processedRecords=1), 404, "TASK_NOT_FOUND")


async def test_download_without_output_is_not_available(api: Client, who: str) -> None:
    task = await create(api, who)
    assert_problem(await api.get(f"{TASKS}/{task['id']}/download"), 409, "NOT_AVAILABLE")
