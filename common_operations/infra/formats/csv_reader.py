"""Streaming CSV reading for bulk imports: layout sniffing and resumable row iteration.

The import activity reads the file from object storage as a binary stream and, after a crash,
reopens the object at the byte offset just after the last row it committed. So every row carries
its exact ``end_offset``. To know it, the binary stream is read line by line here, each line's
bytes are counted, and the decoded lines are fed to ``csv.reader``, which pulls exactly the lines of
one record (several when a quoted field holds newlines) before it yields that record.

Lines are split on the raw newline byte (0x0A), which is only sound for encodings where that byte
always means a newline: UTF-8 and the single-byte code pages. UTF-16/32 files are refused with a
hint to save them as UTF-8.
"""

from __future__ import annotations

import codecs
import csv
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from common_operations.infra.formats.errors import (
    EMPTY_FILE,
    EMPTY_HEADER,
    FIELD_TOO_LARGE,
    INVALID_ENCODING,
    MALFORMED_CSV,
    UNSUPPORTED_ENCODING,
    WRONG_DELIMITER,
    FileFormatError,
)

RAGGED_ROW = "RAGGED_ROW"
INVALID_JSON_ROW = "INVALID_JSON"
NOT_AN_OBJECT = "NOT_AN_OBJECT"
UNKNOWN_KEYS = "UNKNOWN_KEYS"

DEFAULT_MAX_FIELD_BYTES = 262_144
# One record (a row, perhaps over several lines) is held in memory whole; this bounds that memory.
# It is far above any sane row, so reaching it almost always means a quote that is never closed.
DEFAULT_MAX_RECORD_BYTES = 64 * 1024 * 1024
SAMPLE_BYTES = 64 * 1024
DELIMITER_CANDIDATES = (",", ";", "\t", "|")
# How many records past the header the delimiter detection compares column counts on.
_SNIFF_RECORDS = 20

_UTF8_BOM = codecs.BOM_UTF8
_WIDE_BOMS = (
    (codecs.BOM_UTF32_BE, "UTF-32"),
    (codecs.BOM_UTF32_LE, "UTF-32"),
    (codecs.BOM_UTF16_BE, "UTF-16"),
    (codecs.BOM_UTF16_LE, "UTF-16"),
)
_ASCII_PROBE = "\n\r,;\t|\"' azAZ09"


@dataclass(frozen=True, slots=True)
class SourceRow:
    """One data row read from an import file.

    Attributes:
        row_no: 1-based data row number (the header is row 0). Blank lines are not counted, so the
            number is stable across resumes.
        values: CSV: the fields as read (``list[str]``); JSONL: values in header order, ``None``
            for a missing key.
        end_offset: Byte offset just after this row: reopening the file there continues with the
            next row.
        problem: A row-level problem found by the reader: ``RAGGED_ROW``, ``INVALID_JSON``,
            ``NOT_AN_OBJECT`` or ``UNKNOWN_KEYS``.
        detail: Human detail for ``problem``.
    """

    row_no: int
    values: list[Any]
    end_offset: int
    problem: str | None = None
    detail: str | None = None


_new = object.__new__
_set_row_no = vars(SourceRow)["row_no"].__set__
_set_values = vars(SourceRow)["values"].__set__
_set_end_offset = vars(SourceRow)["end_offset"].__set__
_set_problem = vars(SourceRow)["problem"].__set__
_set_detail = vars(SourceRow)["detail"].__set__


def clean_row(row_no: int, values: list[Any], end_offset: int) -> SourceRow:
    """Build a ``SourceRow`` without a problem, about twice as fast as its constructor.

    A frozen dataclass's ``__init__`` goes through ``object.__setattr__`` by name for each field;
    calling the slot descriptors directly matters at a million rows per file.
    """
    row: SourceRow = _new(SourceRow)
    _set_row_no(row, row_no)
    _set_values(row, values)
    _set_end_offset(row, end_offset)
    _set_problem(row, None)
    _set_detail(row, None)
    return row


@dataclass(frozen=True, slots=True)
class CsvLayout:
    """How to read a CSV file, as found by ``sniff_csv``.

    Attributes:
        encoding: Codec name used to decode ("utf-8", "cp1252", ...); a UTF-8 BOM is not part of it.
        delimiter: The field delimiter.
        header: Column names, stripped of surrounding whitespace.
        data_offset: Byte offset of the first data row (after the BOM and the header).
    """

    encoding: str
    delimiter: str
    header: list[str]
    data_offset: int


def _ensure_csv_field_limit(limit: int) -> None:
    # csv's own limit is process-wide and defaults to 128 Ki characters; it is only raised, so
    # that this module's own byte limits (checked with better messages) are the ones that apply.
    if csv.field_size_limit() < limit:
        csv.field_size_limit(limit)


def normalize_encoding(encoding: str) -> str:
    """Return the codec name for ``encoding``, refusing codecs the line reader cannot split.

    Args:
        encoding: A codec name or alias as a user may give it ("UTF8", "latin-1", "cp1252").

    Returns:
        The canonical codec name.

    Raises:
        FileFormatError: ``UNSUPPORTED_ENCODING`` for unknown codecs and for codecs that do not
            encode ASCII as single bytes (UTF-16, UTF-32, UTF-7...).
    """
    try:
        name = codecs.lookup(encoding).name
    except LookupError:
        raise FileFormatError(
            UNSUPPORTED_ENCODING,
            f'Unknown encoding {encoding!r}. Use a standard name such as "utf-8", "cp1252" or '
            '"latin-1" in params.encoding.',
        ) from None
    if name == "utf-8-sig":
        name = "utf-8"  # the BOM is detected and skipped separately
    try:
        ascii_compatible = _ASCII_PROBE.encode(name) == _ASCII_PROBE.encode("ascii")
    except (UnicodeError, LookupError):
        ascii_compatible = False
    if not ascii_compatible:
        raise FileFormatError(
            UNSUPPORTED_ENCODING,
            f"Encoding {encoding!r} is not supported for CSV imports. Save the file as UTF-8 "
            '(in Excel: "CSV UTF-8") and upload it again.',
        )
    return name


def _encoding_error(
    err: UnicodeDecodeError,
    *,
    encoding: str,
    offset: int,
    row: int | None,
    explicit: bool,
    line: int | None = None,
) -> FileFormatError:
    bad = err.object[err.start : err.end]
    where = f"at byte offset {offset}" + ("" if row is None else f" (row {row}; the header is row 0)")
    if line is not None:
        where += f" (line {line})"
    if explicit:
        advice = f"Check params.encoding ({encoding!r}) or save the file as UTF-8 and upload it again."
    else:
        advice = (
            "If the file was saved by Excel or another Windows program, set params.encoding to "
            '"cp1252" (or "latin-1"); otherwise save it as UTF-8 and upload it again.'
        )
    return FileFormatError(
        INVALID_ENCODING,
        f"The file is not valid {encoding}: bytes {bad.hex(' ')} {where} cannot be decoded. {advice}",
        row=row,
        offset=offset,
    )


def _decode_sample(body: bytes, encoding: str, *, eof: bool, base: int, explicit: bool) -> str:
    try:
        return body.decode(encoding)
    except UnicodeDecodeError as err:
        # The sample may end in the middle of a multi-byte character; that is not an error.
        if not eof and err.end == len(body) and err.reason == "unexpected end of data":
            return body[: err.start].decode(encoding)
        # Rows are not counted yet (quoted fields may span lines), but the physical line is known.
        line = body.count(b"\n", 0, err.start) + 1
        raise _encoding_error(
            err, encoding=encoding, offset=base + err.start, row=None, explicit=explicit, line=line
        ) from None


def _column_counts(text: str, delimiter: str) -> tuple[int, float]:
    """Columns of the first record and the share of the next records with as many."""
    counts: list[int] = []
    try:
        for rec in csv.reader(io.StringIO(text, newline=""), delimiter=delimiter):
            if not rec or (len(rec) == 1 and not rec[0].strip()):
                continue
            counts.append(len(rec))
            if len(counts) > _SNIFF_RECORDS:
                break
    except csv.Error:
        pass  # the sample may end inside a quoted field; what was read is enough
    if not counts:
        return 0, 0.0
    first, rest = counts[0], counts[1:]
    ratio = sum(n == first for n in rest) / len(rest) if rest else 1.0
    return first, ratio


def _score(text: str, delimiter: str) -> tuple[bool, bool, int, float]:
    cols, ratio = _column_counts(text, delimiter)
    # Consistency first (within a ragged row or two), then more columns: a wrong candidate rarely
    # splits every line the same way, and when two both do, the finer split is the real one.
    return (cols >= 2, ratio >= 0.9, cols, ratio)


def _detect_delimiter(text: str) -> str:
    best = max(DELIMITER_CANDIDATES, key=lambda d: _score(text, d))
    return best if _score(text, best)[0] else ","


def _check_explicit_delimiter(text: str, delimiter: str) -> None:
    if len(delimiter) != 1 or delimiter in '"\r\n':
        raise FileFormatError(
            WRONG_DELIMITER,
            f"params.delimiter must be one character other than a quote or a newline, not {delimiter!r}.",
        )
    if _column_counts(text, delimiter)[0] >= 2:
        return
    for other in DELIMITER_CANDIDATES:
        if other == delimiter:
            continue
        score = _score(text, other)
        if score[0] and score[1]:
            raise FileFormatError(
                WRONG_DELIMITER,
                f"With delimiter {delimiter!r} the header has a single column, but the file seems to "
                f"use {other!r} ({score[2]} columns). Set params.delimiter to {other!r} or leave it out "
                "to detect it.",
                row=0,
            )


def _lines_after(head: bytes, stream: BinaryIO, limit: int) -> Iterator[bytes]:
    """Lines of ``head`` then of ``stream``, which is positioned just after ``head``."""
    buf = io.BytesIO(head)
    for line in iter(buf.readline, b""):
        if not line.endswith(b"\n"):
            line += stream.readline(limit)  # the sample cut this line short
        yield line
    yield from iter(lambda: stream.readline(limit), b"")


def sniff_csv(
    stream: BinaryIO,
    *,
    delimiter: str | None = None,
    encoding: str | None = None,
    max_field_bytes: int = DEFAULT_MAX_FIELD_BYTES,
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
) -> CsvLayout:
    """Find the encoding, delimiter, header and first data offset of a CSV file.

    Reads a sample from the start of the file (64 KiB, more when the first line is longer).

    Args:
        stream: The file from its first byte, opened in binary mode and buffered.
        delimiter: The delimiter to use; detected among ``, ; TAB |`` when ``None``.
        encoding: The codec to decode with; when ``None`` the file must be UTF-8 (a UTF-8 BOM
            always means UTF-8 and wins over ``encoding``).
        max_field_bytes: Largest header cell in bytes.
        max_record_bytes: Largest header record in bytes.

    Returns:
        The layout to pass to ``iter_csv``.

    Raises:
        FileFormatError: ``EMPTY_FILE``, ``UNSUPPORTED_ENCODING``, ``INVALID_ENCODING``,
            ``WRONG_DELIMITER``, ``EMPTY_HEADER``, ``MALFORMED_CSV`` or ``FIELD_TOO_LARGE``.
    """
    _ensure_csv_field_limit(max_record_bytes)
    head = stream.read(SAMPLE_BYTES)
    eof = len(head) < SAMPLE_BYTES
    for bom, name in _WIDE_BOMS:
        if head.startswith(bom):
            raise FileFormatError(
                UNSUPPORTED_ENCODING,
                f"The file is encoded as {name} (it starts with a {name} byte order mark). Save it as "
                'UTF-8 (in Excel: "CSV UTF-8") and upload it again.',
                offset=0,
            )
    bom_len = len(_UTF8_BOM) if head.startswith(_UTF8_BOM) else 0
    # Delimiter detection needs the whole first line in the sample.
    while not eof and b"\n" not in head[bom_len:].lstrip() and len(head) <= max_record_bytes:
        more = stream.read(SAMPLE_BYTES)
        eof = len(more) < SAMPLE_BYTES
        head += more

    explicit = encoding is not None and not bom_len
    enc = normalize_encoding(encoding) if encoding is not None and not bom_len else "utf-8"
    body = head[bom_len:]
    text = _decode_sample(body, enc, eof=eof, base=bom_len, explicit=explicit)
    if eof and not text.strip():
        raise FileFormatError(
            EMPTY_FILE, "The file is empty (no header and no rows). Upload a file with a header line."
        )
    if not eof and "\n" in text:
        text = text[: text.rindex("\n") + 1]  # drop the cut last line from the detection sample

    if delimiter is None:
        delim = _detect_delimiter(text)
    else:
        _check_explicit_delimiter(text, delimiter)
        delim = delimiter

    header, data_offset = _read_header(
        _lines_after(body, stream, max_record_bytes + 1),
        start=bom_len,
        encoding=enc,
        delimiter=delim,
        explicit=explicit,
        max_field_bytes=max_field_bytes,
        max_record_bytes=max_record_bytes,
    )
    return CsvLayout(encoding=enc, delimiter=delim, header=header, data_offset=data_offset)


def _read_header(
    raw_lines: Iterator[bytes],
    *,
    start: int,
    encoding: str,
    delimiter: str,
    explicit: bool,
    max_field_bytes: int,
    max_record_bytes: int,
) -> tuple[list[str], int]:
    pos = start
    rec_start = start

    def lines() -> Iterator[str]:
        nonlocal pos
        for raw in raw_lines:
            line_start = pos
            pos += len(raw)
            if pos - rec_start > max_record_bytes:
                raise FileFormatError(
                    FIELD_TOO_LARGE,
                    f"The header (from byte offset {rec_start}) is longer than {max_record_bytes} bytes; "
                    "check for a quote that is never closed.",
                    row=0,
                    offset=rec_start,
                )
            try:
                yield raw.decode(encoding)
            except UnicodeDecodeError as err:
                raise _encoding_error(
                    err, encoding=encoding, offset=line_start + err.start, row=0, explicit=explicit
                ) from None

    reader = csv.reader(lines(), delimiter=delimiter, strict=True)
    try:
        for rec in reader:
            if not rec or (len(rec) == 1 and not rec[0].strip()):
                rec_start = pos  # blank lines before the header are skipped
                continue
            header = [cell.strip() for cell in rec]
            _check_header(header, rec, encoding, max_field_bytes, rec_start)
            return header, pos
    except csv.Error as err:
        raise _malformed(err, 0, rec_start) from None
    raise FileFormatError(
        EMPTY_FILE, "The file is empty (no header and no rows). Upload a file with a header line."
    )


def _check_header(
    header: list[str], raw: list[str], encoding: str, max_field_bytes: int, offset: int
) -> None:
    for i, cell in enumerate(raw, 1):
        if len(cell) > max_field_bytes // 4 and len(cell.encode(encoding)) > max_field_bytes:
            raise FileFormatError(
                FIELD_TOO_LARGE,
                f"Header column {i} is longer than {max_field_bytes} bytes; check for a quote that is "
                "never closed.",
                row=0,
                offset=offset,
            )
    blank = [str(i) for i, name in enumerate(header, 1) if not name]
    if blank:
        which = "all columns" if len(blank) == len(header) else "column(s) " + ", ".join(blank)
        raise FileFormatError(
            EMPTY_HEADER,
            f"The header row (byte offset {offset}) has no name for {which}. Give every column a name "
            "(a delimiter at the end of the header line also makes a blank column).",
            row=0,
            offset=offset,
        )


def iter_csv(
    stream: BinaryIO,
    layout: CsvLayout,
    *,
    offset: int,
    first_row_no: int = 1,
    max_field_bytes: int = DEFAULT_MAX_FIELD_BYTES,
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
) -> Iterator[SourceRow]:
    """Yield the data rows of a CSV file from byte ``offset`` on.

    Blank lines are skipped (they still advance ``end_offset``). A row whose field count differs
    from the header's is yielded with ``problem="RAGGED_ROW"``.

    Args:
        stream: The file, buffered (``io.BufferedReader``, ``io.BytesIO``...; a raw stream makes
            ``readline`` slow) and already positioned at byte ``offset``.
        layout: From ``sniff_csv``.
        offset: Where ``stream`` starts: ``layout.data_offset`` first, then the ``end_offset`` of
            the last row handled.
        first_row_no: The row number of the first row read (last handled row's ``row_no`` + 1).
        max_field_bytes: Largest field in bytes.
        max_record_bytes: Largest record in bytes, which bounds memory use.

    Yields:
        One ``SourceRow`` per record, values as ``list[str]``.

    Raises:
        FileFormatError: ``INVALID_ENCODING``, ``FIELD_TOO_LARGE`` or ``MALFORMED_CSV`` with the row
            number and byte offset.
    """
    _ensure_csv_field_limit(max_record_bytes)
    encoding = layout.encoding
    header = layout.header
    ncols = len(header)
    pos = offset
    rec_start = offset
    row_no = first_row_no
    readline: Callable[[int], bytes] = stream.readline
    limit = max_record_bytes + 1

    def lines() -> Iterator[str]:
        nonlocal pos
        while raw := readline(limit):
            line_start = pos
            pos += len(raw)
            if pos - rec_start > max_record_bytes:
                raise FileFormatError(
                    FIELD_TOO_LARGE,
                    f"Row {row_no} (from byte offset {rec_start}) is longer than {max_record_bytes} bytes. "
                    "A quote that is never closed makes the rest of the file one field: check the "
                    "quotes of that row.",
                    row=row_no,
                    offset=rec_start,
                )
            try:
                text = raw.decode(encoding)
            except UnicodeDecodeError as err:
                raise _encoding_error(
                    err,
                    encoding=encoding,
                    offset=line_start + err.start,
                    row=row_no,
                    explicit=encoding != "utf-8",
                ) from None
            yield text

    reader = csv.reader(lines(), delimiter=layout.delimiter, strict=True)
    try:
        for rec in reader:
            end = pos
            if not rec:
                rec_start = end
                continue
            if end - rec_start > max_field_bytes:
                _check_fields(rec, header, encoding, max_field_bytes, row_no, rec_start)
            if len(rec) == ncols:
                yield clean_row(row_no, rec, end)
            else:
                yield SourceRow(
                    row_no,
                    rec,
                    end,
                    RAGGED_ROW,
                    f"Row {row_no} has {len(rec)} fields but the header has {ncols}.",
                )
            row_no += 1
            rec_start = end
    except csv.Error as err:
        raise _malformed(err, row_no, rec_start) from None


def _malformed(err: csv.Error, row_no: int, offset: int) -> FileFormatError:
    text = str(err)
    # csv's own wording speaks to programmers ("open the file in universal-newline mode").
    if "new-line character" in text:
        what = (
            "a line break inside an unquoted field. The file seems to use old Mac line endings "
            "(CR only): save it with CRLF or LF line endings."
        )
    elif "NUL" in text:
        what = "a NUL byte. The file may be binary or UTF-16: save it as CSV UTF-8."
    elif "unexpected end of data" in text:
        what = "a quoted field that is never closed before the end of the file. Check the quotes of that row."
    else:
        what = f"{text}. Check the quotes of that row: a closing quote must be followed by a delimiter."
    who = "The header" if row_no == 0 else f"Row {row_no}"
    return FileFormatError(
        MALFORMED_CSV,
        f"{who} (from byte offset {offset}) is not valid CSV: {what}",
        row=row_no,
        offset=offset,
    )


def _check_fields(
    rec: list[str], header: list[str], encoding: str, max_field_bytes: int, row_no: int, offset: int
) -> None:
    for i, field in enumerate(rec):
        if len(field) * 4 > max_field_bytes and len(field.encode(encoding)) > max_field_bytes:
            name = f" ({header[i]!r})" if i < len(header) else ""
            raise FileFormatError(
                FIELD_TOO_LARGE,
                f"Row {row_no} (from byte offset {offset}): field {i + 1}{name} is "
                f"{len(field.encode(encoding))} bytes, over the limit of {max_field_bytes} bytes. Shorten "
                "the value; if a quote is never closed, the following lines are read as part of it.",
                row=row_no,
                offset=offset,
            )
