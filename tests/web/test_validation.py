"""Bad input of every kind answers 400 problem details naming the code and, when known, the field."""

from __future__ import annotations

from typing import Any

import pytest

from tests.web.support import TASKS, Client, assert_problem, create, report


def field_names(problem: dict[str, Any]) -> set[str | None]:
    return {e["field"] for e in problem.get("errors", [])}


async def test_malformed_json_body(api: Client) -> None:
    resp = await api.post(
        TASKS, content=b'{"taskType": "process",', headers={"content-type": "application/json"}
    )
    assert_problem(resp, 400, "VALIDATION_FAILED")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param({"taskType": 5}, "taskType", id="wrong-type"),
        pytest.param({}, "taskType", id="missing-taskType"),
        pytest.param({"taskType": "process", "fileSize": "big"}, "fileSize", id="fileSize-not-int"),
        pytest.param(
            {"taskType": "process", "scheduledAt": "tomorrow"}, "scheduledAt", id="scheduledAt-not-rfc3339"
        ),
        pytest.param({"taskType": "process", "params": [1, 2]}, "params", id="params-array"),
        pytest.param({"taskType": "process", "maxRetries": 1.5}, "maxRetries", id="maxRetries-float"),
        pytest.param({"taskType": "process", "fileSize": 2**63}, "fileSize", id="fileSize-beyond-int64"),
        pytest.param({"taskType": "process", "priority": 2**31}, "priority", id="priority-beyond-int32"),
    ],
)
async def test_undecodable_create_body(api: Client, body: dict[str, Any], field: str) -> None:
    problem = assert_problem(await api.post(TASKS, json=body), 400, "VALIDATION_FAILED")
    assert field in field_names(problem), problem
    assert field in problem["detail"]


async def test_body_that_is_not_an_object(api: Client) -> None:
    assert_problem(await api.post(TASKS, json=["process"]), 400, "VALIDATION_FAILED")


async def test_unknown_task_type_lists_the_allowed_ones(api: Client) -> None:
    problem = assert_problem(await api.post(TASKS, json={"taskType": "teleport"}), 400, "UNKNOWN_TASK_TYPE")
    assert "teleport" in problem["detail"]
    assert "process" in problem["detail"] and "delegated_echo" in problem["detail"]
    assert "process" in problem["details"]["allowed"]
    assert field_names(problem) == {"taskType"}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param({"fileSize": -1}, "fileSize", id="negative-fileSize"),
        pytest.param({"maxRetries": -1}, "maxRetries", id="negative-maxRetries"),
        pytest.param({"priority": 100000}, "priority", id="priority-range"),
        pytest.param({"taskType": "   "}, "taskType", id="blank-taskType"),
        pytest.param({"params": "not json"}, "params", id="params-not-json"),
        pytest.param({"params": "[1, 2]"}, "params", id="params-string-not-object"),
        pytest.param({"scheduledAt": "2030-01-01T10:00:00"}, "scheduledAt", id="scheduledAt-without-zone"),
    ],
)
async def test_out_of_range_create_body(api: Client, body: dict[str, Any], field: str) -> None:
    problem = assert_problem(
        await api.post(TASKS, json={"taskType": "process", **body}), 400, "VALIDATION_FAILED"
    )
    assert field_names(problem) == {field}, problem


async def test_bad_uuid_in_path_is_400_not_a_route_404(api: Client) -> None:
    for method, suffix in (
        ("GET", ""),
        ("DELETE", ""),
        ("POST", "/cancel"),
        ("POST", "/retry"),
        ("GET", "/logs"),
        ("GET", "/events"),
        ("GET", "/download"),
    ):
        problem = assert_problem(
            await api.request(method, f"{TASKS}/not-a-uuid{suffix}"), 400, "VALIDATION_FAILED"
        )
        assert "not-a-uuid" in problem["detail"]
    assert_problem(await report(api, "123", processedRecords=1), 400, "VALIDATION_FAILED")


@pytest.mark.parametrize(
    ("params", "field"),
    [
        pytest.param({"page": 0}, "page", id="page-0"),
        pytest.param({"page": "abc"}, "page", id="page-abc"),
        pytest.param({"pageSize": "abc"}, "pageSize", id="pageSize-abc"),
        pytest.param({"pageSize": 0}, "pageSize", id="pageSize-0"),
        pytest.param({"startDate": "yesterday"}, "startDate", id="startDate-not-rfc3339"),
        pytest.param({"endDate": "2024-13-45"}, "endDate", id="endDate-invalid"),
        pytest.param(
            {"startDate": "2024-02-01T00:00:00Z", "endDate": "2024-01-01T00:00:00Z"},
            "startDate",
            id="start-after-end",
        ),
        pytest.param({"startDate": "2024-01-01T00:00:00"}, "startDate", id="startDate-without-zone"),
        pytest.param({"status": "bogus"}, "status", id="status-bogus"),
        pytest.param({"search": "x" * 500}, "search", id="search-too-long"),
    ],
)
async def test_bad_list_query(api: Client, params: dict[str, Any], field: str) -> None:
    problem = assert_problem(await api.get(TASKS, params=params), 400, "VALIDATION_FAILED")
    assert field in field_names(problem), problem


async def test_unknown_status_lists_the_allowed_ones(api: Client) -> None:
    problem = assert_problem(await api.get(TASKS, params={"status": "bogus"}), 400, "VALIDATION_FAILED")
    assert "bogus" in problem["detail"] and "processing" in problem["detail"]


async def test_bad_history_paging(api: Client, who: str) -> None:
    task = await create(api, who)
    for kind in ("logs", "events"):
        assert_problem(
            await api.get(f"{TASKS}/{task['id']}/{kind}", params={"page": 0}), 400, "VALIDATION_FAILED"
        )
        assert_problem(
            await api.get(f"{TASKS}/{task['id']}/{kind}", params={"pageSize": "many"}),
            400,
            "VALIDATION_FAILED",
        )


async def test_bad_progress_reports(api: Client, who: str) -> None:
    task = await create(api, who)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"processedRecords": -1}, "processedRecords"),
        ({"totalRecords": 5, "processedRecords": 6}, "processedRecords"),
        ({"processedRecords": 2, "successRecords": 2, "failedRecords": 1}, "successRecords"),
        ({"processedRecords": "many"}, "processedRecords"),
        ({"isCompleted": "yes please"}, "isCompleted"),
        # Wider than the int64 columns: refused up front instead of poisoning the workflow's writes.
        ({"totalRecords": 2**63, "processedRecords": 1}, "totalRecords"),
    ]
    for body, field in cases:
        problem = assert_problem(await report(api, task["id"], **body), 400, "VALIDATION_FAILED")
        assert field in field_names(problem), (body, problem)
    resp = await api.patch(
        f"{TASKS}/{task['id']}/progress", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert_problem(resp, 400, "VALIDATION_FAILED")

    # None of the rejected reports changed the task.
    task = (await api.get(f"{TASKS}/{task['id']}")).json()["task"]
    assert (task["status"], task["processedRecords"], task["totalRecords"]) == ("pending", 0, 0)
