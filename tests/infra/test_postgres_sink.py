"""The Postgres sink against a real server: merge modes, rejections, checkpoints, streaming."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from common_operations.db.engine import with_database
from common_operations.domain.entities import (
    EntitySpec,
    FieldSpec,
    FieldType,
    RowConverter,
    SinkSpec,
    parse_filters,
)
from common_operations.infra.sinks.postgres import (
    Checkpoint,
    PostgresSink,
    database_url_for,
    ensure_database,
)


@pytest.fixture(scope="session")
def sink_database_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh database of this module's own on ``TEST_DATABASE_URL``, else the session's database.

    The sink needs no service tables, so it does not wait on (or depend on) the service migrations.
    """
    base = os.environ.get("TEST_DATABASE_URL")
    if not base:
        yield request.getfixturevalue("database_url")
        return
    url = with_database(base, f"co_sink_{os.getpid()}_{uuid.uuid4().hex[:6]}")
    asyncio.run(ensure_database(url))
    yield url

    async def drop() -> None:
        admin = await asyncpg.connect(with_database(base, "postgres"))
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')
        finally:
            await admin.close()

    asyncio.run(drop())


@pytest.fixture
async def pool(sink_database_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await asyncpg.create_pool(sink_database_url, min_size=1, max_size=4)
    yield p
    await p.close()


@pytest.fixture
async def schema(pool: asyncpg.Pool) -> AsyncIterator[str]:
    name = f"t_{uuid.uuid4().hex[:10]}"
    yield name
    await pool.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def product_entity(schema: str) -> EntitySpec:
    return EntitySpec(
        name="products",
        fields=(
            FieldSpec("sku", FieldType.STRING, required=True, key=True),
            FieldSpec("name", FieldType.STRING, required=True, filterable=True),
            FieldSpec("price", FieldType.DECIMAL, minimum=Decimal(0), filterable=True),
            FieldSpec("active", FieldType.BOOL, filterable=True),
            FieldSpec("barcode", FieldType.STRING, unique=True, column="ean"),
            FieldSpec("tags", FieldType.JSON),
            FieldSpec("updated_at", FieldType.DATETIME, filterable=True),
        ),
        sink=SinkSpec(kind="postgres", database="commerce", table=f"{schema}.products"),
    )


def inventory_entity(schema: str) -> EntitySpec:
    return EntitySpec(
        name="inventory",
        fields=(
            FieldSpec("warehouse", FieldType.STRING, required=True, key=True),
            FieldSpec("sku", FieldType.STRING, required=True, key=True),
            FieldSpec("quantity", FieldType.INT, required=True),
        ),
        sink=SinkSpec(kind="postgres", database="commerce", table=f"{schema}.inventory"),
    )


HEADER = ["sku", "name", "price", "active", "barcode", "tags", "updated_at"]


def rows_of(converter: RowConverter, *rows: list[Any], first: int = 1) -> list[tuple[int, tuple[Any, ...]]]:
    return [(first + i, converter.convert(r)) for i, r in enumerate(rows)]


def cp(n: int = 1) -> Checkpoint:
    return Checkpoint(next_offset=n * 100, next_row=n * 10, chunk_no=n, processed=n, success=n, failed=0)


async def table_rows(pool: asyncpg.Pool, schema: str, table: str = "products") -> list[dict[str, Any]]:
    records = await pool.fetch(f'SELECT * FROM "{schema}"."{table}" ORDER BY 1, 2')
    return [dict(r) for r in records]


async def make_sink(
    pool: asyncpg.Pool, entity: EntitySpec, header: list[str]
) -> tuple[PostgresSink, RowConverter]:
    converter = RowConverter(entity, header)
    sink = PostgresSink(pool, entity, converter.fields)
    await sink.ensure_table()
    return sink, converter


async def test_ensure_table_is_idempotent_and_typed(pool: asyncpg.Pool, schema: str) -> None:
    sink = PostgresSink(pool, product_entity(schema))
    await sink.ensure_table()
    await sink.ensure_table()
    types = {
        r["column_name"]: r["data_type"]
        for r in await pool.fetch(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = $1",
            schema,
        )
    }
    assert types == {
        "sku": "text",
        "name": "text",
        "price": "numeric",
        "active": "boolean",
        "ean": "text",
        "tags": "jsonb",
        "updated_at": "timestamp with time zone",
    }
    constraints = {
        r["contype"]
        for r in await pool.fetch(
            "SELECT contype::text AS contype FROM pg_constraint WHERE conrelid = $1::regclass",
            f"{schema}.products",
        )
    }
    # Postgres 18 also lists NOT NULL as constraints ("n"); 15 does not.
    assert constraints - {"n"} == {"p", "u"}


async def test_upsert_inserts_then_updates_only_present_columns(pool: asyncpg.Pool, schema: str) -> None:
    entity = product_entity(schema)
    sink, conv = await make_sink(pool, entity, HEADER)
    rows = rows_of(
        conv,
        ["A-1", "Anvil", "10.50", "yes", "111", '["x"]', "2024-01-01T10:00:00"],
        ["B-2", "Bolt", "0.10", "no", "", "", ""],
    )
    assert await sink.write_chunk("job-up", rows, "upsert", cp()) == []
    # A second file with only some columns changes those and keeps the rest.
    conv2 = RowConverter(entity, ["SKU", "price"], partial=True)
    sink2 = PostgresSink(pool, entity, conv2.fields)
    assert await sink2.write_chunk("job-up", rows_of(conv2, ["A-1", "12"]), "upsert", cp(2)) == []
    got = await table_rows(pool, schema)
    assert got[0]["sku"] == "A-1"
    assert got[0]["name"] == "Anvil"
    assert got[0]["price"] == Decimal("12")
    assert got[0]["ean"] == "111"
    assert got[0]["tags"] == '["x"]'
    assert got[0]["updated_at"] == datetime(2024, 1, 1, 10, tzinfo=UTC)
    assert got[1]["active"] is False
    assert got[1]["tags"] is None
    # A new key in a file without the required `name` is refused for that row only.
    rejected = await sink2.write_chunk("job-up", rows_of(conv2, ["A-1", "13"], ["N-1", "1"]), "upsert", cp(3))
    assert [(r[0], r[1], r[2]) for r in rejected] == [(2, "REQUIRED", "name")]
    assert [r["price"] for r in await table_rows(pool, schema)] == [Decimal(13), Decimal("0.10")]


async def test_insert_rejects_existing_and_repeated_keys(pool: asyncpg.Pool, schema: str) -> None:
    sink, conv = await make_sink(pool, product_entity(schema), ["sku", "name"])
    await sink.write_chunk("job-ins", rows_of(conv, ["A", "first"]), "insert", cp())
    rejected = await sink.write_chunk(
        "job-ins",
        rows_of(conv, ["A", "again"], ["B", "new"], ["B", "repeat"], first=10),
        "insert",
        cp(2),
    )
    assert [(r[0], r[1]) for r in rejected] == [(10, "DUPLICATE_KEY"), (12, "DUPLICATE_KEY")]
    assert "row 11" in rejected[1][3]
    assert [(r["sku"], r["name"]) for r in await table_rows(pool, schema)] == [("A", "first"), ("B", "new")]


async def test_update_rejects_unknown_keys(pool: asyncpg.Pool, schema: str) -> None:
    sink, conv = await make_sink(pool, product_entity(schema), ["sku", "name"])
    await sink.write_chunk("job-upd", rows_of(conv, ["A", "a"], ["B", "b"]), "upsert", cp())
    rejected = await sink.write_chunk(
        "job-upd", rows_of(conv, ["A", "a2"], ["Z", "z"], first=5), "update", cp(2)
    )
    assert rejected == [(6, "NOT_FOUND", None, "no row with this key exists")]
    assert [(r["sku"], r["name"]) for r in await table_rows(pool, schema)] == [("A", "a2"), ("B", "b")]
    # A file with only the key columns checks existence and changes nothing.
    keys_only = PostgresSink(pool, product_entity(schema), [product_entity(schema).fields[0]])
    rejected = await keys_only.write_chunk("job-upd", [(1, ("A",)), (2, ("Q",))], "update", cp(3))
    assert [(r[0], r[1]) for r in rejected] == [(2, "NOT_FOUND")]


async def test_repeated_key_in_one_chunk_last_row_wins(pool: asyncpg.Pool, schema: str) -> None:
    sink, conv = await make_sink(pool, product_entity(schema), ["sku", "name"])
    rows = rows_of(conv, ["A", "one"], ["B", "b"], ["A", "two"])
    assert await sink.write_chunk("job-dup", rows, "upsert", cp()) == []
    assert [(r["sku"], r["name"]) for r in await table_rows(pool, schema)] == [("A", "two"), ("B", "b")]
    rows = rows_of(conv, ["A", "three"], ["A", "four"])
    assert await sink.write_chunk("job-dup", rows, "update", cp(2)) == []
    assert (await table_rows(pool, schema))[0]["name"] == "four"


async def test_unique_violation_is_reported_per_row(pool: asyncpg.Pool, schema: str) -> None:
    sink, conv = await make_sink(pool, product_entity(schema), ["sku", "name", "barcode"])
    await sink.write_chunk("job-uq", rows_of(conv, ["A", "a", "111"]), "upsert", cp())
    rows = rows_of(conv, ["B", "b", "111"], ["C", "c", "222"], ["D", "d", "222"], ["E", "e", "333"], first=2)
    rejected = await sink.write_chunk("job-uq", rows, "upsert", cp(2))
    assert [(r[0], r[1], r[2]) for r in rejected] == [
        (2, "UNIQUE_VIOLATION", "barcode"),
        (4, "UNIQUE_VIOLATION", "barcode"),
    ]
    assert [r["sku"] for r in await table_rows(pool, schema)] == ["A", "C", "E"]
    assert "already used by another row" in rejected[0][3]
    saved = await sink.checkpoint("job-uq")
    assert saved is not None
    assert saved.chunk_no == 2
    assert saved.rejections == rejected


async def test_constraint_violations_are_reported_per_row(pool: asyncpg.Pool, schema: str) -> None:
    # A table made by someone else may refuse values the declaration accepts.
    await pool.execute(f'CREATE SCHEMA "{schema}"')
    await pool.execute(
        f'CREATE TABLE "{schema}".products (sku text PRIMARY KEY, name text NOT NULL, price numeric(4, 2))'
    )
    sink, conv = await make_sink(pool, product_entity(schema), ["sku", "name", "price"])
    rejected = await sink.write_chunk(
        "job-cv", rows_of(conv, ["A", "a", "1"], ["B", "b", "1000"]), "upsert", cp()
    )
    assert [(r[0], r[1]) for r in rejected] == [(2, "CONSTRAINT_VIOLATION")]
    assert [r["sku"] for r in await table_rows(pool, schema)] == ["A"]


async def test_checkpoint_is_written_with_the_rows(pool: asyncpg.Pool, schema: str) -> None:
    sink, conv = await make_sink(pool, product_entity(schema), ["sku", "name"])
    job = f"job-{uuid.uuid4().hex[:8]}"
    assert await sink.checkpoint(job) is None
    await sink.write_chunk(job, rows_of(conv, ["A", "a"]), "upsert", cp(1))
    assert await sink.checkpoint(job) == cp(1)
    last = cp(2)
    last.first_row, last.done = 11, True
    known = [(11, "INVALID_INT", "stock", "stock: not an integer: 'x'")]
    rejected = await sink.write_chunk(
        job, rows_of(conv, ["A", "x"], ["A", "y"], first=12), "insert", last, known_rejections=known
    )
    saved = await sink.checkpoint(job)
    assert saved is not None
    assert (saved.first_row, saved.done, saved.chunk_no) == (11, True, 2)
    assert saved.rejections == [*known, *rejected]
    assert [r[0] for r in saved.rejections] == [11, 12, 13]
    await sink.delete_checkpoint(job)
    assert await sink.checkpoint(job) is None


async def test_failed_chunk_leaves_neither_rows_nor_checkpoint(pool: asyncpg.Pool, schema: str) -> None:
    sink, conv = await make_sink(pool, product_entity(schema), ["sku", "name"])
    job = f"fail-{uuid.uuid4().hex[:8]}"
    # The checkpoint write fails after the rows were merged: the whole chunk must roll back.
    await pool.execute(
        f"""CREATE FUNCTION "{schema}".refuse() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN IF NEW.job_id = '{job}' THEN RAISE EXCEPTION 'checkpoint refused'; END IF; RETURN NEW; END $$"""
    )
    await pool.execute(
        f"CREATE TRIGGER refuse_{schema} BEFORE INSERT OR UPDATE ON co_import_checkpoints "
        f'FOR EACH ROW EXECUTE FUNCTION "{schema}".refuse()'
    )
    try:
        with pytest.raises(asyncpg.RaiseError, match="checkpoint refused"):
            await sink.write_chunk(job, rows_of(conv, ["A", "a"], ["B", "b"]), "upsert", cp())
    finally:
        await pool.execute(f"DROP TRIGGER refuse_{schema} ON co_import_checkpoints")
    assert await table_rows(pool, schema) == []
    assert await sink.checkpoint(job) is None


async def test_dry_run_finds_rejections_and_writes_nothing(pool: asyncpg.Pool, schema: str) -> None:
    sink, conv = await make_sink(pool, product_entity(schema), ["sku", "name", "barcode"])
    await sink.write_chunk("job-dry0", rows_of(conv, ["A", "a", "1"]), "upsert", cp())
    rows = rows_of(conv, ["A", "x", "2"], ["B", "b", "1"], ["C", "c", "3"], first=2)
    rejected = await sink.write_chunk("job-dry", rows, "insert", cp(), dry_run=True)
    assert [(r[0], r[1]) for r in rejected] == [(2, "DUPLICATE_KEY"), (3, "UNIQUE_VIOLATION")]
    assert [r["sku"] for r in await table_rows(pool, schema)] == ["A"]
    assert await sink.checkpoint("job-dry") is None
    # The staging table of the rolled-back chunk does not leak into the next one.
    assert await sink.write_chunk("job-dry", rows_of(conv, ["C", "c", "3"]), "insert", cp()) == []


async def test_composite_key(pool: asyncpg.Pool, schema: str) -> None:
    sink, conv = await make_sink(pool, inventory_entity(schema), ["warehouse", "sku", "quantity"])
    rows = rows_of(conv, ["W1", "A", "1"], ["W2", "A", "2"], ["W1", "A", "3"])
    assert await sink.write_chunk("job-inv", rows, "upsert", cp()) == []
    got = await table_rows(pool, schema, "inventory")
    assert [(r["warehouse"], r["sku"], r["quantity"]) for r in got] == [("W1", "A", 3), ("W2", "A", 2)]
    rejected = await sink.write_chunk("job-inv", rows_of(conv, ["W3", "A", "1"]), "update", cp(2))
    assert [r[1] for r in rejected] == ["NOT_FOUND"]


async def test_stream_filters_order_and_batches(pool: asyncpg.Pool, schema: str) -> None:
    entity = product_entity(schema)
    sink, conv = await make_sink(pool, entity, HEADER)
    rows = [
        [
            f"S{i:03d}",
            "hammer" if i % 2 else "nail",
            str(i),
            "true" if i % 3 else "false",
            "",
            f'{{"i": {i}}}',
            "",
        ]
        for i in range(25, 0, -1)
    ]
    await sink.write_chunk("job-stream", rows_of(conv, *rows), "upsert", cp())
    flt = parse_filters(entity, {"name": "hammer", "price": {"gte": 5, "lte": 15}})
    assert await sink.count(flt) == 6
    batches = [b async for b in sink.stream(flt, batch_rows=4)]
    assert [len(b) for b in batches] == [4, 2]
    got = [row for b in batches for row in b]
    assert [r[0] for r in got] == ["S005", "S007", "S009", "S011", "S013", "S015"]
    assert got[0] == ("S005", "hammer", Decimal(5), True, None, {"i": 5}, None)
    everything = [row for b in [b async for b in sink.stream([], batch_rows=10)] for row in b]
    assert [r[0] for r in everything] == sorted(r[0] for r in everything)
    assert len(everything) == 25
    in_filter = parse_filters(entity, {"active": False, "price": {"in": ["3", 6, "7"]}})
    assert [r[0] for b in [b async for b in sink.stream(in_filter)] for r in b] == ["S003", "S006"]


async def test_filter_values_are_bound_not_interpolated(pool: asyncpg.Pool, schema: str) -> None:
    entity = product_entity(schema)
    sink, conv = await make_sink(pool, entity, ["sku", "name"])
    evil = "x'; drop table products --"
    await sink.write_chunk("job-evil", rows_of(conv, ["A", evil], ["B", "b"]), "upsert", cp())
    flt = parse_filters(entity, {"name": evil})
    assert await sink.count(flt) == 1
    assert [r[0] for b in [b async for b in sink.stream(flt)] for r in b] == ["A"]
    assert len(await table_rows(pool, schema)) == 2


async def test_ensure_database_is_idempotent(sink_database_url: str) -> None:
    database_url = sink_database_url
    name = f"co_sink_{uuid.uuid4().hex[:8]}"
    url = database_url_for({"commerce": None}, "commerce", database_url).replace("/commerce", f"/{name}")
    assert url == with_database(database_url, name)
    try:
        await ensure_database(url)
        await ensure_database(url)
        conn = await asyncpg.connect(url)
        await conn.close()
    finally:
        admin = await asyncpg.connect(with_database(database_url, "postgres"))
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def test_database_url_for() -> None:
    service = "postgresql://u@h:5432/service"
    assert database_url_for({"commerce": None}, "commerce", service) == "postgresql://u@h:5432/commerce"
    assert database_url_for({"x": "postgresql://o/db"}, "x", service) == "postgresql://o/db"
    with pytest.raises(ValueError, match="unknown sink database 'nope'; configured"):
        database_url_for({"commerce": None}, "nope", service)


async def test_an_export_query_is_the_source_and_filters_still_bind(pool: asyncpg.Pool, schema: str) -> None:
    """A configured export query replaces the table as the export's source; filters apply on top."""
    entity = product_entity(schema)
    sink, conv = await make_sink(pool, entity, ["sku", "name", "price", "active"])
    rows = [[f"Q{i}", f"n{i}", str(i), "true" if i % 2 == 0 else "false"] for i in range(6)]
    await sink.write_chunk("job-q", rows_of(conv, *rows), "upsert", cp())
    query = f'SELECT * FROM "{schema}"."products" WHERE price >= 2'
    view = dataclasses.replace(entity, sink=dataclasses.replace(entity.sink, export_query=query))
    source = PostgresSink(pool, view)
    active = parse_filters(view, {"active": True})
    assert await source.count([]) == 4
    assert await source.count(active) == 2
    assert [r[0] for b in [b async for b in source.stream(active)] for r in b] == ["Q2", "Q4"]
