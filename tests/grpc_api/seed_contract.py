"""The original service's wire contract (../shared/notes/seed-contract.md) as data.

Existing clients of the platform were built from the original proto and its gRPC-Gateway REST API;
they need these names, types and shapes, in gRPC and in REST JSON alike. Every field is named by its
JSON name (the lowerCamelCase of the proto field); its type is the one the seed note gives, ``"?"``
where the note gives none. Fields and messages may be added; none of these may be renamed or retyped.
The gRPC contract test checks them against the descriptor, the REST one against the answers.
"""

from __future__ import annotations

from typing import Final

TASK: Final = "api.operations.v1.Task"
TASK_LOG: Final = "api.operations.v1.TaskLog"
TASK_EVENT: Final = "api.operations.v1.TaskEvent"
TIMESTAMP: Final = "google.protobuf.Timestamp"

# Wire-compatible widenings the compatibility rule allows: varints of either width decode alike.
COMPATIBLE: Final[dict[str, frozenset[str]]] = {
    "int32": frozenset({"int32", "int64"}),
}

# message -> {JSON name: seed type}; "repeated X" for lists.
SEED: Final[dict[str, dict[str, str]]] = {
    "Task": {
        "id": "string",
        "taskType": "string",
        "entityType": "string",
        "status": "string",
        "priority": "int32",
        "requestedBy": "string",
        "params": "string",  # a JSON object encoded as a string
        "inputFileUrl": "string",
        "outputFileUrl": "string",
        "fileName": "string",
        "fileSize": "int64",
        "totalRecords": "int32",
        "processedRecords": "int32",
        "successRecords": "int32",
        "failedRecords": "int32",
        "progressPercentage": "double",
        "scheduledAt": TIMESTAMP,
        "startedAt": TIMESTAMP,
        "completedAt": TIMESTAMP,
        "errorMessage": "string",
        "retryCount": "int32",
        "createdAt": TIMESTAMP,
        "updatedAt": TIMESTAMP,
    },
    "TaskLog": {
        "id": "?",
        "taskId": "string",
        "level": "string",
        "message": "string",
        "details": "string",
        "createdAt": TIMESTAMP,
    },
    "TaskEvent": {
        "id": "?",
        "taskId": "string",
        "eventType": "string",
        "eventData": "string",  # JSON encoded as a string
        "createdAt": TIMESTAMP,
    },
    "CreateTaskRequest": {
        "taskType": "string",
        "entityType": "string",
        "requestedBy": "string",
        "params": "string",  # a JSON object encoded as a string
        "fileName": "string",
        "fileSize": "int64",
        "scheduledAt": TIMESTAMP,
    },
    "CreateTaskResponse": {"task": TASK, "uploadUrl": "string"},
    "GetTaskRequest": {"id": "string"},
    "GetTaskResponse": {"task": TASK},
    "ListTasksRequest": {
        "page": "int32",
        "pageSize": "int32",
        "taskType": "string",
        "entityType": "string",
        "status": "string",
        "requestedBy": "string",
        "startDate": TIMESTAMP,
        "endDate": TIMESTAMP,
        "search": "string",
    },
    "ListTasksResponse": {"tasks": f"repeated {TASK}", "total": "int32"},
    "CancelTaskRequest": {"id": "string", "reason": "string"},
    "CancelTaskResponse": {"success": "bool"},
    "RetryTaskRequest": {"id": "string"},
    "RetryTaskResponse": {"task": TASK},
    "UpdateTaskProgressRequest": {
        "taskId": "string",
        "processedRecords": "int32",
        "successRecords": "int32",
        "failedRecords": "int32",
        "errorMessage": "string",
        "isCompleted": "bool",
    },
    "UpdateTaskProgressResponse": {"success": "bool"},
    "GetDownloadUrlRequest": {"taskId": "string"},
    "GetDownloadUrlResponse": {"downloadUrl": "string", "expiresAt": TIMESTAMP},
    "GetTaskLogsRequest": {"taskId": "string"},
    "GetTaskLogsResponse": {"logs": f"repeated {TASK_LOG}"},
    "GetTaskEventsRequest": {"taskId": "string"},
    "GetTaskEventsResponse": {"events": f"repeated {TASK_EVENT}"},
    "DeleteTaskRequest": {"id": "string"},
    "DeleteTaskResponse": {"success": "bool"},
    "HealthRequest": {},
    "HealthResponse": {"status": "string"},
}

# RPC -> (HTTP method, path template of the original gRPC-Gateway binding).
SEED_HTTP: Final[dict[str, tuple[str, str]]] = {
    "CreateTask": ("post", "/api/v1/operations/tasks"),
    "GetTask": ("get", "/api/v1/operations/tasks/{id}"),
    "ListTasks": ("get", "/api/v1/operations/tasks"),
    "CancelTask": ("post", "/api/v1/operations/tasks/{id}/cancel"),
    "RetryTask": ("post", "/api/v1/operations/tasks/{id}/retry"),
    "UpdateTaskProgress": ("patch", "/api/v1/operations/tasks/{taskId}/progress"),
    "GetDownloadUrl": ("get", "/api/v1/operations/tasks/{taskId}/download"),
    "GetTaskLogs": ("get", "/api/v1/operations/tasks/{taskId}/logs"),
    "GetTaskEvents": ("get", "/api/v1/operations/tasks/{taskId}/events"),
    "DeleteTask": ("delete", "/api/v1/operations/tasks/{id}"),
    "Health": ("get", "/api/v1/operations/health"),
}


def compatible(seed_type: str, ours: str) -> bool:
    """Whether a field of type ``ours`` reads and writes the seed's ``seed_type`` on the wire."""
    if seed_type == "?":
        return True
    return ours == seed_type or ours in COMPATIBLE.get(seed_type, frozenset())
