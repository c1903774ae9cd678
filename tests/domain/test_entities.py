"""Entity declarations, header mapping, row conversion and export filters (pure)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from common_operations.config import PROJECT_ROOT
from common_operations.domain.entities import (
    EntitySpec,
    FieldSpec,
    FieldType,
    Filter,
    HeaderInvalid,
    InvalidFilter,
    RowConverter,
    RowInvalid,
    SinkSpec,
    field_parser,
    format_text,
    format_value,
    normalize_name,
    parse_filters,
)
from common_operations.domain.errors import ErrorKind
from common_operations.infra.entity_config import load_entities, load_entity

SINK = SinkSpec(kind="postgres", database="commerce", table="things")


def spec(*fields: FieldSpec) -> EntitySpec:
    return EntitySpec("things", (FieldSpec("id", FieldType.STRING, required=True, key=True), *fields), SINK)


def parse(f: FieldSpec, value: Any) -> Any:
    return field_parser(f)(value)


def code_of(f: FieldSpec, value: Any) -> str:
    with pytest.raises(RowInvalid) as info:
        field_parser(f)(value)
    assert info.value.field == f.name
    assert info.value.message.startswith(f"{f.name}: ")
    return info.value.code


@pytest.fixture(scope="module")
def products() -> EntitySpec:
    return load_entities(PROJECT_ROOT / "configs" / "entities")["products"]


# --- declarations ------------------------------------------------------------------------------


def test_shipped_declarations_load() -> None:
    entities = load_entities(PROJECT_ROOT / "configs" / "entities")
    assert set(entities) == {"products", "customers", "orders", "inventory"}
    assert [f.name for f in entities["inventory"].key_fields] == ["warehouse", "sku"]
    assert [f.name for f in entities["products"].filterable_fields] == [
        "price",
        "currency",
        "active",
        "category",
    ]
    assert all(e.sink.kind == "postgres" and e.sink.database == "commerce" for e in entities.values())
    assert entities["products"].fields[3].minimum == Decimal(0)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ((FieldSpec("a", FieldType.ENUM),), "field 'a': an enum needs `values`"),
        ((FieldSpec("a", FieldType.STRING, aliases=("ID",)),), "alias 'ID' clashes with field 'id'"),
        ((FieldSpec("Bad Name", FieldType.STRING),), "name must match"),
        ((FieldSpec("a", FieldType.STRING, key=True),), "a key field must be `required: true`"),
        ((FieldSpec("a", FieldType.INT, pattern="x"),), "pattern is for string fields only"),
        ((FieldSpec("a", FieldType.STRING, minimum=Decimal(1)),), "minimum/maximum are for int and decimal"),
        (
            (FieldSpec("a", FieldType.JSON, filterable=True),),
            "a json field cannot be key, unique or filterable",
        ),
        ((FieldSpec("a", FieldType.STRING, pattern="("),), "invalid pattern"),
        ((FieldSpec("a", FieldType.STRING, column="id"),), "column 'id' is used twice"),
    ],
)
def test_bad_declarations_are_refused(fields: tuple[FieldSpec, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        spec(*fields)


def test_an_entity_needs_a_key() -> None:
    with pytest.raises(ValueError, match="at least one field must be `key: true`"):
        EntitySpec("things", (FieldSpec("a", FieldType.STRING),), SINK)


def test_sinks_are_validated() -> None:
    field = FieldSpec("id", FieldType.STRING, required=True, key=True)
    with pytest.raises(ValueError, match="an http sink needs `url`"):
        EntitySpec("t", (field,), SinkSpec(kind="http"))
    with pytest.raises(ValueError, match="a temporal sink needs"):
        EntitySpec("t", (field,), SinkSpec(kind="temporal", task_queue="q"))
    with pytest.raises(ValueError, match="`table`"):
        EntitySpec("t", (field,), SinkSpec(kind="postgres", database="d", table="x; drop"))
    EntitySpec("t", (field,), SinkSpec(kind="temporal", task_queue="q", activity="a"))


def test_loader_names_file_and_field(tmp_path: Path) -> None:
    path = tmp_path / "widgets.yaml"
    path.write_text(
        "fields:\n  - {name: id, type: string, key: true, required: true}\n  - {name: size, type: huge}\n"
    )
    with pytest.raises(
        ValueError, match=r"widgets.yaml: fields\[1\] \('size'\): unknown type 'huge'; allowed: string"
    ):
        load_entities(tmp_path)
    path.write_text("fields:\n  - {name: id, type: string, key: true}\nsink: {kind: postgres, database: d}\n")
    with pytest.raises(ValueError, match=r"widgets\.yaml: entity 'widgets': field 'id': a key field must be"):
        load_entity(path)
    path.write_text("fields:\n  - {name: id, key: true, required: true, colour: red}\nsink: {database: d}\n")
    with pytest.raises(ValueError, match=r"unknown setting\(s\) colour"):
        load_entity(path)
    path.write_text("fields:\n  - {name: id, key: true, required: true}\nsink: {database: d}\n")
    entity = load_entity(path)
    assert entity.name == "widgets"
    assert entity.sink.table == "widgets"
    assert entity.fields[0].type is FieldType.STRING
    assert entity.fields[0].column == "id"


# --- header ------------------------------------------------------------------------------------


def test_normalize_name() -> None:
    assert normalize_name("  Product_Name ") == "product name"
    assert normalize_name("product-name") == normalize_name("PRODUCT  NAME") == "product name"


def test_aliases_match_case_and_space_insensitively(products: EntitySpec) -> None:
    conv = RowConverter(products, ["sku", " PRODUCT_NAME", "price (eur)", "Updated-At"])
    assert [f.name for f in conv.fields] == ["sku", "name", "price", "updated_at"]


def test_header_errors_are_precise(products: EntitySpec) -> None:
    with pytest.raises(HeaderInvalid) as info:
        RowConverter(products, ["name", "price", "colour", "SKU", "Product Name", ""])
    exc = info.value
    assert exc.code == "HEADER_INVALID"
    assert exc.kind is ErrorKind.INVALID
    assert exc.details == {"unknown": ["colour", ""], "missing": [], "duplicate": ["Product Name"]}
    assert exc.message.startswith(
        "unknown column 'colour' (column 3); unknown column '' (column 6); allowed: sku ("
    )
    assert (
        "duplicate column 'Product Name' (column 5): field 'name' is already given by column 1" in exc.message
    )
    with pytest.raises(HeaderInvalid) as info:
        RowConverter(products, ["stock"])
    assert info.value.details["missing"] == ["sku", "name", "price"]
    assert info.value.message == (
        "missing required column 'sku'; missing required column 'name'; missing required column 'price'"
    )


def test_partial_header_needs_only_keys(products: EntitySpec) -> None:
    assert [f.name for f in RowConverter(products, ["stock", "sku"], partial=True).fields] == ["sku", "stock"]
    with pytest.raises(HeaderInvalid, match="missing required column 'sku'"):
        RowConverter(products, ["stock"], partial=True)


def test_rows_come_out_in_field_order(products: EntitySpec) -> None:
    conv = RowConverter(products, ["price", "SKU", "name", "stock"])
    assert conv.convert(["9.99", "A-1", "Anvil", ""]) == ("A-1", "Anvil", Decimal("9.99"), None)
    in_order = RowConverter(products, ["sku", "name", "price"])
    assert in_order.convert(["A-1", "Anvil", 3]) == ("A-1", "Anvil", Decimal(3))


def test_ragged_rows(products: EntitySpec) -> None:
    conv = RowConverter(products, ["sku", "name", "price"])
    with pytest.raises(RowInvalid) as info:
        conv.convert(["A", "b"])
    assert (info.value.code, info.value.field) == ("RAGGED_ROW", None)
    assert info.value.message == "the row has 2 values; the header has 3 columns"


def test_first_problem_of_a_row_is_reported(products: EntitySpec) -> None:
    conv = RowConverter(products, ["sku", "name", "price", "currency"])
    with pytest.raises(RowInvalid) as info:
        conv.convert(["A", "", "-1", "EUR"])
    assert (info.value.code, info.value.field) == ("REQUIRED", "name")


# --- types and rules ---------------------------------------------------------------------------


def test_strings() -> None:
    f = FieldSpec("s", FieldType.STRING, min_length=2, max_length=4, pattern="[a-z]+")
    assert parse(f, "abc") == "abc"
    assert parse(f, "") is None
    assert parse(f, None) is None
    assert code_of(f, "a") == "TOO_SHORT"
    assert code_of(f, "abcde") == "TOO_LONG"
    assert code_of(f, "ab1") == "PATTERN_MISMATCH"
    assert code_of(f, "a\x00b") == "INVALID_STRING"
    assert code_of(f, {"a": 1}) == "INVALID_STRING"
    assert code_of(f, True) == "INVALID_STRING"
    # Strings keep their spaces; numbers from JSON become text.
    assert parse(FieldSpec("s", FieldType.STRING), " x ") == " x "
    assert parse(FieldSpec("s", FieldType.STRING), 12) == "12"
    assert code_of(FieldSpec("s", FieldType.STRING, required=True), "") == "REQUIRED"
    assert code_of(FieldSpec("s", FieldType.STRING, required=True), None) == "REQUIRED"


def test_ints() -> None:
    f = FieldSpec("n", FieldType.INT, minimum=Decimal(0), maximum=Decimal(100))
    assert parse(f, " 42 ") == 42
    assert parse(f, "+7") == 7
    assert parse(f, 5) == 5
    assert parse(f, 5.0) == 5
    assert code_of(f, "4.5") == "INVALID_INT"
    assert code_of(f, "1_000") == "INVALID_INT"
    assert code_of(f, "٣") == "INVALID_INT"
    assert code_of(f, 4.5) == "INVALID_INT"
    assert code_of(f, True) == "INVALID_INT"
    assert code_of(f, "-1") == "BELOW_MINIMUM"
    assert code_of(f, 101) == "ABOVE_MAXIMUM"
    big = FieldSpec("n", FieldType.INT)
    assert parse(big, str(2**63 - 1)) == 2**63 - 1
    assert code_of(big, str(2**63)) == "INVALID_INT"
    assert code_of(big, -(2**63) - 1) == "INVALID_INT"


def test_decimals() -> None:
    f = FieldSpec("d", FieldType.DECIMAL, minimum=Decimal("0.5"))
    assert parse(f, " 12.50 ") == Decimal("12.50")
    assert parse(f, 3) == Decimal(3)
    assert parse(FieldSpec("d", FieldType.DECIMAL), 0.1) == Decimal("0.1")
    assert parse(f, "1e3") == Decimal(1000)
    for bad in ("NaN", "Infinity", "-inf", "1,5", "abc", "1_0", float("nan"), True, [1]):
        assert code_of(f, bad) == "INVALID_DECIMAL", bad
    assert code_of(f, "1e999999") == "INVALID_DECIMAL"
    assert code_of(f, "0.4") == "BELOW_MINIMUM"
    assert code_of(FieldSpec("d", FieldType.DECIMAL, maximum=Decimal(10)), "10.01") == "ABOVE_MAXIMUM"


def test_bools() -> None:
    f = FieldSpec("b", FieldType.BOOL)
    for text, value in [
        ("true", True),
        ("FALSE", False),
        (" Yes ", True),
        ("no", False),
        ("1", True),
        ("0", False),
    ]:
        assert parse(f, text) is value
    assert parse(f, True) is True
    assert parse(f, 0) is False
    assert code_of(f, "maybe") == "INVALID_BOOL"
    assert code_of(f, 2) == "INVALID_BOOL"


def test_dates_and_datetimes() -> None:
    d = FieldSpec("d", FieldType.DATE)
    assert parse(d, " 2024-02-29 ") == date(2024, 2, 29)
    assert code_of(d, "2023-02-29") == "INVALID_DATE"
    assert code_of(d, "29.02.2024") == "INVALID_DATE"
    assert code_of(d, 20240101) == "INVALID_DATE"
    t = FieldSpec("t", FieldType.DATETIME)
    assert parse(t, "2024-01-02T03:04:05") == datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert parse(t, "2024-01-02T03:04:05Z") == datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    cet = parse(t, "2024-01-02T04:04:05+01:00")
    assert cet == datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert cet.tzinfo is UTC
    assert parse(t, datetime(2024, 1, 1, tzinfo=timezone(timedelta(hours=2)))).hour == 22
    assert code_of(t, "yesterday") == "INVALID_DATETIME"
    assert code_of(t, 1700000000) == "INVALID_DATETIME"


def test_enums() -> None:
    f = FieldSpec("e", FieldType.ENUM, values=("EUR", "USD"))
    assert parse(f, "EUR") == "EUR"
    assert parse(f, " usd ") == "USD"
    with pytest.raises(RowInvalid, match="'GBP' is not one of: EUR, USD") as info:
        field_parser(f)("GBP")
    assert info.value.code == "NOT_IN_ENUM"


def test_json() -> None:
    f = FieldSpec("j", FieldType.JSON)
    assert parse(f, '{"a": [1, 2]}') == {"a": [1, 2]}
    assert parse(f, [1, "x"]) == [1, "x"]
    assert parse(f, {"k": None}) == {"k": None}
    assert parse(f, "null") is None
    assert code_of(f, "{bad") == "INVALID_JSON"
    assert code_of(f, "NaN") == "INVALID_JSON"
    assert code_of(f, '"a\\u0000b"') == "INVALID_JSON"
    assert code_of(f, {"a": "\x00"}) == "INVALID_JSON"
    assert code_of(f, {"a": float("inf")}) == "INVALID_JSON"
    assert code_of(FieldSpec("j", FieldType.JSON, required=True), "null") == "REQUIRED"


def test_jsonl_typed_row(products: EntitySpec) -> None:
    conv = RowConverter(
        products, ["sku", "name", "price", "currency", "stock", "active", "tags", "updated_at"]
    )
    row = conv.convert(["A-1", "Anvil", 12, "EUR", 3, True, ["heavy"], "2024-01-01T00:00:00+00:00"])
    assert row == ("A-1", "Anvil", Decimal(12), "EUR", 3, True, ["heavy"], datetime(2024, 1, 1, tzinfo=UTC))
    assert conv.convert(["A-2", "Bolt", "0", None, None, None, None, None])[2] == Decimal(0)
    with pytest.raises(RowInvalid) as info:
        conv.convert(["A-3", "Nail", -1, None, None, None, None, None])
    assert (info.value.code, info.value.field) == ("BELOW_MINIMUM", "price")


def test_format_value_and_text() -> None:
    d = FieldSpec("d", FieldType.DECIMAL)
    t = FieldSpec("t", FieldType.DATETIME)
    j = FieldSpec("j", FieldType.JSON)
    b = FieldSpec("b", FieldType.BOOL)
    assert format_value(d, Decimal("1.50")) == "1.50"
    assert format_value(t, datetime(2024, 1, 1, tzinfo=UTC)) == "2024-01-01T00:00:00Z"
    assert format_value(FieldSpec("x", FieldType.DATE), date(2024, 1, 1)) == "2024-01-01"
    assert format_value(j, {"a": 1}) == {"a": 1}
    assert format_value(d, None) is None
    assert format_text(j, {"a": "é"}) == '{"a":"é"}'
    assert format_text(b, False) == "false"
    assert format_text(d, None) == ""


# --- filters -----------------------------------------------------------------------------------


def test_filters(products: EntitySpec) -> None:
    filters = parse_filters(
        products,
        {
            "category": "tools",
            "price": {"gte": 10, "lte": "20.5"},
            "currency": {"in": ["EUR", "usd"]},
            "active": "yes",
        },
    )
    by = {(f.field.name, f.op): f.value for f in filters}
    assert by == {
        ("category", "eq"): "tools",
        ("price", "gte"): Decimal(10),
        ("price", "lte"): Decimal("20.5"),
        ("currency", "in"): ["EUR", "USD"],
        ("active", "eq"): True,
    }
    assert all(isinstance(f, Filter) for f in filters)
    assert parse_filters(products, {}) == []
    # Filters do not apply the field's import rules: a negative bound is a valid question.
    assert parse_filters(products, {"price": {"gte": -5}})[0].value == Decimal(-5)


@pytest.mark.parametrize(
    ("filters", "message"),
    [
        (
            {"stock": 1},
            "cannot filter on 'stock'; filterable fields of products: price, currency, active, category",
        ),
        ({"colour": "red"}, "cannot filter on 'colour'"),
        ({"price": "cheap"}, "filter on 'price': price: not a decimal number: 'cheap'; filterable fields:"),
        ({"category": {"gte": "a"}}, "unknown operator 'gte'; allowed for a string field: eq, in"),
        ({"price": {"gt": 1}}, "unknown operator 'gt'; allowed for a decimal field: eq, in, gte, lte"),
        ({"currency": {"in": []}}, "'in' takes a list of 1 to"),
        ({"currency": {"in": "EUR"}}, "'in' takes a list"),
        ({"currency": ["EUR"]}, "use {'in': [...]} for a list"),
        ({"currency": "JPY"}, "'JPY' is not one of: EUR, USD, GBP"),
        ({"active": None}, "a value is required"),
        ({"price": {}}, "no operator given"),
    ],
)
def test_bad_filters(products: EntitySpec, filters: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidFilter) as info:
        parse_filters(products, filters)
    assert info.value.code == "INVALID_FILTER"
    assert info.value.kind is ErrorKind.INVALID
    assert message in info.value.message
