"""Converting one sheet of an uploaded XLSX workbook into a UTF-8 CSV for the import.

The import reads CSV with resumable byte offsets; a workbook has no such offsets, so it is first
converted, in constant memory, into a CSV (comma, header first, CRLF) that the CSV reader then
imports like any other.

A workbook is a zip archive, and a small upload can expand into gigabytes: the archive's declared
sizes are checked before openpyxl opens it (``zipfile`` never inflates a member past its declared
size, so those sizes hold while reading), and the CSV written is capped too.
"""

from __future__ import annotations

import csv
import io
import math
import zipfile
from collections.abc import Iterable
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any, BinaryIO

from openpyxl import load_workbook
from openpyxl.worksheet._read_only import ReadOnlyWorksheet

from common_operations.infra.formats.errors import NOT_A_WORKBOOK, SHEET_NOT_FOUND, ZIP_BOMB, FileFormatError

_FLUSH_CHARS = 64 * 1024
# Small members compress far better than max_ratio when they repeat one value (an empty styles
# part, a sheet of identical rows); only large ones can expand into a bomb.
_RATIO_MIN_BYTES = 1024 * 1024
_NOT_A_WORKBOOK_HINT = (
    "Upload an .xlsx workbook saved by Excel, LibreOffice or Google Sheets (an old .xls file or a "
    "password-protected workbook must be saved again as .xlsx), or a CSV file."
)


def _check_archive(src: Path, max_uncompressed_bytes: int, max_ratio: int) -> None:
    try:
        with zipfile.ZipFile(src) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as err:
        raise FileFormatError(
            NOT_A_WORKBOOK,
            f"The file is not an XLSX workbook (not a zip archive: {err}). {_NOT_A_WORKBOOK_HINT}",
        ) from None
    if not any(info.filename == "xl/workbook.xml" for info in infos):
        raise FileFormatError(
            NOT_A_WORKBOOK,
            "The file is not an XLSX workbook (a zip archive without xl/workbook.xml). "
            + _NOT_A_WORKBOOK_HINT,
        )
    total = sum(info.file_size for info in infos)
    if total > max_uncompressed_bytes:
        raise FileFormatError(
            ZIP_BOMB,
            f"The workbook expands to {total} bytes, over the limit of {max_uncompressed_bytes}. Split it "
            "into smaller files or upload the sheet as CSV.",
        )
    for info in infos:
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size > _RATIO_MIN_BYTES and ratio > max_ratio:
            raise FileFormatError(
                ZIP_BOMB,
                f"The workbook part {info.filename} expands {ratio:.0f} times (limit {max_ratio}): it looks "
                "like a zip bomb, not a spreadsheet. Save the sheet as CSV and upload that instead.",
            )


def cell_text(value: Any) -> str:
    """Render a cell value as CSV text.

    ``None`` is empty, booleans are ``true``/``false``, integral floats lose their ``.0``, other
    floats use the shortest repr that round-trips, dates are ``YYYY-MM-DD`` and datetimes ISO 8601.
    A datetime at exactly midnight is written as a date: Excel stores dates as datetimes, and
    openpyxl returns a date cell as midnight of that day.

    Args:
        value: A value as openpyxl returns it with ``data_only=True``.

    Returns:
        The text for the CSV field.
    """
    if value is None:
        return ""
    kind = type(value)
    if kind is str:
        return value  # type: ignore[no-any-return]
    if kind is bool:
        return "true" if value else "false"
    if kind is int:
        return str(value)
    if kind is float:
        if math.isfinite(value) and value.is_integer() and abs(value) < 2**53:
            return str(int(value))
        return repr(value)
    if kind is datetime:
        if value.hour == value.minute == value.second == value.microsecond == 0 and value.tzinfo is None:
            return value.date().isoformat()  # type: ignore[no-any-return]
        return value.isoformat()  # type: ignore[no-any-return]
    if isinstance(value, (date, time)):
        return value.isoformat()
    if isinstance(value, timedelta):
        return str(value.total_seconds())
    return str(value)


def _select_sheet(names: list[str], sheet: str | int | None) -> str:
    listed = ", ".join(repr(name) for name in names)
    if sheet is None or sheet == 0:
        if names:
            return names[0]
    elif isinstance(sheet, int):
        if 0 <= sheet < len(names):
            return names[sheet]
        raise FileFormatError(
            SHEET_NOT_FOUND,
            f"The workbook has no sheet at index {sheet} (0-based); it has {len(names)}: {listed}. Set "
            "params.sheet to one of those names or indexes.",
        )
    elif sheet in names:
        return sheet
    raise FileFormatError(
        SHEET_NOT_FOUND,
        f"The workbook has no sheet named {sheet!r}; its sheets are: {listed or 'none'}. Set params.sheet "
        "to one of those names or a 0-based index.",
    )


def xlsx_to_csv(
    src: Path,
    out: BinaryIO,
    *,
    sheet: str | int | None = None,
    max_uncompressed_bytes: int = 1 << 30,
    max_ratio: int = 200,
) -> int:
    """Convert one sheet of an XLSX workbook into a UTF-8 CSV, header first.

    Leading fully empty rows are skipped, the first remaining row is the header, and trailing
    fully empty rows are dropped. Rows are padded with empty fields to the header's width; cells
    past it are kept only when not empty, so that the CSV reader reports such rows as ragged.
    The CSV uses commas, RFC 4180 quoting and CRLF line ends.

    Args:
        src: The workbook file.
        out: Where the CSV is written.
        sheet: Sheet name or 0-based index; the first sheet when ``None``.
        max_uncompressed_bytes: Limit on the archive's expanded size, and on the CSV written.
        max_ratio: Limit on a large member's compression ratio.

    Returns:
        The number of data rows written (the header not counted).

    Raises:
        FileFormatError: ``NOT_A_WORKBOOK``, ``ZIP_BOMB`` or ``SHEET_NOT_FOUND``.
    """
    _check_archive(src, max_uncompressed_bytes, max_ratio)
    try:
        workbook = load_workbook(src, read_only=True, data_only=True)
    except Exception as err:  # openpyxl raises many kinds on a damaged workbook
        raise FileFormatError(
            NOT_A_WORKBOOK, f"The file is not a readable XLSX workbook ({err}). {_NOT_A_WORKBOOK_HINT}"
        ) from err
    try:
        name = _select_sheet(list(workbook.sheetnames), sheet)
        worksheet = workbook[name]
        if not isinstance(worksheet, ReadOnlyWorksheet):
            raise FileFormatError(
                SHEET_NOT_FOUND, f"Sheet {name!r} is a chart sheet, not a table. Choose another sheet."
            )
        # The stored dimensions are often wrong (some writers never update them) and would cut rows.
        worksheet.reset_dimensions()
        try:
            return _write_rows(worksheet.iter_rows(values_only=True), out, max_uncompressed_bytes)
        except FileFormatError:
            raise
        except Exception as err:  # a damaged sheet part, or a member larger than its declared size
            raise FileFormatError(
                NOT_A_WORKBOOK,
                f"Sheet {name!r} of the workbook cannot be read ({err}). {_NOT_A_WORKBOOK_HINT}",
            ) from err
    finally:
        workbook.close()


def _write_rows(rows: Iterable[tuple[Any, ...]], out: BinaryIO, max_bytes: int) -> int:
    buf = io.StringIO(newline="")
    writer = csv.writer(buf, lineterminator="\r\n")
    written = 0
    data_rows = 0
    width = 0
    pending_blank = 0  # empty rows are held back until a non-empty one shows they are not trailing
    header_done = False
    for raw in rows:
        cells = [cell_text(value) for value in raw]
        while cells and not cells[-1]:
            cells.pop()
        if not cells:
            if header_done:
                pending_blank += 1
            continue
        if not header_done:
            width = len(cells)
            header_done = True
        else:
            if len(cells) < width:
                cells.extend([""] * (width - len(cells)))
            if pending_blank:
                writer.writerows([[""] * width] * pending_blank)
                data_rows += pending_blank
                pending_blank = 0
            data_rows += 1
        writer.writerow(cells)
        if buf.tell() >= _FLUSH_CHARS:
            written += _flush(buf, out)
            if written > max_bytes:
                raise FileFormatError(
                    ZIP_BOMB,
                    f"The sheet expands to more than {max_bytes} bytes of CSV. Split it into smaller files.",
                )
    _flush(buf, out)
    return data_rows


def _flush(buf: io.StringIO, out: BinaryIO) -> int:
    data = buf.getvalue().encode("utf-8")
    buf.seek(0)
    buf.truncate()
    if data:
        out.write(data)
    return len(data)
