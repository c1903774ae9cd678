"""POST /tasks with an Idempotency-Key header: 201 once, 200 with the same task after, 409 on reuse."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from tests.web.support import TASKS, Client, assert_problem, caller


async def post(api: Client, who: str, key: str | None, **body: Any) -> Any:
    body.setdefault("taskType", "process")
    body.setdefault("entityType", "product")
    headers = caller(who) | ({"Idempotency-Key": key} if key is not None else {})
    return await api.post(TASKS, json=body, headers=headers)


async def total(api: Client, who: str) -> int:
    resp = await api.get(TASKS, params={"requestedBy": who})
    assert resp.status_code == 200, resp.text
    count: int = resp.json()["total"]
    return count


async def test_a_repeated_create_answers_the_first_task_with_200(api: Client, who: str) -> None:
    key = uuid.uuid4().hex
    first = await post(api, who, key, params={"sku": "A1"})
    assert first.status_code == 201, first.text
    again = await post(api, who, key, params={"sku": "A1"})
    assert again.status_code == 200, again.text
    assert again.json()["task"]["id"] == first.json()["task"]["id"]
    assert await total(api, who) == 1


async def test_the_key_with_another_body_is_409(api: Client, who: str) -> None:
    key = uuid.uuid4().hex
    first = await post(api, who, key, params={"sku": "A1"})
    assert first.status_code == 201, first.text
    body = assert_problem(await post(api, who, key, params={"sku": "B2"}), 409, "IDEMPOTENCY_KEY_REUSED")
    assert first.json()["task"]["id"] in str(body)
    assert await total(api, who) == 1


async def test_another_caller_with_the_same_key_gets_its_own_task(api: Client, who: str) -> None:
    key = uuid.uuid4().hex
    a = await post(api, who, key, requestedBy=who)
    b = await post(api, f"{who}-other", key, requestedBy=who)
    assert (a.status_code, b.status_code) == (201, 201)
    assert a.json()["task"]["id"] != b.json()["task"]["id"]
    assert await total(api, who) == 2


async def test_concurrent_creates_with_one_key_make_one_task(api: Client, who: str) -> None:
    key = uuid.uuid4().hex
    answers = await asyncio.gather(*(post(api, who, key) for _ in range(6)))
    assert sorted(r.status_code for r in answers) == [200] * 5 + [201]
    assert len({r.json()["task"]["id"] for r in answers}) == 1
    assert await total(api, who) == 1


async def test_without_a_key_every_create_is_a_new_task(api: Client, who: str) -> None:
    assert (await post(api, who, None)).status_code == 201
    assert (await post(api, who, None)).status_code == 201
    assert await total(api, who) == 2


async def test_a_malformed_key_is_400(api: Client, who: str) -> None:
    assert_problem(await post(api, who, "k" * 256), 400, "VALIDATION_FAILED")
    assert await total(api, who) == 0


async def test_the_header_and_both_answers_are_documented(api: Client) -> None:
    spec = (await api.get("/docs/openapi.json")).json()
    op = spec["paths"][TASKS]["post"]
    headers = [p for p in op["parameters"] if p["in"] == "header"]
    assert [(p["name"], p["required"]) for p in headers] == [("Idempotency-Key", False)]
    assert {"200", "201", "409"} <= set(op["responses"])
