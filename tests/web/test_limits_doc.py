"""The OpenAPI document states the limits the domain enforces, and the statuses they produce."""

from __future__ import annotations

from typing import Any

import pytest

from common_operations.domain.task import MAX_PARAMS_BYTES, MAX_PARAMS_DEPTH
from common_operations.web.app import LIMITS_DOC, MAX_REQUEST_BODY_BYTES
from tests.web.support import Client


@pytest.fixture
async def document(api: Client) -> dict[str, Any]:
    resp = await api.get("/docs/openapi.json")
    assert resp.status_code == 200
    doc: dict[str, Any] = resp.json()
    return doc


def operation(doc: dict[str, Any], operation_id: str) -> dict[str, Any]:
    for methods in doc["paths"].values():
        for op in methods.values():
            if op.get("operationId") == operation_id:
                return dict(op)
    raise AssertionError(f"no operation {operation_id}")


@pytest.mark.parametrize("operation_id", ["CreateTask", "CancelTask", "RetryTask", "UpdateTaskProgress"])
async def test_routes_that_reach_temporal_document_413_and_429(
    document: dict[str, Any], operation_id: str
) -> None:
    responses = operation(document, operation_id)["responses"]
    for status in ("400", "413", "429", "503"):
        assert status in responses, (operation_id, sorted(responses))
        assert "application/problem+json" in responses[status]["content"]


async def test_create_task_states_the_params_limits(document: dict[str, Any]) -> None:
    # Written as text in the handler's docstring: pinned here to the constants so it cannot drift.
    description = operation(document, "CreateTask")["description"]
    assert f"{MAX_PARAMS_BYTES // 1024} KiB" in description
    assert f"{MAX_PARAMS_DEPTH} levels deep" in description


async def test_api_description_lists_the_limits(document: dict[str, Any]) -> None:
    assert LIMITS_DOC in document["info"]["description"]
    assert f"{MAX_REQUEST_BODY_BYTES // 1024} KiB" in LIMITS_DOC
