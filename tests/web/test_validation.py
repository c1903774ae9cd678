"""Bad input of every kind answers 400 problem details naming the code and, when known, the field."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from common_operations.bootstrap import Runtime
from common_operations.domain.errors import RateLimited
from common_operations.domain.task import (
    MAX_ENTITY_TYPE_LENGTH,
    MAX_FILE_NAME_LENGTH,
    MAX_PARAMS_BYTES,
    MAX_PARAMS_DEPTH,
    MAX_REQUESTED_BY_LENGTH,
    MAX_TASK_TYPE_LENGTH,
)
from common_operations.web.app import MAX_REQUEST_BODY_BYTES
from tests.auth_support import bearer
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


# --- limits (issue §7: no input gets a 5xx) -----------------------------------------------------


@pytest.mark.parametrize(
    ("field", "limit"),
    [
        pytest.param("taskType", MAX_TASK_TYPE_LENGTH, id="taskType"),
        pytest.param("entityType", MAX_ENTITY_TYPE_LENGTH, id="entityType"),
        pytest.param("requestedBy", MAX_REQUESTED_BY_LENGTH, id="requestedBy"),
        pytest.param("fileName", MAX_FILE_NAME_LENGTH, id="fileName"),
    ],
)
async def test_text_longer_than_its_column_is_400_not_500(api: Client, field: str, limit: int) -> None:
    # An entityType of 101 characters used to reach the varchar(100) INSERT and answer 500.
    problem = assert_problem(
        await api.post(TASKS, json={"taskType": "process", field: "x" * (limit + 1)}),
        400,
        "VALIDATION_FAILED",
    )
    assert field_names(problem) == {field}, problem


async def test_text_at_its_column_length_is_accepted(api: Client, who: str) -> None:
    task = await create(
        api, who, entityType="e" * MAX_ENTITY_TYPE_LENGTH, fileName="f" * MAX_FILE_NAME_LENGTH
    )
    assert len(task["entityType"]) == MAX_ENTITY_TYPE_LENGTH


async def test_token_subject_longer_than_requested_by_is_refused(api: Client) -> None:
    # requestedBy defaults to the caller. A verified subject longer than the column is refused (401)
    # rather than cut: two long subjects cut alike would share tasks.
    long_subject = "u" * (MAX_REQUESTED_BY_LENGTH + 1)
    problem = assert_problem(
        await api.post(TASKS, json={"taskType": "process"}, headers=bearer(long_subject)),
        401,
        "UNAUTHENTICATED",
    )
    assert "u" * 50 not in problem["detail"]
    # x-user-id is no longer an identity: it neither names the caller nor breaks the request.
    resp = await api.post(TASKS, json={"taskType": "process"}, headers={"x-user-id": "u" * 1000})
    assert resp.status_code == 201, resp.text
    assert resp.json()["task"]["requestedBy"] != "u" * MAX_REQUESTED_BY_LENGTH
    at_limit = "v" * MAX_REQUESTED_BY_LENGTH
    resp = await api.post(TASKS, json={"taskType": "process"}, headers=bearer(at_limit))
    assert resp.status_code == 201, resp.text
    assert resp.json()["task"]["requestedBy"] == at_limit


@pytest.mark.parametrize(
    ("name", "limit"),
    [("taskType", MAX_TASK_TYPE_LENGTH), ("entityType", MAX_ENTITY_TYPE_LENGTH), ("requestedBy", 255)],
)
async def test_list_filter_longer_than_its_column_is_400(api: Client, name: str, limit: int) -> None:
    problem = assert_problem(await api.get(TASKS, params={name: "x" * (limit + 1)}), 400, "VALIDATION_FAILED")
    assert field_names(problem) == {name}
    assert (await api.get(TASKS, params={name: "x" * limit})).status_code == 200


async def test_params_over_the_size_limit_is_413_naming_params(api: Client) -> None:
    params = json.dumps({"blob": "x" * MAX_PARAMS_BYTES})
    problem = assert_problem(
        await api.post(TASKS, json={"taskType": "process", "params": params}), 413, "PAYLOAD_TOO_LARGE"
    )
    assert field_names(problem) == {"params"}
    assert problem["details"]["limit"] == MAX_PARAMS_BYTES


async def test_params_nested_too_deeply_is_400(api: Client) -> None:
    # The params object is level 1: MAX_PARAMS_DEPTH objects inside it are one level too many.
    deep = '{"a":' * (MAX_PARAMS_DEPTH + 1) + "1" + "}" * (MAX_PARAMS_DEPTH + 1)
    problem = assert_problem(
        await api.post(TASKS, json={"taskType": "process", "params": deep}), 400, "VALIDATION_FAILED"
    )
    assert field_names(problem) == {"params"}
    # Far beyond Python's recursion limit: still a 400, not a RecursionError.
    deeper = '{"a":' + "[" * 200_000 + "]" * 200_000 + "}"
    assert_problem(
        await api.post(TASKS, json={"taskType": "process", "params": deeper}), 400, "VALIDATION_FAILED"
    )


@pytest.mark.parametrize("depth", [33, 500, 900, 990, 1_000, 100_000])
async def test_body_nested_at_any_depth_is_400_not_500(api: Client, depth: int) -> None:
    # msgspec recurses per level: near or past Python's recursion limit it raised RecursionError.
    nested = b"[" * depth + b"]" * depth
    body = b'{"taskType":"process","params":{"a":' + nested + b"}}"
    resp = await api.post(TASKS, content=body, headers={"content-type": "application/json"})
    assert_problem(resp, 400, "VALIDATION_FAILED")
    resp = await api.patch(
        f"{TASKS}/{uuid.uuid4()}/progress", content=nested, headers={"content-type": "application/json"}
    )
    assert_problem(resp, 400, "VALIDATION_FAILED")


async def test_body_over_one_mebibyte_is_413_problem(api: Client) -> None:
    body = json.dumps({"taskType": "process", "params": {"blob": "x" * MAX_REQUEST_BODY_BYTES}})
    resp = await api.post(TASKS, content=body, headers={"content-type": "application/json"})
    problem = assert_problem(resp, 413, "PAYLOAD_TOO_LARGE")
    assert problem["instance"] == TASKS
    # Without a content-length (chunked): refused once the streamed bytes pass the limit.

    async def chunks() -> AsyncIterator[bytes]:
        yield body.encode()

    resp = await api.post(TASKS, content=chunks(), headers={"content-type": "application/json"})
    assert_problem(resp, 413, "PAYLOAD_TOO_LARGE")


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("0001-01-01T00:00:00+01:00", id="year-1-east-of-utc"),
        pytest.param("9999-12-31T23:30:00-01:00", id="year-9999-west-of-utc"),
    ],
)
async def test_instants_outside_utc_years_1_to_9999_are_400(api: Client, value: str) -> None:
    problem = assert_problem(
        await api.post(TASKS, json={"taskType": "process", "scheduledAt": value}), 400, "VALIDATION_FAILED"
    )
    assert field_names(problem) == {"scheduledAt"}
    for name in ("startDate", "endDate"):
        problem = assert_problem(await api.get(TASKS, params={name: value}), 400, "VALIDATION_FAILED")
        assert field_names(problem) == {name}


async def test_page_beyond_int32_is_400_not_an_offset_overflow(api: Client, who: str) -> None:
    for page in (2**31, 10**30):
        problem = assert_problem(await api.get(TASKS, params={"page": page}), 400, "VALIDATION_FAILED")
        assert field_names(problem) == {"page"}
    task = await create(api, who)
    for kind in ("logs", "events"):
        assert_problem(
            await api.get(f"{TASKS}/{task['id']}/{kind}", params={"page": 10**30}), 400, "VALIDATION_FAILED"
        )


async def test_rate_limited_is_429_with_retry_after_in_whole_seconds(
    api: Client, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def limited(*args: object) -> None:
        raise RateLimited("Temporal is busy; try again shortly", retry_after=2.2)

    monkeypatch.setattr(runtime.tasks, "list_tasks", limited)
    resp = await api.get(TASKS)
    problem = assert_problem(resp, 429, "RATE_LIMITED")
    assert resp.headers["retry-after"] == "3"  # rounded up: never back before the limit passed
    assert "busy" in problem["detail"]


@pytest.mark.parametrize(
    "params",
    [
        pytest.param('{"a": ' + "9" * 5000 + "}", id="int-past-pythons-4300-digit-limit"),
        pytest.param('{"a": ' + "9" * 400 + "}", id="int-beyond-a-double"),
    ],
)
async def test_params_numbers_json_or_struct_cannot_hold_are_400(api: Client, params: str) -> None:
    problem = assert_problem(
        await api.post(TASKS, json={"taskType": "process", "params": params}), 400, "VALIDATION_FAILED"
    )
    assert field_names(problem) == {"params"}
