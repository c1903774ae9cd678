"""Load entity declarations, one YAML file per entity (see ``configs/entities/*.yaml``).

Bad declarations stop the service at start-up with a message naming the file and the field.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import yaml

from common_operations.domain.entities import EntitySpec, FieldSpec, FieldType, SinkSpec

_FIELD_KEYS = frozenset(
    {
        "name",
        "type",
        "required",
        "unique",
        "key",
        "min_length",
        "max_length",
        "minimum",
        "maximum",
        "pattern",
        "values",
        "aliases",
        "filterable",
        "column",
        "description",
    }
)
_SINK_KEYS = frozenset(
    {
        "kind",
        "database",
        "table",
        "url",
        "export_url",
        "batch_size",
        "timeout",
        "task_queue",
        "activity",
        "export_query",
    }
)
_ENTITY_KEYS = frozenset({"name", "description", "fields", "sink"})


def _check_keys(where: str, data: dict[str, Any], allowed: frozenset[str]) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ValueError(
            f"{where}: unknown setting(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}"
        )


def _number(where: str, value: Any) -> Decimal | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"{where}: expected a number, got {value!r}")
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        raise ValueError(f"{where}: expected a number, got {value!r}") from None
    if not number.is_finite():
        raise ValueError(f"{where}: expected a finite number, got {value!r}")
    return number


def _strings(where: str, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(
        isinstance(v, str | int) and not isinstance(v, bool) for v in value
    ):
        raise ValueError(f"{where}: expected a list of strings")
    return tuple(str(v) for v in value)


def _optional_int(where: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{where}: expected a non-negative integer, got {value!r}")
    return value


def _field(where: str, data: Any) -> FieldSpec:
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping")
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError(f"{where}: `name` is required")
    where = f"{where} ({name!r})"
    _check_keys(where, data, _FIELD_KEYS)
    raw_type = data.get("type", "string")
    try:
        field_type = FieldType(raw_type)
    except ValueError:
        allowed = ", ".join(t.value for t in FieldType)
        raise ValueError(f"{where}: unknown type {raw_type!r}; allowed: {allowed}") from None
    flags = {}
    for flag in ("required", "unique", "key", "filterable"):
        value = data.get(flag, False)
        if not isinstance(value, bool):
            raise ValueError(f"{where}: `{flag}` must be true or false")
        flags[flag] = value
    for text in ("pattern", "column", "description"):
        if data.get(text) is not None and not isinstance(data[text], str):
            raise ValueError(f"{where}: `{text}` must be a string")
    return FieldSpec(
        name=name,
        type=field_type,
        required=flags["required"],
        unique=flags["unique"],
        key=flags["key"],
        filterable=flags["filterable"],
        min_length=_optional_int(f"{where} min_length", data.get("min_length")),
        max_length=_optional_int(f"{where} max_length", data.get("max_length")),
        minimum=_number(f"{where} minimum", data.get("minimum")),
        maximum=_number(f"{where} maximum", data.get("maximum")),
        pattern=data.get("pattern"),
        values=_strings(f"{where} values", data.get("values")),
        aliases=_strings(f"{where} aliases", data.get("aliases")),
        column=data.get("column") or "",
        description=(data.get("description") or "").strip(),
    )


def _sink(where: str, data: Any, entity_name: str) -> SinkSpec:
    if not isinstance(data, dict):
        raise ValueError(f"{where}: `sink` must be a mapping (e.g. {{kind: postgres, database: commerce}})")
    _check_keys(where, data, _SINK_KEYS)
    kind = data.get("kind", "postgres")
    timeout = data.get("timeout", 30.0)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise ValueError(f"{where}: `timeout` must be a number of seconds")
    for text in ("database", "table", "url", "export_url", "task_queue", "activity", "export_query"):
        if data.get(text) is not None and not isinstance(data[text], str):
            raise ValueError(f"{where}: `{text}` must be a string")
    batch = data.get("batch_size")
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int)):
        raise ValueError(f"{where}: `batch_size` must be an integer")
    return SinkSpec(
        kind=kind,
        database=data.get("database"),
        # A postgres sink writes the table named like the entity unless told otherwise.
        table=data.get("table") or (entity_name if kind == "postgres" else None),
        url=data.get("url"),
        export_url=data.get("export_url"),
        batch_size=batch,
        timeout=float(timeout),
        task_queue=data.get("task_queue"),
        activity=data.get("activity"),
        export_query=data.get("export_query"),
    )


def load_entity(path: Path) -> EntitySpec:
    """The entity declared in one YAML file.

    Raises:
        ValueError: the file is unreadable or the declaration is invalid (message names the file).
    """
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: cannot read entity declaration: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping with `fields` and `sink`")
    where = str(path)
    _check_keys(where, data, _ENTITY_KEYS)
    name = data.get("name") or path.stem
    if not isinstance(name, str):
        raise ValueError(f"{path}: `name` must be a string")
    raw_fields = data.get("fields")
    if not isinstance(raw_fields, list) or not raw_fields:
        raise ValueError(f"{path}: `fields` must be a non-empty list")
    fields = tuple(_field(f"{path}: fields[{i}]", item) for i, item in enumerate(raw_fields))
    sink = _sink(f"{path}: sink", data.get("sink"), name)
    try:
        return EntitySpec(name=name, fields=fields, sink=sink)
    except ValueError as exc:
        raise ValueError(f"{path}: entity {name!r}: {exc}") from None


def load_entities(directory: Path) -> dict[str, EntitySpec]:
    """Every entity declared in ``directory`` (``*.yaml`` / ``*.yml``), by name.

    Raises:
        ValueError: the directory is missing, a declaration is invalid, or two files declare one name.
    """
    if not directory.is_dir():
        raise ValueError(f"{directory}: entity declarations directory does not exist")
    entities: dict[str, EntitySpec] = {}
    origin: dict[str, Path] = {}
    for path in sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")]):
        entity = load_entity(path)
        if entity.name in entities:
            raise ValueError(f"{path}: entity {entity.name!r} is already declared in {origin[entity.name]}")
        entities[entity.name] = entity
        origin[entity.name] = path
    return entities
