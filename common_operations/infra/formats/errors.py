"""The one error type the bulk file readers raise, with a stable code per failure kind.

An import reports ``code`` to machines (the API, metrics) and ``message`` to the person who uploaded
the file, so the message names where the problem is (row number, byte offset) and what to change.
"""

from __future__ import annotations

from typing import Any

EMPTY_FILE = "EMPTY_FILE"
NO_ROWS = "NO_ROWS"
INVALID_ENCODING = "INVALID_ENCODING"
UNSUPPORTED_ENCODING = "UNSUPPORTED_ENCODING"
FIELD_TOO_LARGE = "FIELD_TOO_LARGE"
MALFORMED_CSV = "MALFORMED_CSV"
WRONG_DELIMITER = "WRONG_DELIMITER"
INVALID_JSON = "INVALID_JSON"
NOT_A_WORKBOOK = "NOT_A_WORKBOOK"
ZIP_BOMB = "ZIP_BOMB"
SHEET_NOT_FOUND = "SHEET_NOT_FOUND"
EMPTY_HEADER = "EMPTY_HEADER"

ERROR_CODES = frozenset(
    {
        EMPTY_FILE,
        NO_ROWS,
        INVALID_ENCODING,
        UNSUPPORTED_ENCODING,
        FIELD_TOO_LARGE,
        MALFORMED_CSV,
        WRONG_DELIMITER,
        INVALID_JSON,
        NOT_A_WORKBOOK,
        ZIP_BOMB,
        SHEET_NOT_FOUND,
        EMPTY_HEADER,
    }
)


class FileFormatError(Exception):
    """A file that cannot be read as a whole; the import fails with ``code`` and ``message``.

    Row-level problems (a ragged CSV row, one bad JSON line) are not raised: the readers yield them
    on the row so that the rest of the file is still imported.

    Attributes:
        code: One of the stable codes in ``ERROR_CODES``.
        message: What is wrong, where, and what to do about it.
        row: 1-based data row number (0 is the header) when the problem is in a known row.
        offset: Byte offset in the file when known.
    """

    def __init__(self, code: str, message: str, *, row: int | None = None, offset: int | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.row = row
        self.offset = offset

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only arguments are lost by the default pickling, and Temporal activities may
        # pickle errors across process boundaries.
        return (_rebuild, (self.code, self.message, self.row, self.offset))


def _rebuild(code: str, message: str, row: int | None, offset: int | None) -> FileFormatError:
    return FileFormatError(code, message, row=row, offset=offset)
