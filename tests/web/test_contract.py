"""The REST wire contract, pinned: the JSON keys of every answer and the OpenAPI document's schemas.

REST JSON is the proto3 JSON mapping of the gRPC messages (lowerCamelCase of the proto field names),
so the original service's clients (../shared/notes/seed-contract.md) read the same names through its
gRPC-Gateway bindings as through gRPC. The tables are literal on purpose: a change that renames,
drops or adds a key fails here and has to be made in the table too, in plain sight of the review.
tests/grpc_api/test_contract.py pins the proto.
"""

from __future__ import annotations

import json
from typing import Any

from common_operations.grpc.v1 import operations_pb2 as pb
from tests.grpc_api.seed_contract import SEED, SEED_HTTP
from tests.grpc_api.support import record_output
from tests.web.support import TASKS, Client, caller, create, reported

TASK_KEYS = {
    "id", "taskType", "entityType", "status", "priority", "requestedBy", "params", "paramsObject",
    "fileName", "fileSize", "inputFileUrl", "outputFileUrl", "totalRecords", "processedRecords",
    "successRecords", "failedRecords", "progressPercentage", "scheduledAt", "startedAt", "completedAt",
    "errorMessage", "retryCount", "maxRetries", "createdAt", "updatedAt", "nextRetryAt", "manifest",
    "sourceTaskId", "filesAvailable", "callbackUrl", "workflowUrl",
}  # fmt: skip
LOG_KEYS = {"id", "taskId", "seq", "level", "message", "details", "createdAt"}
EVENT_KEYS = {
    "id", "taskId", "seq", "eventType", "status", "eventData", "payload", "createdAt", "publishedAt",
}  # fmt: skip

# RPC -> the keys of its 2xx JSON answer. (RetryFailedRows answers a CreateTaskResponse, pinned through
# CreateTask here and driven end to end in tests/grpc_api/test_bulk_rpcs.py.)
RESPONSE_KEYS: dict[str, set[str]] = {
    "CreateTask": {"task", "uploadUrl", "uploadUrlExpiresAt"},
    "GetTask": {"task"},
    "ListTasks": {"tasks", "total", "page", "pageSize"},
    "CancelTask": {"success", "task"},
    "RetryTask": {"task"},
    "UpdateTaskProgress": {"success", "task"},
    "GetDownloadUrl": {"downloadUrl", "fileName", "expiresAt"},
    "GetTaskLogs": {"logs", "total", "page", "pageSize"},
    "GetTaskEvents": {"events", "total", "page", "pageSize"},
    "DeleteTask": {"success"},
    "Health": {"status", "components"},
}

# RPC -> (method, path, 2xx status, request body component or None, response component).
OPERATIONS: dict[str, tuple[str, str, str, str | None, str]] = {
    "CreateTask": ("post", "/api/v1/operations/tasks", "201", "CreateTaskRequest", "CreateTaskResponse"),
    "GetTask": ("get", "/api/v1/operations/tasks/{id}", "200", None, "TaskResponse"),
    "ListTasks": ("get", "/api/v1/operations/tasks", "200", None, "TaskListResponse"),
    "CancelTask": (
        "post", "/api/v1/operations/tasks/{id}/cancel", "200", "CancelTaskRequest", "CancelTaskResponse",
    ),
    "RetryTask": ("post", "/api/v1/operations/tasks/{id}/retry", "200", "RetryTaskRequest", "TaskResponse"),
    "UpdateTaskProgress": (
        "patch", "/api/v1/operations/tasks/{taskId}/progress", "200", "UpdateProgressRequest",
        "UpdateTaskProgressResponse",
    ),
    "GetDownloadUrl": (
        "get", "/api/v1/operations/tasks/{taskId}/download", "200", None, "DownloadUrlResponse",
    ),
    "GetTaskLogs": ("get", "/api/v1/operations/tasks/{taskId}/logs", "200", None, "TaskLogsResponse"),
    "GetTaskEvents": ("get", "/api/v1/operations/tasks/{taskId}/events", "200", None, "TaskEventsResponse"),
    "DeleteTask": ("delete", "/api/v1/operations/tasks/{id}", "200", None, "DeleteTaskResponse"),
    "Health": ("get", "/api/v1/operations/health", "200", None, "HealthResponse"),
    "RetryFailedRows": (
        "post", "/api/v1/operations/tasks/{id}/retry-failed-rows", "201", "RetryFailedRowsRequest",
        "CreateTaskResponse",
    ),
    # Server-Sent Events; each event's data is a TaskOut (tests/web/test_stream.py drives it).
    "WatchTask": ("get", "/api/v1/operations/tasks/{id}/stream", "200", None, "TaskOut"),
}  # fmt: skip
# Operations the original service did not have (additions; SEED_HTTP holds the seed's).
ADDED_OPERATIONS = {"RetryFailedRows", "WatchTask"}
# Operations whose 2xx answer is an event stream rather than one JSON body.
EVENT_STREAMS = {"WatchTask"}

# OpenAPI component -> its properties (request bodies: what the API accepts; answers: what it sends,
# every property always present).
COMPONENTS: dict[str, set[str]] = {
    "TaskOut": TASK_KEYS,
    "TaskLogOut": LOG_KEYS,
    "TaskEventOut": EVENT_KEYS,
    "CreateTaskRequest": {
        "taskType", "entityType", "requestedBy", "priority", "params", "paramsObject", "fileName",
        "fileSize", "scheduledAt", "maxRetries", "contentType", "callbackUrl",
    },
    "CreateTaskResponse": RESPONSE_KEYS["CreateTask"],
    "TaskResponse": RESPONSE_KEYS["GetTask"],
    "TaskListResponse": RESPONSE_KEYS["ListTasks"],
    "CancelTaskRequest": {"id", "reason"},
    "CancelTaskResponse": RESPONSE_KEYS["CancelTask"],
    "RetryTaskRequest": {"id"},
    "RetryFailedRowsRequest": {"id", "fileName", "fileSize"},
    "UpdateProgressRequest": {
        "taskId", "processedRecords", "successRecords", "failedRecords", "totalRecords", "errorMessage",
        "isCompleted", "message", "reportId", "increment",
    },
    "UpdateTaskProgressResponse": RESPONSE_KEYS["UpdateTaskProgress"],
    "DownloadUrlResponse": RESPONSE_KEYS["GetDownloadUrl"],
    "TaskLogsResponse": RESPONSE_KEYS["GetTaskLogs"],
    "TaskEventsResponse": RESPONSE_KEYS["GetTaskEvents"],
    "DeleteTaskResponse": RESPONSE_KEYS["DeleteTask"],
    "HealthResponse": RESPONSE_KEYS["Health"],
}  # fmt: skip

# Each REST body and the gRPC message it is the JSON mapping of.
MESSAGE_OF_COMPONENT = {
    "TaskOut": "Task",
    "TaskLogOut": "TaskLog",
    "TaskEventOut": "TaskEvent",
    "CreateTaskResponse": "CreateTaskResponse",
    "TaskResponse": "GetTaskResponse",
    "TaskListResponse": "ListTasksResponse",
    "CancelTaskRequest": "CancelTaskRequest",
    "CancelTaskResponse": "CancelTaskResponse",
    "RetryTaskRequest": "RetryTaskRequest",
    "RetryFailedRowsRequest": "RetryFailedRowsRequest",
    "UpdateProgressRequest": "UpdateTaskProgressRequest",
    "UpdateTaskProgressResponse": "UpdateTaskProgressResponse",
    "DownloadUrlResponse": "GetDownloadUrlResponse",
    "TaskLogsResponse": "GetTaskLogsResponse",
    "TaskEventsResponse": "GetTaskEventsResponse",
    "DeleteTaskResponse": "DeleteTaskResponse",
    "HealthResponse": "HealthResponse",
}


def json_names(message: str) -> set[str]:
    """The proto3 JSON names of a message of api.operations.v1."""
    return {f.json_name for f in pb.DESCRIPTOR.message_types_by_name[message].fields}


async def _answers(api: Client, who: str, database_url: str) -> dict[str, Any]:
    """One real 2xx answer of every task RPC, by RPC name."""
    answers: dict[str, Any] = {}
    resp = await api.post(TASKS, json={"taskType": "process", "params": {"sku": "A1"}}, headers=caller(who))
    assert resp.status_code == 201, resp.text
    answers["CreateTask"] = resp.json()
    task_id = answers["CreateTask"]["task"]["id"]

    async def ok(method: str, path: str, body: Any = None) -> Any:
        resp = await api.request(method, path, json=body)
        assert resp.status_code == 200, resp.text
        return resp.json()

    answers["GetTask"] = await ok("GET", f"{TASKS}/{task_id}")
    answers["ListTasks"] = await ok("GET", f"{TASKS}?requestedBy={who}")
    answers["UpdateTaskProgress"] = await ok(
        "PATCH", f"{TASKS}/{task_id}/progress", {"taskId": task_id, "totalRecords": 2, "processedRecords": 1}
    )
    await reported(api, task_id, processedRecords=2, successRecords=1, failedRecords=1, isCompleted=True)
    await record_output(database_url, task_id, "file:///exports/contract.csv")
    answers["GetDownloadUrl"] = await ok("GET", f"{TASKS}/{task_id}/download")
    answers["GetTaskLogs"] = await ok("GET", f"{TASKS}/{task_id}/logs")
    answers["GetTaskEvents"] = await ok("GET", f"{TASKS}/{task_id}/events")
    answers["DeleteTask"] = await ok("DELETE", f"{TASKS}/{task_id}")

    failed = await create(api, who)
    await reported(api, failed["id"], isCompleted=True, errorMessage="boom")
    answers["RetryTask"] = await ok("POST", f"{TASKS}/{failed['id']}/retry", {"id": failed["id"]})
    answers["CancelTask"] = await ok(
        "POST", f"{TASKS}/{failed['id']}/cancel", {"id": failed["id"], "reason": "contract test"}
    )
    answers["Health"] = await ok("GET", "/api/v1/operations/health")
    return answers


async def test_every_answer_has_exactly_the_pinned_keys(api: Client, who: str, database_url: str) -> None:
    answers = await _answers(api, who, database_url)
    assert set(answers) == set(RESPONSE_KEYS)
    for rpc, keys in RESPONSE_KEYS.items():
        assert set(answers[rpc]) == keys, rpc
    tasks = [answers[rpc]["task"] for rpc in ("CreateTask", "GetTask", "CancelTask", "RetryTask")]
    tasks += [answers["UpdateTaskProgress"]["task"], *answers["ListTasks"]["tasks"]]
    for task in tasks:
        assert set(task) == TASK_KEYS
    assert answers["GetTaskLogs"]["logs"] and answers["GetTaskEvents"]["events"]
    for line in answers["GetTaskLogs"]["logs"]:
        assert set(line) == LOG_KEYS
    for event in answers["GetTaskEvents"]["events"]:
        assert set(event) == EVENT_KEYS


async def test_seed_values_have_the_seed_json_types(api: Client, who: str, database_url: str) -> None:
    answers = await _answers(api, who, database_url)
    task = answers["GetTask"]["task"]
    # The seed carried JSON documents as strings.
    assert isinstance(task["params"], str) and json.loads(task["params"]) == {"sku": "A1"}
    assert task["paramsObject"] == {"sku": "A1"}
    for event in answers["GetTaskEvents"]["events"]:
        assert isinstance(event["eventData"], str) and json.loads(event["eventData"]) == event["payload"]
    for line in answers["GetTaskLogs"]["logs"]:
        assert line["details"] is None or isinstance(json.loads(line["details"]), dict | list)
        assert isinstance(line["id"], int)
    for rpc in ("CancelTask", "UpdateTaskProgress", "DeleteTask"):
        assert answers[rpc]["success"] is True, rpc
    download = answers["GetDownloadUrl"]
    assert download["downloadUrl"] == "file:///exports/contract.csv"
    assert download["expiresAt"] is None  # no expiry for a file URL
    created = answers["CreateTask"]
    # Only a task that stores its input (built-in import) gets an upload URL; a process task has none.
    assert (created["uploadUrl"], created["uploadUrlExpiresAt"]) == (None, None)
    # Nor does it have stored files, an export manifest or a source import.
    assert (task["manifest"], task["sourceTaskId"], task["filesAvailable"]) == (None, None, [])
    assert isinstance(answers["ListTasks"]["total"], int)


async def test_openapi_components_and_operations_are_pinned(api: Client) -> None:
    spec = (await api.get("/docs/openapi.json")).json()
    schemas = spec["components"]["schemas"]
    for name, properties in COMPONENTS.items():
        assert set(schemas[name]["properties"]) == properties, name
        if name.endswith(("Response", "Out")):
            # Answers always carry every key (null when unset), so clients may index them blindly.
            assert set(schemas[name]["required"]) == properties, name
    for rpc, (method, path, status, request, response) in OPERATIONS.items():
        operation = spec["paths"][path][method]
        assert operation["operationId"] == rpc
        assert set(operation["responses"]) >= {status}
        media = "text/event-stream" if rpc in EVENT_STREAMS else "application/json"
        schema = operation["responses"][status]["content"][media]["schema"]
        assert schema == {"$ref": f"#/components/schemas/{response}"}, rpc
        body = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
        refs = [body] if body and "$ref" in body else (body or {}).get("oneOf", [])
        assert [r["$ref"] for r in refs if "$ref" in r] == (
            [f"#/components/schemas/{request}"] if request else []
        )
    query = {p["name"] for p in spec["paths"]["/api/v1/operations/tasks"]["get"]["parameters"]}
    assert set(SEED["ListTasksRequest"]) <= query
    # GetDownloadUrlRequest.file: the path carries taskId, the query the rest of the request.
    download = spec["paths"]["/api/v1/operations/tasks/{taskId}/download"]["get"]["parameters"]
    assert {p["name"] for p in download if p["in"] == "query"} == json_names("GetDownloadUrlRequest") - {
        "taskId"
    }


def test_rest_bodies_are_the_json_mapping_of_the_proto_messages() -> None:
    # The same names through REST as through gRPC's JSON: a field added to one is added to both.
    for component, message in MESSAGE_OF_COMPONENT.items():
        assert COMPONENTS[component] == json_names(message), component
    # CreateTask accepts the proto's names except the deprecated gRPC-only alias paramsJson.
    # REST takes the idempotency key as the Idempotency-Key header, not a body field.
    assert COMPONENTS["CreateTaskRequest"] == json_names("CreateTaskRequest") - {
        "paramsJson",
        "idempotencyKey",
    }


def test_the_seed_names_are_all_kept() -> None:
    """Every JSON name of the original service appears in the REST body of the same role."""
    for component, message in MESSAGE_OF_COMPONENT.items():
        if message in SEED:
            assert set(SEED[message]) <= COMPONENTS[component], component
    assert set(SEED["CreateTaskRequest"]) <= COMPONENTS["CreateTaskRequest"]


def test_the_seed_http_bindings_are_kept() -> None:
    bindings = {rpc: (method, path) for rpc, (method, path, *_) in OPERATIONS.items()}
    assert {rpc: bindings.get(rpc) for rpc in SEED_HTTP} == SEED_HTTP
    assert set(bindings) - set(SEED_HTTP) == ADDED_OPERATIONS


def test_every_rpc_has_an_http_operation() -> None:
    # A new RPC is added to both APIs; the RPC names are the REST operation ids.
    assert set(OPERATIONS) == set(pb.DESCRIPTOR.services_by_name["OperationsService"].methods_by_name)
