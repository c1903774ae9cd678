"""Streaming readers and writers for bulk import/export files: CSV, JSON Lines and XLSX.

Readers yield ``SourceRow`` objects carrying the byte offset just after each row, so that an import
can reopen the file there and resume; writers batch output into a binary stream.
"""

from common_operations.infra.formats.csv_reader import (
    NOT_AN_OBJECT,
    RAGGED_ROW,
    UNKNOWN_KEYS,
    CsvLayout,
    SourceRow,
    iter_csv,
    normalize_encoding,
    sniff_csv,
)
from common_operations.infra.formats.errors import ERROR_CODES, FileFormatError
from common_operations.infra.formats.jsonl_reader import iter_jsonl, sniff_jsonl
from common_operations.infra.formats.writers import (
    CsvRowWriter,
    JsonlRowWriter,
    RowWriter,
    SupportsWriteBytes,
    XlsxRowWriter,
    neutralize,
    open_writer,
)
from common_operations.infra.formats.xlsx import cell_text, xlsx_to_csv

__all__ = [
    "ERROR_CODES",
    "NOT_AN_OBJECT",
    "RAGGED_ROW",
    "UNKNOWN_KEYS",
    "CsvLayout",
    "CsvRowWriter",
    "FileFormatError",
    "JsonlRowWriter",
    "RowWriter",
    "SourceRow",
    "SupportsWriteBytes",
    "XlsxRowWriter",
    "cell_text",
    "iter_csv",
    "iter_jsonl",
    "neutralize",
    "normalize_encoding",
    "open_writer",
    "sniff_csv",
    "sniff_jsonl",
    "xlsx_to_csv",
]
