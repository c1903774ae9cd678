"""Options of built-in import and export tasks, read from a task's ``params`` (pure, sandbox-safe).

Validated when the task is created, so a bad option is a 400 at once rather than a failed task.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from common_operations.domain.errors import ValidationFailed

FORMATS = ("csv", "xlsx", "jsonl")
MODES = ("upsert", "insert", "update")
CONTENT_TYPES = {
    "csv": "text/csv; charset=utf-8",
    "jsonl": "application/x-ndjson",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
}
# Columns the row-level result file adds to the input's own.
RESULT_COLUMNS = ("_status", "_error_code", "_error_field", "_error_message")

Format = Literal["csv", "xlsx", "jsonl"]
_FORMAT_OF_EXTENSION: dict[str, Format] = {
    "csv": "csv",
    "txt": "csv",
    "tsv": "csv",
    "xlsx": "xlsx",
    "jsonl": "jsonl",
    "ndjson": "jsonl",
}
Mode = Literal["upsert", "insert", "update"]


@dataclass(frozen=True, slots=True)
class ImportOptions:
    """How an import reads its file and applies its rows."""

    format: Format | None = None
    delimiter: str | None = None
    encoding: str | None = None
    sheet: str | int | None = None
    mode: Mode = "upsert"
    dry_run: bool = False
    max_errors: int | None = None
    max_error_rate: float | None = None
    # The import whose failed rows this one imports again (set by the service, not by callers).
    source_task_id: str | None = None


@dataclass(frozen=True, slots=True)
class ExportOptions:
    """What an export writes."""

    format: Format = "csv"
    filters: dict[str, Any] = field(default_factory=dict)
    sheet: str = "data"


def _invalid(message: str, name: str) -> ValidationFailed:
    return ValidationFailed(message, field=f"params.{name}")


def _choice(params: Mapping[str, Any], name: str, allowed: tuple[str, ...]) -> str | None:
    value = params.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or value.lower() not in allowed:
        raise _invalid(f"params.{name} must be one of {', '.join(allowed)}; got {value!r}", name)
    return value.lower()


def format_of(file_name: str | None) -> Format | None:
    """The format a file name's extension names, if it names one."""
    if not file_name or "." not in file_name:
        return None
    return _FORMAT_OF_EXTENSION.get(file_name.rsplit(".", 1)[1].lower())


def import_options(params: Mapping[str, Any], file_name: str | None = None) -> ImportOptions:
    """The import options in ``params``, validated.

    Raises:
        ValidationFailed: an option is unknown in kind or out of range (names the parameter).
    """
    fmt = _choice(params, "format", FORMATS) or format_of(file_name)
    delimiter = params.get("delimiter")
    if delimiter is not None and (
        not isinstance(delimiter, str) or len(delimiter) != 1 or delimiter in '"\r\n'
    ):
        raise _invalid("params.delimiter must be one character (not a quote or a line break)", "delimiter")
    encoding = params.get("encoding")
    if encoding is not None:
        import codecs

        try:
            codecs.lookup(str(encoding))
        except LookupError:
            raise _invalid(f"params.encoding {encoding!r} is not a known encoding", "encoding") from None
    sheet = params.get("sheet")
    if sheet is not None and not isinstance(sheet, str | int):
        raise _invalid("params.sheet must be a sheet name or a 0-based index", "sheet")
    if isinstance(sheet, bool) or (isinstance(sheet, int) and sheet < 0):
        raise _invalid("params.sheet must be a sheet name or a 0-based index", "sheet")
    dry_run = params.get("dryRun", False)
    if not isinstance(dry_run, bool):
        raise _invalid("params.dryRun must be true or false", "dryRun")
    max_errors = params.get("maxErrors")
    if max_errors is not None and (
        isinstance(max_errors, bool) or not isinstance(max_errors, int) or max_errors < 0
    ):
        raise _invalid("params.maxErrors must be a whole number >= 0", "maxErrors")
    rate = params.get("maxErrorRate")
    if rate is not None and (
        isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= float(rate) <= 1
    ):
        raise _invalid("params.maxErrorRate must be a fraction between 0 and 1", "maxErrorRate")
    source = params.get("sourceTaskId")
    return ImportOptions(
        format=fmt,  # type: ignore[arg-type]
        delimiter=delimiter,
        encoding=str(encoding) if encoding is not None else None,
        sheet=sheet,
        mode=(_choice(params, "mode", MODES) or "upsert"),  # type: ignore[arg-type]
        dry_run=dry_run,
        max_errors=max_errors,
        max_error_rate=float(rate) if rate is not None else None,
        source_task_id=str(source) if source else None,
    )


def export_options(params: Mapping[str, Any]) -> ExportOptions:
    """The export options in ``params``, validated (the filters against the entity elsewhere).

    Raises:
        ValidationFailed: an option is unknown in kind.
    """
    filters = params.get("filters", {})
    if not isinstance(filters, dict):
        raise _invalid("params.filters must be an object of field filters", "filters")
    sheet = params.get("sheet", "data")
    if not isinstance(sheet, str) or not sheet or len(sheet) > 31:
        raise _invalid("params.sheet must be a sheet name of 1 to 31 characters", "sheet")
    return ExportOptions(format=(_choice(params, "format", FORMATS) or "csv"), filters=filters, sheet=sheet)  # type: ignore[arg-type]


def too_many_errors(opts: ImportOptions, processed: int, failed: int) -> str | None:
    """Why the import must stop under its error policy, or None to go on."""
    if opts.max_errors is not None and failed > opts.max_errors:
        return f"{failed} rows failed, more than maxErrors {opts.max_errors}"
    # A rate means little over a handful of rows: it is judged once 100 rows are in.
    rate = opts.max_error_rate
    if rate is not None and processed >= 100 and failed / processed > rate:
        return f"{failed} of {processed} rows failed, more than maxErrorRate {rate:g}"
    return None
