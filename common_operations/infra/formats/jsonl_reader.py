"""Streaming JSON Lines reading for bulk imports, resumable at any row's ``end_offset``.

A JSONL file has no header line: the keys of the first object are the columns, and that first
object is also row 1 (so its data offset is 0). One bad line does not fail the import: it is
yielded with a ``problem`` so that it is reported with the other row errors.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Callable, Iterator
from json.scanner import make_scanner
from typing import Any, BinaryIO

from common_operations.infra.formats.csv_reader import (
    DEFAULT_MAX_RECORD_BYTES,
    INVALID_JSON_ROW,
    NOT_AN_OBJECT,
    UNKNOWN_KEYS,
    SourceRow,
    clean_row,
)
from common_operations.infra.formats.errors import (
    EMPTY_FILE,
    EMPTY_HEADER,
    FIELD_TOO_LARGE,
    INVALID_JSON,
    FileFormatError,
)

_UTF8_BOM = codecs.BOM_UTF8
_loads = json.loads
# The C scanner behind json.loads, called directly: json.loads on bytes detects the encoding and
# checks the trailing whitespace in Python, which costs more than the parsing itself.
# (typeshed types make_scanner's argument as itself rather than as a decoder.)
_scan: Callable[[str, int], tuple[Any, int]] = make_scanner(json.JSONDecoder())  # type: ignore[arg-type]
_JSON_SPACE = " \t\r\n"


def _parse(line: bytes) -> tuple[Any, str | None]:
    """The parsed value, or ``None`` and why the line is not JSON."""
    try:
        return _loads(line), None
    except UnicodeDecodeError as err:
        return None, f"the line is not valid UTF-8 (bytes {err.object[err.start : err.start + 4]!r})"
    except ValueError as err:
        return None, str(err)


def _too_long(row_no: int, offset: int, limit: int) -> FileFormatError:
    return FileFormatError(
        FIELD_TOO_LARGE,
        f"Row {row_no} (from byte offset {offset}) is longer than {limit} bytes. Split the object or "
        "shorten its values.",
        row=row_no,
        offset=offset,
    )


def sniff_jsonl(
    stream: BinaryIO, *, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
) -> tuple[list[str], int]:
    """Read the columns of a JSONL file from its first object.

    Args:
        stream: The file from its first byte, binary and buffered.
        max_record_bytes: Longest line in bytes.

    Returns:
        The keys of the first object in order, and the data offset, always 0: the first object is
        also row 1.

    Raises:
        FileFormatError: ``EMPTY_FILE`` when there is no non-blank line, ``INVALID_JSON`` when the
            first line is not JSON or not an object, ``EMPTY_HEADER`` when it has no keys or a
            blank one, ``FIELD_TOO_LARGE`` when it is longer than ``max_record_bytes``.
    """
    pos = 0
    while line := stream.readline(max_record_bytes + 1):
        start = pos
        pos += len(line)
        if start == 0 and line.startswith(_UTF8_BOM):
            line = line[len(_UTF8_BOM) :]
        if len(line) > max_record_bytes:
            raise _too_long(1, start, max_record_bytes)
        if not line.strip():
            continue
        value, error = _parse(line)
        if error is not None:
            raise FileFormatError(
                INVALID_JSON,
                f"Row 1 (byte offset {start}) is not valid JSON: {error}. The first line gives the "
                "columns, so it must be a JSON object; each line must hold one whole object.",
                row=1,
                offset=start,
            )
        if not isinstance(value, dict):
            raise FileFormatError(
                INVALID_JSON,
                f"Row 1 (byte offset {start}) is a JSON {type(value).__name__}, not an object. Each "
                'line must be one JSON object such as {"sku": "A-1", "price": 10}.',
                row=1,
                offset=start,
            )
        header = list(value)
        if not header or any(not str(key).strip() for key in header):
            raise FileFormatError(
                EMPTY_HEADER,
                f"Row 1 (byte offset {start}) has no keys or a blank key; its keys are the columns, so "
                "give every value a non-blank key.",
                row=1,
                offset=start,
            )
        return header, 0
    raise FileFormatError(
        EMPTY_FILE, "The file is empty (no JSON object). Upload a file with one object per line."
    )


def iter_jsonl(
    stream: BinaryIO,
    *,
    header: list[str],
    offset: int,
    first_row_no: int = 1,
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
) -> Iterator[SourceRow]:
    """Yield the rows of a JSONL file from byte ``offset`` on.

    Blank lines are skipped (they still advance ``end_offset``). Row-level problems are yielded,
    not raised: ``INVALID_JSON`` (including invalid UTF-8) and ``NOT_AN_OBJECT`` with empty
    ``values``; ``UNKNOWN_KEYS`` with the values of the known keys.

    Args:
        stream: The file, binary and buffered, already positioned at byte ``offset``.
        header: From ``sniff_jsonl``.
        offset: Where ``stream`` starts: 0 first, then the ``end_offset`` of the last row handled.
        first_row_no: The row number of the first row read.
        max_record_bytes: Longest line in bytes, which bounds memory use.

    Yields:
        One ``SourceRow`` per non-blank line, values aligned with ``header`` (``None`` when missing).

    Raises:
        FileFormatError: ``FIELD_TOO_LARGE`` for a line longer than ``max_record_bytes``.
    """
    known = frozenset(header)
    pos = offset
    row_no = first_row_no
    readline = stream.readline
    limit = max_record_bytes + 1
    while line := readline(limit):
        start = pos
        pos += len(line)
        if start == 0 and line.startswith(_UTF8_BOM):
            line = line[len(_UTF8_BOM) :]
        if len(line) > max_record_bytes:
            raise _too_long(row_no, start, max_record_bytes)
        try:
            text = line.decode("utf-8").strip(_JSON_SPACE)
            obj, end = _scan(text, 0)
            if end != len(text):
                raise ValueError("extra data after the value")
        except (ValueError, UnicodeDecodeError, StopIteration):
            if not line.strip():
                continue
            _, error = _parse(line)
            yield SourceRow(
                row_no, [], pos, INVALID_JSON_ROW, f"Row {row_no} is not valid JSON: {error or 'extra data'}."
            )
            row_no += 1
            continue
        if type(obj) is not dict:
            yield SourceRow(
                row_no,
                [],
                pos,
                NOT_AN_OBJECT,
                f"Row {row_no} is a JSON {type(obj).__name__}, not an object.",
            )
        elif known.issuperset(obj):
            yield clean_row(row_no, list(map(obj.get, header)), pos)
        else:
            unknown = [key for key in obj if key not in known]
            yield SourceRow(
                row_no,
                list(map(obj.get, header)),
                pos,
                UNKNOWN_KEYS,
                f"Row {row_no} has keys that are not columns (the keys of row 1): {', '.join(unknown)}.",
            )
        row_no += 1
