"""The gRPC wire contract, pinned: every message's fields, numbers and types, and every RPC.

The tables below are literal on purpose. A change to the proto that renames, renumbers or retypes a
field fails here and has to be made in the table too, in plain sight of the review: existing clients
(built from the original service's proto, ../shared/notes/seed-contract.md) decode by number and type,
and read JSON by name. Additions are fine (add them to the table); see tests/grpc_api/seed_contract.py
for the compatibility rule and tests/web/test_contract.py for the same contract over REST.
"""

from __future__ import annotations

import re

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor_pb2 import FieldDescriptorProto as F

from common_operations.grpc.v1 import operations_pb2 as pb
from tests.grpc_api.seed_contract import SEED, compatible

PACKAGE = "api.operations.v1"
T = f"{PACKAGE}.Task"
TS = "google.protobuf.Timestamp"
STRUCT = "google.protobuf.Struct"

# message -> [(field name, number, type, label)] in declaration order; label: "", "optional" (proto3
# optional, has presence), "repeated", "oneof <name>"; ", deprecated" is appended for deprecated fields.
FIELDS: dict[str, list[tuple[str, int, str, str]]] = {
    "Task": [
        ("id", 1, "string", ""),
        ("task_type", 2, "string", ""),
        ("entity_type", 3, "string", ""),
        ("status", 4, "string", ""),
        ("priority", 5, "int32", ""),
        ("requested_by", 6, "string", ""),
        ("params", 7, "string", ""),
        ("file_name", 8, "string", "optional"),
        ("file_size", 9, "int64", "optional"),
        ("input_file_url", 10, "string", "optional"),
        ("output_file_url", 11, "string", "optional"),
        ("total_records", 12, "int64", ""),
        ("processed_records", 13, "int64", ""),
        ("success_records", 14, "int64", ""),
        ("failed_records", 15, "int64", ""),
        ("progress_percentage", 16, "double", ""),
        ("scheduled_at", 17, TS, ""),
        ("started_at", 18, TS, ""),
        ("completed_at", 19, TS, ""),
        ("error_message", 20, "string", "optional"),
        ("retry_count", 21, "int32", ""),
        ("max_retries", 22, "int32", ""),
        ("created_at", 23, TS, ""),
        ("updated_at", 24, TS, ""),
        ("params_object", 25, STRUCT, ""),
        ("next_retry_at", 26, TS, ""),
        ("manifest", 27, STRUCT, ""),
        ("source_task_id", 28, "string", "optional"),
        ("files_available", 29, "string", "repeated"),
        ("callback_url", 30, "string", "optional"),
        ("workflow_url", 31, "string", ""),
    ],
    "CreateTaskRequest": [
        ("task_type", 1, "string", ""),
        ("entity_type", 2, "string", ""),
        ("requested_by", 3, "string", ""),
        ("priority", 4, "int32", ""),
        ("params", 5, "string", "oneof params_input"),
        ("params_json", 6, "string", "oneof params_input, deprecated"),
        ("params_object", 11, STRUCT, "oneof params_input"),
        ("file_name", 7, "string", "optional"),
        ("file_size", 8, "int64", "optional"),
        ("scheduled_at", 9, TS, ""),
        ("max_retries", 10, "int32", "optional"),
        ("content_type", 12, "string", "optional"),
        ("callback_url", 13, "string", "optional"),
        ("idempotency_key", 14, "string", "optional"),
    ],
    "CreateTaskResponse": [
        ("task", 1, T, ""),
        ("upload_url", 2, "string", "optional"),
        ("upload_url_expires_at", 3, TS, ""),
    ],
    "GetTaskRequest": [("id", 1, "string", "")],
    "GetTaskResponse": [("task", 1, T, "")],
    "ListTasksRequest": [
        ("page", 1, "int32", "optional"),
        ("page_size", 2, "int32", "optional"),
        ("task_type", 3, "string", ""),
        ("entity_type", 4, "string", ""),
        ("status", 5, "string", ""),
        ("requested_by", 6, "string", ""),
        ("start_date", 7, TS, ""),
        ("end_date", 8, TS, ""),
        ("search", 9, "string", ""),
    ],
    "ListTasksResponse": [
        ("tasks", 1, T, "repeated"),
        ("total", 2, "int64", ""),
        ("page", 3, "int32", ""),
        ("page_size", 4, "int32", ""),
    ],
    "CancelTaskRequest": [("id", 1, "string", ""), ("reason", 2, "string", "")],
    "CancelTaskResponse": [("task", 1, T, ""), ("success", 2, "bool", "")],
    "RetryTaskRequest": [("id", 1, "string", "")],
    "RetryTaskResponse": [("task", 1, T, "")],
    "UpdateTaskProgressRequest": [
        ("task_id", 1, "string", ""),
        ("processed_records", 2, "int64", "optional"),
        ("success_records", 3, "int64", "optional"),
        ("failed_records", 4, "int64", "optional"),
        ("total_records", 5, "int64", "optional"),
        ("error_message", 6, "string", "optional"),
        ("is_completed", 7, "bool", ""),
        ("message", 8, "string", "optional"),
        ("report_id", 9, "string", "optional"),
        ("increment", 10, "bool", ""),
    ],
    "UpdateTaskProgressResponse": [("task", 1, T, ""), ("success", 2, "bool", "")],
    "GetDownloadUrlRequest": [("task_id", 1, "string", ""), ("file", 2, "string", "optional")],
    "GetDownloadUrlResponse": [
        ("download_url", 1, "string", ""),
        ("file_name", 2, "string", "optional"),
        ("expires_at", 3, TS, ""),
    ],
    "RetryFailedRowsRequest": [
        ("id", 1, "string", ""),
        ("file_name", 2, "string", "optional"),
        ("file_size", 3, "int64", "optional"),
    ],
    "GetTaskLogsRequest": [
        ("task_id", 1, "string", ""),
        ("page", 2, "int32", "optional"),
        ("page_size", 3, "int32", "optional"),
    ],
    "TaskLog": [
        ("task_id", 1, "string", ""),
        ("seq", 2, "int64", ""),
        ("level", 3, "string", ""),
        ("message", 4, "string", ""),
        ("created_at", 5, TS, ""),
        ("id", 6, "int64", ""),
        ("details", 7, "string", "optional"),
    ],
    "GetTaskLogsResponse": [
        ("logs", 1, f"{PACKAGE}.TaskLog", "repeated"),
        ("total", 2, "int64", ""),
        ("page", 3, "int32", ""),
        ("page_size", 4, "int32", ""),
    ],
    "GetTaskEventsRequest": [
        ("task_id", 1, "string", ""),
        ("page", 2, "int32", "optional"),
        ("page_size", 3, "int32", "optional"),
    ],
    "TaskEvent": [
        ("id", 1, "int64", ""),
        ("task_id", 2, "string", ""),
        ("seq", 3, "int64", ""),
        ("event_type", 4, "string", ""),
        ("status", 5, "string", ""),
        ("payload", 6, STRUCT, ""),
        ("created_at", 7, TS, ""),
        ("published_at", 8, TS, ""),
        ("event_data", 9, "string", ""),
    ],
    "GetTaskEventsResponse": [
        ("events", 1, f"{PACKAGE}.TaskEvent", "repeated"),
        ("total", 2, "int64", ""),
        ("page", 3, "int32", ""),
        ("page_size", 4, "int32", ""),
    ],
    "DeleteTaskRequest": [("id", 1, "string", "")],
    "DeleteTaskResponse": [("success", 1, "bool", "")],
    "HealthRequest": [],
    "HealthResponse": [
        ("status", 1, "string", ""),
        ("components", 2, "map<string, string>", ""),
    ],
    "WatchTaskRequest": [("id", 1, "string", ""), ("after_seq", 2, "int64", "optional")],
    "WatchTaskResponse": [("task", 1, T, ""), ("seq", 2, "int64", ""), ("final", 3, "bool", "")],
}

# Field numbers no longer in use; none may be given a new meaning silently.
RESERVED: dict[str, list[int]] = {name: [] for name in FIELDS}

RPCS: dict[str, tuple[str, str]] = {
    "CreateTask": ("CreateTaskRequest", "CreateTaskResponse"),
    "GetTask": ("GetTaskRequest", "GetTaskResponse"),
    "ListTasks": ("ListTasksRequest", "ListTasksResponse"),
    "CancelTask": ("CancelTaskRequest", "CancelTaskResponse"),
    "RetryTask": ("RetryTaskRequest", "RetryTaskResponse"),
    "UpdateTaskProgress": ("UpdateTaskProgressRequest", "UpdateTaskProgressResponse"),
    "GetDownloadUrl": ("GetDownloadUrlRequest", "GetDownloadUrlResponse"),
    "GetTaskLogs": ("GetTaskLogsRequest", "GetTaskLogsResponse"),
    "GetTaskEvents": ("GetTaskEventsRequest", "GetTaskEventsResponse"),
    "DeleteTask": ("DeleteTaskRequest", "DeleteTaskResponse"),
    "RetryFailedRows": ("RetryFailedRowsRequest", "CreateTaskResponse"),
    "Health": ("HealthRequest", "HealthResponse"),
    "WatchTask": ("WatchTaskRequest", "WatchTaskResponse"),
}
# The one RPC that answers with a stream of messages.
SERVER_STREAMING = {"WatchTask"}

_SCALARS = {
    value: name.removeprefix("TYPE_").lower()
    for name, value in F.Type.items()
    if name not in ("TYPE_MESSAGE", "TYPE_GROUP", "TYPE_ENUM")
}


def _file() -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto()
    pb.DESCRIPTOR.CopyToProto(proto)
    return proto


def _messages() -> dict[str, descriptor_pb2.DescriptorProto]:
    return {m.name: m for m in _file().message_type}


def _type(message: descriptor_pb2.DescriptorProto, field: descriptor_pb2.FieldDescriptorProto) -> str:
    if field.type != F.TYPE_MESSAGE:
        return _SCALARS[field.type]
    nested = {f".{PACKAGE}.{message.name}.{n.name}": n for n in message.nested_type}
    entry = nested.get(field.type_name)
    if entry is not None and entry.options.map_entry:
        key, value = entry.field
        return f"map<{_SCALARS[key.type]}, {_SCALARS[value.type]}>"
    return field.type_name.removeprefix(".")


def _label(message: descriptor_pb2.DescriptorProto, field: descriptor_pb2.FieldDescriptorProto) -> str:
    if field.proto3_optional:
        label = "optional"
    elif field.HasField("oneof_index"):
        label = f"oneof {message.oneof_decl[field.oneof_index].name}"
    elif field.label == F.LABEL_REPEATED and not _type(message, field).startswith("map<"):
        label = "repeated"
    else:
        label = ""
    if field.options.deprecated:
        label += ", deprecated"
    return label


def _described(message: descriptor_pb2.DescriptorProto) -> list[tuple[str, int, str, str]]:
    return [(f.name, f.number, _type(message, f), _label(message, f)) for f in message.field]


def _json_name(message: str, field: str) -> str:
    # The serialized descriptor carries no json_name; the runtime's descriptor computes it.
    json_name: str = pb.DESCRIPTOR.message_types_by_name[message].fields_by_name[field].json_name
    return json_name


def _json_names(message: descriptor_pb2.DescriptorProto) -> dict[str, str]:
    """JSON name -> our type, "repeated <type>" for lists."""
    names = {}
    for f in message.field:
        kind = _type(message, f)
        names[_json_name(message.name, f.name)] = (
            f"repeated {kind}" if _label(message, f) == "repeated" else kind
        )
    return names


def test_the_package_and_its_messages() -> None:
    proto = _file()
    assert proto.package == PACKAGE
    assert set(_messages()) == set(FIELDS)


def test_every_field_name_number_and_type_is_pinned() -> None:
    messages = _messages()
    for name, expected in FIELDS.items():
        assert _described(messages[name]) == expected, name


def test_no_number_is_reused_for_another_meaning() -> None:
    messages = _messages()
    for name, reserved in RESERVED.items():
        message = messages[name]
        assert [r.start for r in message.reserved_range] == reserved, name
        numbers = [f.number for f in message.field]
        assert len(numbers) == len(set(numbers)), name
        assert not set(numbers) & set(reserved), name


def test_every_rpc_is_pinned() -> None:
    (service,) = _file().service
    assert service.name == "OperationsService"
    methods = {m.name: (m.input_type, m.output_type) for m in service.method}
    assert methods == {
        rpc: (f".{PACKAGE}.{request}", f".{PACKAGE}.{response}") for rpc, (request, response) in RPCS.items()
    }
    assert {m.name for m in service.method if m.server_streaming} == SERVER_STREAMING
    assert not any(m.client_streaming for m in service.method)


def test_json_names_are_the_lower_camel_case_of_the_field_names() -> None:
    # REST JSON is the proto3 JSON mapping of these messages; no json_name override may bend it.
    for message in _messages().values():
        for f in message.field:
            camel = re.sub(r"_([a-z0-9])", lambda m: m.group(1).upper(), f.name)
            assert _json_name(message.name, f.name) == camel, f"{message.name}.{f.name}"


def test_the_seed_contract_is_kept() -> None:
    """Every field of the original service keeps its JSON name, a wire-compatible type and its shape."""
    messages = _messages()
    assert set(SEED) <= set(messages)
    for message_name, seed_fields in SEED.items():
        ours = _json_names(messages[message_name])
        for json_name, seed_type in seed_fields.items():
            assert json_name in ours, f"{message_name}.{json_name} is missing"
            seed_repeated = seed_type.startswith("repeated ")
            assert ours[json_name].startswith("repeated ") == seed_repeated, f"{message_name}.{json_name}"
            assert compatible(
                seed_type.removeprefix("repeated "), ours[json_name].removeprefix("repeated ")
            ), f"{message_name}.{json_name}: seed {seed_type}, ours {ours[json_name]}"
