"""What the Temporal Web UI shows of a task's workflow, so an operator reads it without payloads.

A workflow starts with a static summary (one line, the list's "Summary" column) and static details
(the workflow page's header): task type, entity, requester, file. While it runs it keeps its
current details up to date (``workflow.set_current_details``, served by the built-in
``__temporal_workflow_metadata`` query the Web UI calls): status, counts, percentage, last message.
All of it is Temporal markdown made of the task's description and counts, never its params.

Pure functions of the workflow's input and state: the workflow calls them, so they must stay
deterministic (no clock, no I/O).
"""

from __future__ import annotations

from datetime import datetime

from common_operations.domain.status import TaskStatus
from common_operations.domain.task import RecordCounts
from common_operations.domain.workflow_types import HandlerKind, TaskWorkflowInput

# The Web UI shows the summary on one line; long messages are cut (the task's logs have them whole).
SUMMARY_LIMIT = 200
MESSAGE_LIMIT = 300


def _clip(text: str, limit: int) -> str:
    text = " ".join(text.split())  # one line: markdown must not break on a message's newlines
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _code(text: str) -> str:
    # Inline code keeps a caller's text from being read as markdown; backticks cannot close it.
    return "`" + text.replace("`", "'") + "`"


def _size(size: object) -> str:
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        return ""
    value, unit = float(size), "B"
    for next_unit in ("KiB", "MiB", "GiB"):
        if value < 1024:
            break
        value, unit = value / 1024, next_unit
    return f" ({value:.0f} {unit})" if unit == "B" else f" ({value:.1f} {unit})"


def _file_name(inp: TaskWorkflowInput) -> str | None:
    name = (inp.input_file or {}).get("name")
    return str(name) if name else None


def static_summary(inp: TaskWorkflowInput) -> str:
    """One line: ``process of product for catalog-service`` (and the file, when there is one)."""
    line = f"{inp.task_type} of {inp.entity_type} for {inp.requested_by or 'unknown'}"
    if name := _file_name(inp):
        line += f": {name}"
    return _clip(line, SUMMARY_LIMIT)


def static_details(inp: TaskWorkflowInput, *, scheduled_at: datetime | None = None) -> str:
    """The task's fixed description, one ``**label** value`` line each (Temporal markdown)."""
    kind = inp.handler.kind
    how = kind.value
    if kind is HandlerKind.DELEGATED and inp.handler.activity:
        how += f": activity {_code(inp.handler.activity)} on {_code(inp.handler.task_queue or '?')}"
    lines = [
        f"**Task** {_code(inp.task_id)}",
        f"**Type** {_code(inp.task_type)} ({how})",
        f"**Entity** {_code(inp.entity_type)}",
        f"**Requested by** {_code(inp.requested_by or 'unknown')}",
    ]
    if name := _file_name(inp):
        lines.append(f"**File** {_code(name)}{_size((inp.input_file or {}).get('size'))}")
    when = scheduled_at or inp.scheduled_at
    if when is not None:
        lines.append(f"**Scheduled for** {when.isoformat()}")
    lines.append(f"**Retries** up to {inp.max_retries}")
    return "\n".join(lines)


def current_details(
    status: TaskStatus,
    counts: RecordCounts,
    *,
    message: str | None = None,
    error: str | None = None,
    retry_count: int = 0,
    max_retries: int = 0,
    next_retry_at: datetime | None = None,
) -> str:
    """The task as it is now: status, percentage, counts, last message (Temporal markdown).

    Args:
        status: the task's status.
        counts: its record counts.
        message: the last thing it said (a report's message or the last transition's).
        error: why it failed, if it did.
        retry_count: attempts retried so far.
        max_retries: how many retries it may take.
        next_retry_at: when an automatic retry is due, if one is.
    """
    head = f"**Status** {status.value}"
    if counts.total:
        head += f" · {counts.percentage:g} %"
    records = f"**Records** {counts.processed}" + (f" / {counts.total}" if counts.total else "")
    records += f" processed ({counts.success} ok, {counts.failed} failed)"
    lines = [head, records]
    if retry_count:
        lines.append(f"**Retry** {retry_count} of {max_retries}")
    if next_retry_at is not None:
        lines.append(f"**Next retry at** {next_retry_at.isoformat()}")
    if error:
        lines.append(f"**Error** {_clip(error, MESSAGE_LIMIT)}")
    if message:
        lines.append(f"**Last message** {_clip(message, MESSAGE_LIMIT)}")
    return "\n".join(lines)
