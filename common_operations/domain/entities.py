"""Entity declarations, row validation/conversion for imports, and export filters.

Pure: no I/O. An :class:`EntitySpec` is loaded once at start-up (see
:mod:`common_operations.infra.entity_config`); a :class:`RowConverter` is built per import file from
the file's header and converts each row into a tuple of typed values, or raises :class:`RowInvalid`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any, Literal

from common_operations.domain.errors import DomainError, ErrorKind, quoted

IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]*")
# A table may be schema-qualified (``schema.table``); each part is a plain identifier.
TABLE_NAME = re.compile(r"[a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*)?")

BIGINT_MIN = -(2**63)
BIGINT_MAX = 2**63 - 1
# Postgres ``numeric`` holds up to 131072 digits before the point and 16383 after it.
_NUMERIC_MAX_ADJUSTED = 131071
_NUMERIC_MIN_EXPONENT = -16383

_BOOLS = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}
_SEPARATORS = re.compile(r"[\s_\-]+")

Rejection = tuple[int, str, str | None, str]
"""A rejected row: (row number, code, field or None, message)."""

ImportMode = Literal["upsert", "insert", "update"]


class FieldType(StrEnum):
    """The type of a declared field."""

    STRING = "string"
    INT = "int"
    DECIMAL = "decimal"
    BOOL = "bool"
    DATE = "date"
    DATETIME = "datetime"
    ENUM = "enum"
    JSON = "json"


_ORDERED_TYPES = frozenset({FieldType.INT, FieldType.DECIMAL, FieldType.DATE, FieldType.DATETIME})


def normalize_name(name: str) -> str:
    """A header cell or field name as matched: case-insensitive, ``_``/``-``/spaces alike."""
    return _SEPARATORS.sub(" ", name.strip().lower()).strip()


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One declared field of an entity."""

    name: str
    type: FieldType
    required: bool = False
    unique: bool = False
    key: bool = False
    min_length: int | None = None
    max_length: int | None = None
    minimum: Decimal | None = None
    maximum: Decimal | None = None
    pattern: str | None = None
    values: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    filterable: bool = False
    column: str = ""
    description: str = ""

    def __post_init__(self) -> None:
        if not self.column:
            # Frozen: the default column name is filled in once, here.
            object.__setattr__(self, "column", self.name)

    def validate(self) -> None:
        """Check the declaration on its own.

        Raises:
            ValueError: a rule does not fit the type, or a name is not a plain identifier.
        """
        declared: object = self.type
        if not isinstance(declared, FieldType):
            allowed = ", ".join(t.value for t in FieldType)
            raise ValueError(f"field {self.name!r}: unknown type {self.type!r}; allowed: {allowed}")
        if not IDENTIFIER.fullmatch(self.name):
            raise ValueError(f"field {self.name!r}: name must match {IDENTIFIER.pattern}")
        if not IDENTIFIER.fullmatch(self.column):
            raise ValueError(f"field {self.name!r}: column {self.column!r} must match {IDENTIFIER.pattern}")
        t = self.type
        if t is FieldType.ENUM and not self.values:
            raise ValueError(f"field {self.name!r}: an enum needs `values`")
        if self.values and t is not FieldType.ENUM:
            raise ValueError(f"field {self.name!r}: `values` is for enum fields only")
        if len(set(self.values)) != len(self.values):
            raise ValueError(f"field {self.name!r}: enum `values` repeat")
        if (self.min_length is not None or self.max_length is not None) and t is not FieldType.STRING:
            raise ValueError(f"field {self.name!r}: min_length/max_length are for string fields only")
        if self.min_length is not None and self.max_length is not None and self.min_length > self.max_length:
            raise ValueError(f"field {self.name!r}: min_length is above max_length")
        if (self.minimum is not None or self.maximum is not None) and t not in (
            FieldType.INT,
            FieldType.DECIMAL,
        ):
            raise ValueError(f"field {self.name!r}: minimum/maximum are for int and decimal fields only")
        if self.minimum is not None and self.maximum is not None and self.minimum > self.maximum:
            raise ValueError(f"field {self.name!r}: minimum is above maximum")
        if self.pattern is not None:
            if t is not FieldType.STRING:
                raise ValueError(f"field {self.name!r}: pattern is for string fields only")
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(f"field {self.name!r}: invalid pattern {self.pattern!r}: {exc}") from None
        if self.key and not self.required:
            raise ValueError(f"field {self.name!r}: a key field must be `required: true`")
        if t is FieldType.JSON and (self.key or self.unique or self.filterable):
            raise ValueError(f"field {self.name!r}: a json field cannot be key, unique or filterable")


SinkKind = Literal["postgres", "http", "temporal"]


@dataclass(frozen=True, slots=True)
class SinkSpec:
    """Where an entity's imports are written and its exports read."""

    kind: SinkKind = "postgres"
    database: str | None = None
    table: str | None = None
    url: str | None = None
    export_url: str | None = None
    batch_size: int | None = None
    timeout: float = 30.0
    task_queue: str | None = None
    activity: str | None = None
    # postgres: what an export reads instead of the whole table, a SELECT of the entity's columns
    # (e.g. a join or a view-like filter). It comes from configuration, never from a caller; the
    # caller's filters are applied on top of it as bound parameters.
    export_query: str | None = None

    def validate(self) -> None:
        """Check that the sink names what its kind needs.

        Raises:
            ValueError: a needed setting is missing or malformed.
        """
        if self.kind == "postgres":
            if not self.database:
                raise ValueError("sink: a postgres sink needs `database`")
            if not self.table or not TABLE_NAME.fullmatch(self.table):
                raise ValueError(f"sink: `table` {self.table!r} must match {TABLE_NAME.pattern}")
            if self.export_query is not None and not self.export_query.lstrip().lower().startswith(
                ("select", "with")
            ):
                raise ValueError("sink: `export_query` must be a SELECT (or WITH ... SELECT) query")
        elif self.kind == "http":
            if not self.url:
                raise ValueError("sink: an http sink needs `url`")
        elif self.kind == "temporal":
            if not (self.task_queue and self.activity):
                raise ValueError("sink: a temporal sink needs `task_queue` and `activity`")
        else:
            raise ValueError(f"sink: unknown kind {self.kind!r}; allowed: postgres, http, temporal")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError("sink: `batch_size` must be at least 1")
        if not self.timeout > 0:
            raise ValueError("sink: `timeout` must be positive")


@dataclass(frozen=True, slots=True)
class EntitySpec:
    """A declared entity: its fields (in declaration order) and its sink."""

    name: str
    fields: tuple[FieldSpec, ...]
    sink: SinkSpec

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check the whole declaration.

        Raises:
            ValueError: the message names the offending field.
        """
        if not IDENTIFIER.fullmatch(self.name):
            raise ValueError(f"entity name {self.name!r} must match {IDENTIFIER.pattern}")
        if not self.fields:
            raise ValueError("no fields declared")
        seen: dict[str, str] = {}
        columns: set[str] = set()
        for f in self.fields:
            f.validate()
            for label in (f.name, *f.aliases):
                norm = normalize_name(label)
                if not norm:
                    raise ValueError(f"field {f.name!r}: empty alias")
                if norm in seen and seen[norm] != f.name:
                    raise ValueError(
                        f"field {f.name!r}: name or alias {label!r} clashes with field {seen[norm]!r}"
                    )
                seen[norm] = f.name
            if f.column in columns:
                raise ValueError(f"field {f.name!r}: column {f.column!r} is used twice")
            columns.add(f.column)
        if not self.key_fields:
            raise ValueError("at least one field must be `key: true`")
        self.sink.validate()

    @property
    def key_fields(self) -> tuple[FieldSpec, ...]:
        """The fields forming the key, in declaration order."""
        return tuple(f for f in self.fields if f.key)

    @property
    def filterable_fields(self) -> tuple[FieldSpec, ...]:
        """The fields exports may filter on."""
        return tuple(f for f in self.fields if f.filterable)

    def field(self, name: str) -> FieldSpec | None:
        """The field called ``name`` (exact name), if declared."""
        for f in self.fields:
            if f.name == name:
                return f
        return None


class HeaderInvalid(DomainError):
    """An import file's header does not fit the entity (refused before any row is read)."""

    code = "HEADER_INVALID"
    kind = ErrorKind.INVALID


class InvalidFilter(DomainError):
    """An export filter names an unknown or non-filterable field, or has a bad value/operator."""

    code = "INVALID_FILTER"
    kind = ErrorKind.INVALID


class RowInvalid(Exception):
    """One row cannot be converted; expected and per row, so not a :class:`DomainError`."""

    def __init__(self, code: str, field: str | None, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.field = field
        self.message = message


Parser = Callable[[Any], Any]


def _fail(code: str, f: FieldSpec, message: str) -> RowInvalid:
    return RowInvalid(code, f.name, f"{f.name}: {message}")


def _reject_constant(text: str) -> Any:
    # Postgres jsonb has no NaN or Infinity.
    raise ValueError(f"{text} is not allowed")


def _type_parser(f: FieldSpec) -> Parser:
    """A parser of a non-empty value into the field's type, without range/length/pattern rules."""
    t = f.type
    if t is FieldType.STRING:

        def parse_string(v: Any) -> Any:
            if v.__class__ is not str:
                if isinstance(v, bool) or not isinstance(v, int | float | Decimal):
                    raise _fail("INVALID_STRING", f, f"expected text, got {quoted(v)}")
                v = str(v)
            if "\x00" in v:
                raise _fail("INVALID_STRING", f, "text contains a NUL character")
            return v

        return parse_string

    if t is FieldType.INT:

        def parse_int(v: Any) -> Any:
            if v.__class__ is str:
                # int() alone also takes "1_000" and non-ASCII digits; it strips whitespace itself.
                if len(v) > 40 or "_" in v or not v.isascii():
                    raise _fail("INVALID_INT", f, f"not an integer: {quoted(v)}")
                try:
                    n = int(v)
                except ValueError:
                    raise _fail("INVALID_INT", f, f"not an integer: {quoted(v)}") from None
            elif v.__class__ is int:
                n = v
            elif (v.__class__ is float and math.isfinite(v) and v.is_integer()) or (
                isinstance(v, Decimal) and v.is_finite() and v == v.to_integral_value()
            ):
                n = int(v)
            else:
                raise _fail("INVALID_INT", f, f"not an integer: {quoted(v)}")
            if n < BIGINT_MIN or n > BIGINT_MAX:
                raise _fail("INVALID_INT", f, f"{n} is out of the 64-bit integer range")
            return n

        return parse_int

    if t is FieldType.DECIMAL:

        def parse_decimal(v: Any) -> Any:
            cls = v.__class__
            if cls is str:
                # Decimal() alone also takes "1_000" and non-ASCII digits; NaN/Infinity are refused below.
                if "_" in v or not v.isascii():
                    raise _fail("INVALID_DECIMAL", f, f"not a decimal number: {quoted(v)}")
                try:
                    d = Decimal(v)
                except ArithmeticError:
                    raise _fail("INVALID_DECIMAL", f, f"not a decimal number: {quoted(v)}") from None
                if not d.is_finite():
                    raise _fail("INVALID_DECIMAL", f, f"not a finite number: {quoted(v)}")
                # Only an exponent or very long text can leave the range Postgres numeric stores.
                if len(v) < 40 and "e" not in v and "E" not in v:
                    return d
            elif cls is int:
                d = Decimal(v)
            elif cls is float:
                if not math.isfinite(v):
                    raise _fail("INVALID_DECIMAL", f, f"not a finite number: {v!r}")
                d = Decimal(repr(v))  # the shortest text of the float, not its binary expansion
            elif cls is Decimal:
                if not v.is_finite():
                    raise _fail("INVALID_DECIMAL", f, f"not a finite number: {v!r}")
                d = v
            else:
                raise _fail("INVALID_DECIMAL", f, f"not a decimal number: {quoted(v)}")
            if d.adjusted() > _NUMERIC_MAX_ADJUSTED or d.as_tuple().exponent < _NUMERIC_MIN_EXPONENT:  # type: ignore[operator]
                raise _fail("INVALID_DECIMAL", f, "number is out of the storable range")
            return d

        return parse_decimal

    if t is FieldType.BOOL:

        def parse_bool(v: Any) -> Any:
            cls = v.__class__
            if cls is bool:
                return v
            if cls is str:
                b = _BOOLS.get(v.strip().lower())
                if b is not None:
                    return b
            elif cls is int and v in (0, 1):
                return v == 1
            raise _fail("INVALID_BOOL", f, f"expected true/false/1/0/yes/no, got {quoted(v)}")

        return parse_bool

    if t is FieldType.DATE:

        def parse_date(v: Any) -> Any:
            if v.__class__ is str:
                try:
                    return date.fromisoformat(v.strip())
                except ValueError:
                    pass
            elif v.__class__ is date:
                return v
            raise _fail("INVALID_DATE", f, f"expected an ISO 8601 date (YYYY-MM-DD), got {quoted(v)}")

        return parse_date

    if t is FieldType.DATETIME:

        def parse_datetime(v: Any) -> Any:
            if v.__class__ is str:
                try:
                    d = datetime.fromisoformat(v.strip())
                except ValueError:
                    raise _fail(
                        "INVALID_DATETIME", f, f"expected an ISO 8601 date-time, got {quoted(v)}"
                    ) from None
            elif isinstance(v, datetime):
                d = v
            else:
                raise _fail("INVALID_DATETIME", f, f"expected an ISO 8601 date-time, got {quoted(v)}")
            # A naive time is read as UTC, so the same text always names the same instant.
            return d.replace(tzinfo=UTC) if d.tzinfo is None else d.astimezone(UTC)

        return parse_datetime

    if t is FieldType.ENUM:
        exact = frozenset(f.values)
        folded = {value.lower(): value for value in f.values}
        allowed = ", ".join(f.values)

        def parse_enum(v: Any) -> Any:
            if v.__class__ is str:
                if v in exact:
                    return v
                canonical = folded.get(v.strip().lower())
                if canonical is not None:
                    return canonical
            raise _fail("NOT_IN_ENUM", f, f"{quoted(v)} is not one of: {allowed}")

        return parse_enum

    # One decoder per field: json.loads with options would build a new decoder for every value.
    decode = json.JSONDecoder(parse_constant=_reject_constant).decode

    def parse_json(v: Any) -> Any:
        # Text (a CSV cell, or a string in JSONL) is JSON to be parsed; other values are the document.
        # Postgres jsonb cannot hold the NUL character, escaped or not.
        if v.__class__ is str:
            if "\\u0000" in v or "\x00" in v:
                raise _fail("INVALID_JSON", f, "JSON contains a NUL character")
            try:
                v = decode(v)
            except ValueError as exc:
                raise _fail("INVALID_JSON", f, f"not valid JSON: {exc}") from None
        else:
            try:
                text = json.dumps(v, allow_nan=False)
            except (TypeError, ValueError) as exc:
                raise _fail("INVALID_JSON", f, f"not a JSON value: {exc}") from None
            if "\\u0000" in text:
                raise _fail("INVALID_JSON", f, "JSON contains a NUL character")
        if v is None and f.required:
            raise RowInvalid("REQUIRED", f.name, f"{f.name}: a value is required (got JSON null)")
        return v

    return parse_json


def _rules(f: FieldSpec, parse: Parser) -> Parser:
    """``parse`` followed by the field's length, range and pattern rules (only those declared)."""
    t = f.type
    if t is FieldType.STRING and (
        f.min_length is not None or f.max_length is not None or f.pattern is not None
    ):
        lo = f.min_length
        hi = f.max_length
        regex = re.compile(f.pattern) if f.pattern is not None else None

        def check_string(v: Any) -> Any:
            s = parse(v)
            n = len(s)
            if lo is not None and n < lo:
                raise _fail("TOO_SHORT", f, f"{n} characters; at least {lo} needed")
            if hi is not None and n > hi:
                raise _fail("TOO_LONG", f, f"{n} characters; at most {hi} allowed")
            if regex is not None and not regex.fullmatch(s):
                raise _fail("PATTERN_MISMATCH", f, f"{quoted(s)} does not match {f.pattern}")
            return s

        return check_string
    if t in (FieldType.INT, FieldType.DECIMAL) and (f.minimum is not None or f.maximum is not None):
        low = f.minimum
        high = f.maximum

        def check_number(v: Any) -> Any:
            n = parse(v)
            if low is not None and n < low:
                raise _fail("BELOW_MINIMUM", f, f"{n} is below the minimum {low}")
            if high is not None and n > high:
                raise _fail("ABOVE_MAXIMUM", f, f"{n} is above the maximum {high}")
            return n

        return check_number
    return parse


def field_parser(f: FieldSpec, *, rules: bool = True, nullable: bool | None = None) -> Parser:
    """A closure converting one raw value (CSV text or JSON value) of ``f``; built once per file.

    ``None`` and ``""`` are null: refused with ``REQUIRED`` unless ``nullable`` (default: the field is
    not required). ``rules`` False skips length/range/pattern rules (export filters need none).
    """
    parse = _type_parser(f)
    if rules:
        parse = _rules(f, parse)
    allow_null = (not f.required) if nullable is None else nullable
    name = f.name

    def convert(v: Any) -> Any:
        if v is None or v == "":
            if allow_null:
                return None
            raise RowInvalid("REQUIRED", name, f"{name}: a value is required")
        return parse(v)

    return convert


class RowConverter:
    """Maps an import file's header onto an entity and converts its rows.

    ``fields`` are the declared fields present in the header, in declaration order; ``convert``
    returns values in that order.
    """

    def __init__(self, entity: EntitySpec, header: Sequence[str], *, partial: bool = False) -> None:
        """Match ``header`` against the entity.

        Args:
            entity: the declaration.
            header: the file's column names (CSV header row, or the keys of the first JSONL object).
            partial: only key fields must be present (an update of some columns); otherwise every
                required field must be.

        Raises:
            HeaderInvalid: unknown, missing required or duplicate columns (all of them named).
        """
        self.entity = entity
        self.header = tuple(header)
        labels: dict[str, FieldSpec] = {}
        for f in entity.fields:
            for label in (f.name, *f.aliases):
                labels[normalize_name(label)] = f
        unknown: list[str] = []
        duplicate: list[str] = []
        problems: list[str] = []
        duplicates: list[str] = []
        position: dict[str, int] = {}
        for index, cell in enumerate(self.header):
            cell_text = cell if isinstance(cell, str) else str(cell)
            matched = labels.get(normalize_name(cell_text))
            if matched is None:
                unknown.append(cell_text)
                problems.append(f"unknown column {quoted(cell_text)} (column {index + 1})")
            elif matched.name in position:
                duplicate.append(cell_text)
                duplicates.append(
                    f"duplicate column {quoted(cell_text)} (column {index + 1}): field {matched.name!r} "
                    f"is already given by column {position[matched.name] + 1}"
                )
            else:
                position[matched.name] = index
        if unknown:
            allowed = ", ".join(
                f.name + (f" ({', '.join(f.aliases)})" if f.aliases else "") for f in entity.fields
            )
            problems.append(f"allowed: {allowed}")
        problems.extend(duplicates)
        needed = [f for f in entity.fields if (f.key if partial else f.required)]
        missing = [f.name for f in needed if f.name not in position]
        problems.extend(f"missing required column {name!r}" for name in missing)
        if problems:
            raise HeaderInvalid("; ".join(problems), unknown=unknown, missing=missing, duplicate=duplicate)
        self.fields: tuple[FieldSpec, ...] = tuple(f for f in entity.fields if f.name in position)
        self._width = len(self.header)
        self._positions = tuple(position[f.name] for f in self.fields)
        self._parsers = tuple(field_parser(f) for f in self.fields)
        # The common case, header in declaration order, zips values and parsers without indexing.
        self._in_order = self._positions == tuple(range(self._width))
        self._plan = tuple(zip(self._positions, self._parsers, strict=True))

    def convert(self, values: Sequence[Any]) -> tuple[Any, ...]:
        """The typed values of one row, in ``fields`` order.

        Raises:
            RowInvalid: the first problem of the row (code, field, message).
        """
        if len(values) != self._width:
            raise RowInvalid(
                "RAGGED_ROW", None, f"the row has {len(values)} values; the header has {self._width} columns"
            )
        if self._in_order:
            return tuple([p(v) for p, v in zip(self._parsers, values)])  # noqa: B905 - lengths checked
        return tuple([p(values[i]) for i, p in self._plan])


def format_value(f: FieldSpec, value: Any) -> Any:
    """``value`` of ``f`` as a JSON-compatible value: decimals as strings, dates in ISO 8601."""
    if value is None:
        return None
    t = f.type
    if t is FieldType.DECIMAL:
        return str(value)
    if t is FieldType.DATETIME:
        text: str = value.isoformat()
        return text[:-6] + "Z" if text.endswith("+00:00") else text
    if t is FieldType.DATE:
        return value.isoformat()
    return value


def format_text(f: FieldSpec, value: Any) -> str:
    """``value`` of ``f`` as one CSV cell: null is empty, bools ``true``/``false``, JSON compact."""
    if value is None:
        return ""
    t = f.type
    if t is FieldType.BOOL:
        return "true" if value else "false"
    if t is FieldType.JSON:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return str(format_value(f, value))


FilterOp = Literal["eq", "in", "gte", "lte"]
_MAX_IN_VALUES = 10_000


@dataclass(frozen=True, slots=True)
class Filter:
    """One export condition on a filterable field; ``value`` is typed (a list for ``in``)."""

    field: FieldSpec
    op: FilterOp
    value: Any = None


def parse_filters(entity: EntitySpec, filters: Mapping[str, Any]) -> list[Filter]:
    """Typed export filters from ``{"status": "active"}``, ``{"price": {"gte": 10, "lte": 20}}``.

    A list of values is given as ``{"sku": {"in": [...]}}``.

    Raises:
        InvalidFilter: unknown or non-filterable field, unknown operator, or a value of the wrong type.
    """
    filterable = {f.name: f for f in entity.filterable_fields}
    allowed = ", ".join(filterable) or "(none)"
    result: list[Filter] = []
    for name, spec in filters.items():
        f = filterable.get(name)
        if f is None:
            raise InvalidFilter(
                f"cannot filter on {quoted(name)}; filterable fields of {entity.name}: {allowed}",
                field=name,
                allowed=list(filterable),
            )
        parse = field_parser(f, rules=False, nullable=False)

        def typed(value: Any, f: FieldSpec = f, parse: Parser = parse) -> Any:
            try:
                return parse(value)
            except RowInvalid as exc:
                raise InvalidFilter(
                    f"filter on {f.name!r}: {exc.message}; filterable fields: {allowed}", field=f.name
                ) from None

        if not isinstance(spec, Mapping):
            if isinstance(spec, list | tuple):
                raise InvalidFilter(f"filter on {f.name!r}: use {{'in': [...]}} for a list", field=f.name)
            result.append(Filter(f, "eq", typed(spec)))
            continue
        if not spec:
            raise InvalidFilter(f"filter on {f.name!r}: no operator given", field=f.name)
        ordered = f.type in _ORDERED_TYPES
        ops = "eq, in, gte, lte" if ordered else "eq, in"
        for op, value in spec.items():
            if op == "eq":
                result.append(Filter(f, "eq", typed(value)))
            elif op == "in":
                if not isinstance(value, list | tuple) or not value or len(value) > _MAX_IN_VALUES:
                    raise InvalidFilter(
                        f"filter on {f.name!r}: 'in' takes a list of 1 to {_MAX_IN_VALUES} values",
                        field=f.name,
                    )
                result.append(Filter(f, "in", [typed(v) for v in value]))
            elif op in ("gte", "lte") and ordered:
                result.append(Filter(f, op, typed(value)))
            else:
                raise InvalidFilter(
                    f"filter on {f.name!r}: unknown operator {quoted(op)}; "
                    f"allowed for a {f.type} field: {ops}",
                    field=f.name,
                )
    return result
