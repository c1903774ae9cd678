"""The documented input limits: one source (the domain), equal to the columns that store the values."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from common_operations.db.tables import Tasks
from common_operations.domain import task as limits
from common_operations.domain.errors import PayloadTooLarge, ValidationFailed, quoted
from common_operations.domain.status import TaskStatus
from common_operations.domain.task import (
    MAX_PAGE,
    MAX_PARAMS_BYTES,
    MAX_PARAMS_DEPTH,
    CreateTask,
    TaskQuery,
    parse_params,
    parse_task_id,
    validate_create,
    validate_paging,
    validate_params,
    validate_query,
)

OK = CreateTask(task_type="process", entity_type="product", requested_by="svc")


@pytest.mark.parametrize(
    ("limit", "column"),
    [
        ("MAX_TASK_TYPE_LENGTH", Tasks.task_type),
        ("MAX_ENTITY_TYPE_LENGTH", Tasks.entity_type),
        ("MAX_REQUESTED_BY_LENGTH", Tasks.requested_by),
    ],
)
def test_text_limits_equal_their_columns(limit: str, column: Any) -> None:
    assert getattr(limits, limit) == column.length


def test_statuses_fit_their_column() -> None:
    assert max(len(s.value) for s in TaskStatus) <= Tasks.status.length


def nested(depth: int) -> dict[str, Any]:
    """A params object ``depth`` levels deep (the object itself is level 1)."""
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


@pytest.mark.parametrize(
    ("field", "limit"),
    [
        ("task_type", limits.MAX_TASK_TYPE_LENGTH),
        ("entity_type", limits.MAX_ENTITY_TYPE_LENGTH),
        ("requested_by", limits.MAX_REQUESTED_BY_LENGTH),
        ("file_name", limits.MAX_FILE_NAME_LENGTH),
    ],
)
def test_create_text_lengths(field: str, limit: int) -> None:
    assert getattr(validate_create(replace(OK, **{field: "x" * limit})), field) == "x" * limit
    with pytest.raises(ValidationFailed, match=f"longer than {limit}") as info:
        validate_create(replace(OK, **{field: "x" * (limit + 1)}))
    assert info.value.details["field"] in {"taskType", "entityType", "requestedBy", "fileName"}


def test_lengths_count_characters_after_trimming() -> None:
    # varchar(n) counts characters, not bytes; surrounding blanks are trimmed before counting.
    assert validate_create(replace(OK, task_type="é" * 100)).task_type == "é" * 100
    assert validate_create(replace(OK, entity_type=" " + "x" * 100 + " ")).entity_type == "x" * 100


def test_params_depth_limit() -> None:
    validate_params(nested(MAX_PARAMS_DEPTH))
    with pytest.raises(ValidationFailed, match="deeper than 32") as info:
        validate_params(nested(MAX_PARAMS_DEPTH + 1))
    assert info.value.details["field"] == "params"
    # Lists count as levels too.
    with pytest.raises(ValidationFailed):
        validate_params({"a": json.loads("[" * MAX_PARAMS_DEPTH + "]" * MAX_PARAMS_DEPTH)})


def test_params_string_nested_beyond_the_recursion_limit_is_a_validation_error() -> None:
    with pytest.raises(ValidationFailed, match="deeper"):
        parse_params('{"a":' + "[" * 100_000 + "]" * 100_000 + "}")


def test_params_size_limit_counts_compact_utf8_json() -> None:
    overhead = len('{"k":""}')
    validate_params({"k": "x" * (MAX_PARAMS_BYTES - overhead)})
    with pytest.raises(PayloadTooLarge) as info:
        validate_params({"k": "x" * (MAX_PARAMS_BYTES - overhead + 1)})
    assert info.value.code == "PAYLOAD_TOO_LARGE"
    assert info.value.details["field"] == "params"
    # Multi-byte characters count by their UTF-8 bytes.
    with pytest.raises(PayloadTooLarge):
        validate_params({"k": "é" * (MAX_PARAMS_BYTES // 2)})
    # Through validate_create as well.
    with pytest.raises(PayloadTooLarge):
        validate_create(replace(OK, params={"k": "x" * MAX_PARAMS_BYTES}))


@pytest.mark.parametrize(
    "params",
    [
        pytest.param({"k\x00": 1}, id="nul-in-key"),
        pytest.param({"k": ["a\x00"]}, id="nul-in-nested-string"),
        pytest.param({"k": "\ud800"}, id="unpaired-surrogate"),
        pytest.param({"k": float("nan")}, id="nan"),
        pytest.param({"k": float("inf")}, id="infinity"),
        pytest.param({"k": object()}, id="not-json"),
    ],
)
def test_params_postgres_cannot_store(params: dict[str, Any]) -> None:
    with pytest.raises(ValidationFailed) as info:
        validate_params(params)
    assert info.value.details["field"] == "params"


def test_literal_backslash_u0000_text_is_not_a_nul() -> None:
    validate_params({"k": "\\u0000"})


def test_unpaired_surrogates_in_text_fields() -> None:
    with pytest.raises(ValidationFailed, match="surrogate"):
        validate_create(replace(OK, entity_type="\udcff"))
    with pytest.raises(ValidationFailed, match="surrogate"):
        validate_query(TaskQuery(search="\ud800"))


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=1))), id="year-1-east-of-utc"),
        pytest.param(
            datetime(9999, 12, 31, 23, 59, tzinfo=timezone(timedelta(hours=-1))), id="year-9999-west-of-utc"
        ),
    ],
)
def test_instants_beyond_utc_years_1_to_9999(value: datetime) -> None:
    with pytest.raises(ValidationFailed, match="out of range"):
        validate_create(replace(OK, scheduled_at=value))
    with pytest.raises(ValidationFailed, match="out of range"):
        validate_query(TaskQuery(start_date=value))
    with pytest.raises(ValidationFailed, match="out of range"):
        validate_query(TaskQuery(end_date=value))


def test_extreme_instants_within_range_are_accepted() -> None:
    validate_create(replace(OK, scheduled_at=datetime(1, 1, 1, tzinfo=UTC)))
    validate_query(
        TaskQuery(start_date=datetime(1, 1, 1, tzinfo=UTC), end_date=datetime.max.replace(tzinfo=UTC))
    )


@pytest.mark.parametrize(
    ("name", "limit"),
    [("taskType", 100), ("entityType", 100), ("requestedBy", 255), ("search", 200)],
)
def test_list_filters_longer_than_their_column(name: str, limit: int) -> None:
    attr = {"taskType": "task_type", "entityType": "entity_type", "requestedBy": "requested_by"}.get(
        name, name
    )
    validate_query(TaskQuery(**{attr: "x" * limit}))
    with pytest.raises(ValidationFailed) as info:
        validate_query(TaskQuery(**{attr: "x" * (limit + 1)}))
    assert info.value.details["field"] == name


def test_page_numbers_keep_the_offset_within_bigint() -> None:
    validate_paging(MAX_PAGE, 1000, 1000)
    assert (MAX_PAGE - 1) * 1000 < 2**63
    with pytest.raises(ValidationFailed, match="page must be at most"):
        validate_paging(MAX_PAGE + 1, 1, 1000)
    with pytest.raises(ValidationFailed, match="page must be at most"):
        validate_query(TaskQuery(page=10**30))


def test_messages_name_long_inputs_shortly() -> None:
    with pytest.raises(ValidationFailed) as info:
        parse_task_id("x" * 100_000)
    assert len(info.value.message) < 120
    assert quoted("abc") == "'abc'"
    assert quoted("y" * 1000).endswith("…") and len(quoted("y" * 1000)) == 64


def test_params_numbers_must_fit_a_double() -> None:
    # gRPC shows params as a Struct (doubles): a larger integer would be stored, then fail every read.
    validate_params({"big": 10**300, "exact": 2**63})
    with pytest.raises(ValidationFailed, match="double") as info:
        validate_params({"a": [10**400]})
    assert info.value.details["field"] == "params"
    assert validate_params({"flag": True}) is None  # bools are not numbers here


def test_params_string_with_an_integer_past_pythons_digit_limit() -> None:
    with pytest.raises(ValidationFailed, match="params is not valid JSON"):
        parse_params('{"a": ' + "9" * 5000 + "}")
