"""Streaming row writers for bulk exports: CSV, JSON Lines and XLSX into a binary output stream.

Each writer takes rows of Python values and writes them to ``out`` (anything with
``write(bytes)``), batching writes into about 64 KiB so that an object-storage upload stream is not
called once per row. ``close()`` flushes; it never closes ``out``, which belongs to the caller.

Value rendering, shared by CSV and the text of JSON Lines:

* ``None`` is an empty CSV field, JSON ``null``, an empty XLSX cell.
* ``bool`` is ``true``/``false`` (a boolean cell in XLSX).
* ``int``/``float`` are numbers; ``Decimal`` is written exactly as its digits (no exponent in
  CSV): a JSON *number* made from ``str(value)``, so no precision is lost (a Decimal nested in a
  dict or list is a JSON string: ``json`` cannot write it as a number). Non-finite floats and
  Decimals are JSON ``null``.
* ``date``/``datetime``/``time`` are ISO 8601 (typed date cells in XLSX; timezone-aware datetimes
  are converted to UTC there, as Excel has no timezones).
* ``dict``/``list`` are compact JSON text in CSV and XLSX.

Formula neutralisation (on by default, CSV and XLSX only): a *string* that starts with
``= + - @ TAB CR`` is prefixed with ``'`` so that a spreadsheet shows it instead of running it.
It applies to strings only: the int ``-5`` stays a number, the string ``"-5"`` becomes ``'-5``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, date, datetime, time
from decimal import Decimal
from enum import Enum
from itertools import islice
from json.encoder import encode_basestring as _encode_str
from types import TracebackType
from typing import Any, Literal, Protocol, Self
from uuid import UUID

from openpyxl import Workbook
from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE

FLUSH_BYTES = 64 * 1024
_FORMULA_TRIGGERS = frozenset("=+-@\t\r")
# Excel keeps 15 significant digits; larger integers (ids) are written as text to stay exact.
_EXCEL_INT_LIMIT = 10**15


class SupportsWriteBytes(Protocol):
    """An output stream: anything with ``write(bytes)``."""

    def write(self, data: bytes, /) -> object:
        """Write ``data``."""
        ...


class RowWriter(Protocol):
    """Writes rows of values in header order; ``rows`` counts the data rows written."""

    rows: int

    def write_row(self, values: Sequence[Any]) -> None:
        """Write one row, values in header order."""
        ...

    def write_rows(self, rows: Iterable[Sequence[Any]]) -> None:
        """Write many rows; faster than ``write_row`` one by one."""
        ...

    def close(self) -> None:
        """Flush everything to the output stream (which stays open)."""
        ...

    def __enter__(self) -> Self:
        """Return the writer itself."""
        ...

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Close the writer."""
        ...


def neutralize(value: str) -> str:
    """Keep a spreadsheet from running a string cell as a formula.

    Args:
        value: A string cell.

    Returns:
        ``value`` prefixed with ``'`` when it starts with ``= + - @``, a tab or a carriage return;
        otherwise ``value`` unchanged.
    """
    if value and value[0] in _FORMULA_TRIGGERS:
        return "'" + value
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    if isinstance(value, Decimal):
        # Nested in a dict or list: only a top-level Decimal can be written as an exact number.
        return str(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (set, frozenset)):
        return list(value)
    return str(value)  # UUID and anything else with a meaningful text form


def _compact_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=_json_default)


def _csv_bool(value: bool) -> str:
    return "true" if value else "false"


def _csv_none(value: None) -> str:
    return ""


def _csv_decimal(value: Decimal) -> str:
    text = str(value)
    return format(value, "f") if "E" in text else text  # exact digits, never an exponent


# Renderers for the non-string types a CSV field commonly holds, looked up by exact type.
_CSV_RENDER: dict[type, Callable[[Any], str]] = {
    type(None): _csv_none,
    bool: _csv_bool,
    Decimal: _csv_decimal,
    datetime: datetime.isoformat,
    date: date.isoformat,
    time: time.isoformat,
    dict: _compact_json,
    list: _compact_json,
    tuple: _compact_json,
}


class _BufferedText:
    """Text collected in memory and written to ``out`` as UTF-8 in ~64 KiB batches."""

    def __init__(self, out: SupportsWriteBytes):
        self._out = out
        self.buf = io.StringIO(newline="")

    def maybe_flush(self) -> None:
        if self.buf.tell() >= FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        data = self.buf.getvalue()
        if data:
            self.buf.seek(0)
            self.buf.truncate()
            self._out.write(data.encode("utf-8"))


class _ClosingMixin(ABC):
    """A writer used as a context manager: leaving the block closes it."""

    @abstractmethod
    def close(self) -> None:
        """Flush what is buffered and finish the file."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class CsvRowWriter(_ClosingMixin):
    """CSV: UTF-8 without BOM, comma, RFC 4180 quoting, CRLF line ends (as RFC 4180 and Excel use)."""

    def __init__(self, out: SupportsWriteBytes, header: Sequence[str], *, neutralize_formulas: bool = True):
        self.rows = 0
        self._text = _BufferedText(out)
        self._writer = csv.writer(self._text.buf, lineterminator="\r\n")
        self._neutralize = neutralize_formulas
        self._triggers = _FORMULA_TRIGGERS if neutralize_formulas else frozenset()
        self._writer.writerow([self._cell(name) for name in header])
        self._closed = False

    def _cell(self, value: Any) -> Any:
        kind = type(value)
        if kind is str:
            if self._neutralize and value and value[0] in _FORMULA_TRIGGERS:
                return "'" + value
            return value
        if kind is int or kind is float:
            return value  # csv.writer renders these itself (float via repr, the shortest exact form)
        render = _CSV_RENDER.get(kind)
        if render is not None:
            return render(value)  # numbers, dates and JSON: never neutralised
        if isinstance(value, Enum):
            return self._cell(value.value)
        if isinstance(value, (bool, int, float, Decimal, datetime, date, time, dict, list, tuple)):
            for base, base_render in _CSV_RENDER.items():  # a subclass of a rendered type
                if isinstance(value, base):
                    return base_render(value)
            return value
        return self._cell(str(value))  # anything else (UUID, ...) as text, neutralised like text

    def _fields(self, values: Sequence[Any]) -> list[Any]:
        # Inlined for strings and numbers, the common cells, to save a call per value.
        trig = self._triggers
        cell = self._cell
        return [
            ("'" + v if v[:1] in trig else v)
            if (t := type(v)) is str
            else v
            if t is int or t is float
            else cell(v)
            for v in values
        ]

    def write_row(self, values: Sequence[Any]) -> None:
        """Write one row, values in header order."""
        self._writer.writerow(self._fields(values))
        self.rows += 1
        self._text.maybe_flush()

    def write_rows(self, rows: Iterable[Sequence[Any]]) -> None:
        """Write many rows, values in header order."""
        fields = self._fields
        writerows = self._writer.writerows
        maybe_flush = self._text.maybe_flush
        it = iter(rows)
        # Batches of rows between flush checks; a batch stays small even with large rows.
        while batch := list(islice(it, 256)):
            writerows(map(fields, batch))
            self.rows += len(batch)
            maybe_flush()

    def close(self) -> None:
        """Flush the remaining rows to ``out``, which stays open."""
        if not self._closed:
            self._closed = True
            self._text.flush()


def _json_value(value: Any) -> str:
    """One top-level JSON value: a Decimal as an exact number, NaN and infinities as null."""
    kind = type(value)
    if kind is str:
        return _encode_str(value)
    if kind is int:
        return int.__repr__(value)
    if value is None:
        return "null"
    if kind is float:
        return float.__repr__(value) if math.isfinite(value) else "null"
    if kind is bool:
        return "true" if value else "false"
    if kind is Decimal:
        return str(value) if value.is_finite() else "null"
    if kind is datetime or kind is date:
        return f'"{value.isoformat()}"'
    return _compact_json(value)


class JsonlRowWriter(_ClosingMixin):
    """JSON Lines: one compact UTF-8 object per line keyed by the header, LF line ends.

    Each line is assembled from pre-encoded keys and values encoded one by one rather than with
    one ``json.dumps`` of a dict: that is faster, and it lets a ``Decimal`` be written as an exact
    JSON number, which ``json`` cannot do.
    """

    def __init__(self, out: SupportsWriteBytes, header: Sequence[str]):
        self.rows = 0
        self._keys = [json.dumps(name, ensure_ascii=False) + ":" for name in header]
        self._text = _BufferedText(out)
        self._closed = False

    def write_row(self, values: Sequence[Any]) -> None:
        """Write one row, values in header order.

        Raises:
            ValueError: When the row does not have one value per header column.
        """
        parts = [key + _json_value(v) for key, v in zip(self._keys, values, strict=True)]
        self._text.buf.write("{" + ",".join(parts) + "}\n")
        self.rows += 1
        self._text.maybe_flush()

    def write_rows(self, rows: Iterable[Sequence[Any]]) -> None:
        """Write many rows, values in header order."""
        for values in rows:
            self.write_row(values)

    def close(self) -> None:
        """Flush the remaining rows to ``out``, which stays open."""
        if not self._closed:
            self._closed = True
            self._text.flush()


class XlsxRowWriter(_ClosingMixin):
    """XLSX: a write-only openpyxl workbook spooled to a temporary file, copied to ``out`` on close.

    Cells are typed where Excel has a type: numbers, booleans, dates. Integers of 16 digits or
    more are written as text, as Excel would round them. Characters XLSX cannot hold (control
    characters) are removed, and openpyxl cuts strings to Excel's 32,767 characters.
    """

    def __init__(
        self,
        out: SupportsWriteBytes,
        header: Sequence[str],
        *,
        neutralize_formulas: bool = True,
        sheet_name: str = "data",
    ):
        self.rows = 0
        self._out = out
        self._neutralize = neutralize_formulas
        self._workbook = Workbook(write_only=True)
        self._sheet = self._workbook.create_sheet(title=sheet_name)
        self._closed = False
        self._append([self._cell(name) for name in header])

    def _cell(self, value: Any) -> Any:
        kind = type(value)
        if kind is str:
            if self._neutralize and value and value[0] in _FORMULA_TRIGGERS:
                return "'" + value
            return value
        if kind is float or kind is bool or value is None or kind is date:
            return value
        if kind is int:
            return value if -_EXCEL_INT_LIMIT < value < _EXCEL_INT_LIMIT else str(value)
        if kind is datetime:
            if value.tzinfo is not None:
                return value.astimezone(UTC).replace(tzinfo=None)
            return value
        if isinstance(value, Decimal):
            return value if value.is_finite() else str(value)
        if isinstance(value, (dict, list, tuple)):
            return _compact_json(value)
        if isinstance(value, Enum):
            return self._cell(value.value)
        if isinstance(value, (str, UUID)):
            return self._cell(str(value))
        if isinstance(value, time):
            return value.replace(tzinfo=None)
        if isinstance(value, (int, float, date)):
            return self._cell(value)  # subclasses the fast checks above skip
        return self._cell(str(value))

    def _append(self, cells: list[Any]) -> None:
        # openpyxl's write-only sheet is unusable after it refuses a cell, so illegal characters
        # are removed first; one search over the row's strings keeps the common case cheap.
        texts = [c for c in cells if type(c) is str]
        if texts and ILLEGAL_CHARACTERS_RE.search("\n".join(texts)):
            cells = [ILLEGAL_CHARACTERS_RE.sub("", c) if type(c) is str else c for c in cells]
        self._sheet.append(cells)

    def write_row(self, values: Sequence[Any]) -> None:
        """Write one row, values in header order."""
        cell = self._cell
        self._append([cell(v) for v in values])
        self.rows += 1

    def write_rows(self, rows: Iterable[Sequence[Any]]) -> None:
        """Write many rows, values in header order."""
        for values in rows:
            self.write_row(values)

    def close(self) -> None:
        """Save the workbook and copy it to ``out`` in 64 KiB chunks; ``out`` stays open."""
        if self._closed:
            return
        self._closed = True
        with tempfile.TemporaryFile(suffix=".xlsx") as spool:
            self._workbook.save(spool)
            spool.seek(0)
            shutil.copyfileobj(spool, self._out, FLUSH_BYTES)


def open_writer(
    fmt: Literal["csv", "jsonl", "xlsx"],
    out: SupportsWriteBytes,
    header: Sequence[str],
    *,
    neutralize_formulas: bool = True,
    sheet_name: str = "data",
) -> RowWriter:
    """Open a row writer for an export file.

    Args:
        fmt: ``csv``, ``jsonl`` or ``xlsx``.
        out: The binary output stream; the writer never closes it.
        header: Column names; CSV and XLSX write them as the first row, JSONL uses them as keys.
        neutralize_formulas: Prefix formula-like strings with ``'`` (CSV and XLSX).
        sheet_name: The XLSX sheet title.

    Returns:
        The writer; call ``close()`` (or use it as a context manager) to flush.

    Raises:
        ValueError: For an unknown ``fmt``.
    """
    if fmt == "csv":
        return CsvRowWriter(out, header, neutralize_formulas=neutralize_formulas)
    if fmt == "jsonl":
        return JsonlRowWriter(out, header)
    if fmt == "xlsx":
        return XlsxRowWriter(out, header, neutralize_formulas=neutralize_formulas, sheet_name=sheet_name)
    raise ValueError(f"unknown export format {fmt!r}; expected csv, jsonl or xlsx")
