"""Request bodies of the original service's clients (../shared/notes/seed-contract.md) through REST.

The original REST API was gRPC-Gateway's: clients repeat the task id in the body, send ``params`` as a
string holding JSON and give a cancel ``reason``. Newer fields (``paramsObject``, ``reportId``,
``increment``) sit beside them. What is accepted, and what each bad input answers.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.web.support import TASKS, Client, assert_problem, create, eventually_status, report

OTHER_TASK = "00000000-0000-4000-8000-000000000000"


def field_names(problem: dict[str, Any]) -> set[str | None]:
    return {e["field"] for e in problem.get("errors", [])}


async def test_seed_bodies_of_progress_retry_and_cancel(api: Client, who: str) -> None:
    task_id = (await create(api, who))["id"]
    resp = await report(
        api, task_id, taskId=task_id, processedRecords=1, isCompleted=True, errorMessage="catalog offline"
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["success"] is True and resp.json()["task"]["status"] == "failed"

    resp = await api.post(f"{TASKS}/{task_id}/retry", json={"id": task_id})
    assert resp.status_code == 200, resp.text
    assert (resp.json()["task"]["status"], resp.json()["task"]["retryCount"]) == ("pending", 1)

    resp = await api.post(f"{TASKS}/{task_id}/cancel", json={"id": task_id, "reason": "superseded"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["success"] is True
    await eventually_status(api, task_id, "cancelled")


async def test_cancel_and_retry_bodies_are_optional(api: Client, who: str) -> None:
    for body in (None, {}, {"reason": "no id given"}):
        task_id = (await create(api, who))["id"]
        resp = await api.post(f"{TASKS}/{task_id}/cancel", json=body)
        assert resp.status_code == 200, (body, resp.text)
        assert resp.json()["success"] is True


async def test_ids_in_the_body_must_name_the_path_task(api: Client, who: str) -> None:
    task = await create(api, who)
    for action in ("cancel", "retry"):
        problem = assert_problem(
            await api.post(f"{TASKS}/{task['id']}/{action}", json={"id": OTHER_TASK}),
            400,
            "VALIDATION_FAILED",
        )
        assert field_names(problem) == {"id"}, problem
        assert_problem(
            await api.post(f"{TASKS}/{task['id']}/{action}", json={"id": "nope"}), 400, "VALIDATION_FAILED"
        )
    problem = assert_problem(
        await report(api, task["id"], taskId=OTHER_TASK, processedRecords=1), 400, "VALIDATION_FAILED"
    )
    assert field_names(problem) == {"taskId"}
    task = (await api.get(f"{TASKS}/{task['id']}")).json()["task"]
    assert (task["status"], task["processedRecords"]) == ("pending", 0)


async def test_cancel_reason_is_bounded(api: Client, who: str) -> None:
    task = await create(api, who)
    problem = assert_problem(
        await api.post(f"{TASKS}/{task['id']}/cancel", json={"reason": "x" * 1001}), 400, "VALIDATION_FAILED"
    )
    assert field_names(problem) == {"reason"}
    assert (await api.get(f"{TASKS}/{task['id']}")).json()["task"]["status"] == "pending"
    resp = await api.post(f"{TASKS}/{task['id']}/cancel", json={"reason": "x" * 1000})
    assert resp.status_code == 200, resp.text


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param({"paramsObject": "{}"}, "paramsObject", id="paramsObject-string"),
        pytest.param({"paramsObject": [1]}, "paramsObject", id="paramsObject-array"),
        pytest.param({"params": "{}", "paramsObject": {}}, "paramsObject", id="params-and-paramsObject"),
    ],
)
async def test_bad_params_object(api: Client, body: dict[str, Any], field: str) -> None:
    problem = assert_problem(
        await api.post(TASKS, json={"taskType": "process", **body}), 400, "VALIDATION_FAILED"
    )
    assert field in field_names(problem), problem


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param({"reportId": "r" * 201}, "reportId", id="reportId-too-long"),
        pytest.param({"reportId": "tab\there"}, "reportId", id="reportId-not-printable"),
        pytest.param({"reportId": ""}, "reportId", id="reportId-empty"),
        pytest.param({"reportId": 7}, "reportId", id="reportId-not-a-string"),
        pytest.param({"increment": "yes"}, "increment", id="increment-not-a-bool"),
    ],
)
async def test_bad_report_id_and_increment(api: Client, who: str, body: dict[str, Any], field: str) -> None:
    task = await create(api, who)
    problem = assert_problem(
        await report(api, task["id"], processedRecords=1, **body), 400, "VALIDATION_FAILED"
    )
    assert field in field_names(problem), problem
    assert (await api.get(f"{TASKS}/{task['id']}")).json()["task"]["processedRecords"] == 0


async def test_report_id_at_its_limit_is_accepted(api: Client, who: str) -> None:
    task = await create(api, who)
    resp = await report(api, task["id"], totalRecords=4, processedRecords=1, reportId="r" * 200)
    assert resp.status_code == 200, resp.text
    assert resp.json()["task"]["processedRecords"] == 1
