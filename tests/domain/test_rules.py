"""The pure rules of the domain: transitions, counts, paging, params."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from common_operations.domain.errors import (
    InvalidTransition,
    RetryLimitExceeded,
    ValidationFailed,
)
from common_operations.domain.status import (
    TaskStatus,
    can_transition,
    ensure_cancellable,
    ensure_deletable,
    ensure_retryable,
    parse_status,
)
from common_operations.domain.task import (
    MAX_PAGE_SIZE,
    ProgressReport,
    RecordCounts,
    TaskQuery,
    apply_report,
    escape_like,
    parse_params,
    parse_task_id,
    progress_percentage,
    validate_query,
)

S = TaskStatus


@pytest.mark.parametrize(
    ("current", "target", "allowed"),
    [
        (S.SCHEDULED, S.PENDING, True),
        (S.SCHEDULED, S.PROCESSING, False),
        (S.PENDING, S.PROCESSING, True),
        (S.PROCESSING, S.COMPLETED, True),
        (S.PROCESSING, S.PENDING, False),
        (S.FAILED, S.PENDING, True),
        (S.FAILED, S.CANCELLED, True),  # only while an automatic retry waits (ensure_cancellable)
        (S.COMPLETED, S.FAILED, False),
        (S.CANCELLED, S.PENDING, False),
    ],
)
def test_status_machine(current: TaskStatus, target: TaskStatus, allowed: bool) -> None:
    assert can_transition(current, target) is allowed


def test_final_statuses_accept_nothing() -> None:
    for final in (S.COMPLETED, S.CANCELLED):
        assert final.is_final
        assert not any(can_transition(final, t) for t in TaskStatus)


def test_cancel_retry_delete_rules() -> None:
    for active in (S.SCHEDULED, S.PENDING, S.PROCESSING):
        ensure_cancellable(active)
        with pytest.raises(InvalidTransition):
            ensure_deletable(active)
    for closed in (S.COMPLETED, S.FAILED, S.CANCELLED):
        ensure_deletable(closed)
    with pytest.raises(InvalidTransition):
        ensure_cancellable(S.COMPLETED)
    ensure_retryable(S.FAILED, retry_count=2, max_retries=3)
    with pytest.raises(RetryLimitExceeded) as exc:
        ensure_retryable(S.FAILED, retry_count=3, max_retries=3)
    assert exc.value.code == "RETRY_LIMIT_EXCEEDED"
    with pytest.raises(InvalidTransition) as not_failed:
        ensure_retryable(S.COMPLETED, retry_count=0, max_retries=3)
    assert not_failed.value.code == "INVALID_TRANSITION"


def test_parse_status() -> None:
    assert parse_status("Processing") is S.PROCESSING
    assert parse_status("") is None
    with pytest.raises(ValidationFailed, match="allowed: pending, scheduled"):
        parse_status("running")


def test_progress_percentage_is_capped_and_safe() -> None:
    assert progress_percentage(5, 0) == 0.0
    assert progress_percentage(1, 3) == 33.33
    assert progress_percentage(12, 10) == 100.0


def test_apply_report_keeps_unset_counts_and_checks_consistency() -> None:
    counts = apply_report(RecordCounts(total=10, processed=2), ProgressReport(processed_records=5))
    assert counts == RecordCounts(total=10, processed=5)
    with pytest.raises(ValidationFailed, match="exceeds totalRecords"):
        apply_report(counts, ProgressReport(processed_records=11))
    with pytest.raises(ValidationFailed, match="must not be negative"):
        apply_report(counts, ProgressReport(failed_records=-1))
    with pytest.raises(ValidationFailed, match="exceeds processedRecords"):
        apply_report(counts, ProgressReport(success_records=4, failed_records=2))
    # An unknown total (0) does not bound processed.
    assert apply_report(RecordCounts(), ProgressReport(processed_records=7)).processed == 7


def test_params_as_object_or_json_string() -> None:
    assert parse_params({"a": 1}) == {"a": 1}
    assert parse_params('{"a": 1}') == {"a": 1}
    assert parse_params(None) == {} and parse_params("") == {}
    for bad in ('["a"]', "{not json", '{"a": NaN}', '{"a": Infinity}'):
        with pytest.raises(ValidationFailed):
            parse_params(bad)


def test_query_paging_dates_and_search() -> None:
    assert validate_query(TaskQuery(page_size=5000)).page_size == MAX_PAGE_SIZE
    with pytest.raises(ValidationFailed):
        validate_query(TaskQuery(page=0))
    with pytest.raises(ValidationFailed):
        validate_query(TaskQuery(page_size=0))
    now = datetime.now(UTC)
    with pytest.raises(ValidationFailed, match="startDate is after endDate"):
        validate_query(TaskQuery(start_date=now, end_date=now - timedelta(days=1)))
    with pytest.raises(ValidationFailed, match="time zone"):
        validate_query(TaskQuery(start_date=datetime(2026, 1, 1)))


def test_like_escaping_and_ids() -> None:
    assert escape_like("50%_off\\") == "50\\%\\_off\\\\"
    with pytest.raises(ValidationFailed):
        parse_task_id("not-a-uuid")
    assert (
        str(parse_task_id(" 3f1c0b9e-6f5e-4a47-9d59-1f2f0c0b7c11 ")) == "3f1c0b9e-6f5e-4a47-9d59-1f2f0c0b7c11"
    )


def test_values_postgres_cannot_store_are_refused_up_front() -> None:
    from common_operations.domain.task import CreateTask, validate_create, validate_report_shape

    ok = CreateTask(task_type="process", entity_type="product", requested_by="svc")
    validate_create(ok)
    from dataclasses import replace

    for bad in (
        replace(ok, file_size=2**63),
        replace(ok, file_name="a\x00b"),
        replace(ok, params={"k": "v\x00"}),
        replace(ok, task_type="pro\x00cess"),
    ):
        with pytest.raises(ValidationFailed):
            validate_create(bad)
    for report in (
        ProgressReport(total_records=10**20),
        ProgressReport(message="half\x00way"),
        ProgressReport(error_message="x" * 5000),
    ):
        with pytest.raises(ValidationFailed):
            validate_report_shape(report)


def test_mixed_time_zones_are_a_validation_error() -> None:
    with pytest.raises(ValidationFailed, match="time zone"):
        validate_query(TaskQuery(start_date=datetime(2026, 1, 1), end_date=datetime.now(UTC)))
