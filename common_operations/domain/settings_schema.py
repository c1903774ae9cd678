"""Settings groups declared by schema: field types, defaults, visibility and per-key validation.

A group (``payment``, …) is one JSON object of settings. Its schema names every key, the key's
type, default and constraints, and whether the public view shows it. The schema is parsed and
checked once at start (:func:`parse_group_schema`); the service validates every change against it.
Pure: no I/O, so the loader and the tests share the same rules.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from common_operations.domain.errors import ValidationFailed, quoted

GROUP_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,99}$")
FIELD_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,99}$")
# Strings of a settings value are short configuration values; a schema may lower this.
MAX_STRING_LENGTH = 4096
_SCHEMA_KEYS = frozenset(
    {"type", "default", "public", "secret", "description", "max_length", "pattern", "min", "max", "choices"}
)


class FieldType(StrEnum):
    """The JSON type of a settings key."""

    BOOL = "bool"
    STRING = "string"
    INTEGER = "integer"
    NUMBER = "number"
    ENUM = "enum"


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One key of a settings group.

    Attributes:
        secret: the value is left out of ``settings.changed`` events (only the key is named).
    """

    name: str
    type: FieldType
    default: Any
    public: bool = False
    secret: bool = False
    description: str = ""
    max_length: int | None = None
    pattern: re.Pattern[str] | None = None
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()

    def validate(self, value: Any) -> Any:
        """``value`` if it is valid for this key (no coercion: ``"true"`` is not a bool).

        Raises:
            ValidationFailed: naming this key in ``field``.
        """
        if self.type is FieldType.BOOL:
            if not isinstance(value, bool):
                raise self._invalid(f"{self.name} must be a boolean, not {quoted(value)}")
            return value
        if self.type in (FieldType.STRING, FieldType.ENUM):
            return self._validate_text(value)
        return self._validate_number(value)

    def _validate_text(self, value: Any) -> str:
        if not isinstance(value, str):
            raise self._invalid(f"{self.name} must be a string, not {quoted(value)}")
        if self.type is FieldType.ENUM:
            if value not in self.choices:
                raise self._invalid(
                    f"{self.name} must be one of {', '.join(self.choices)}; got {quoted(value)}"
                )
            return value
        limit = self.max_length if self.max_length is not None else MAX_STRING_LENGTH
        if len(value) > limit:
            raise self._invalid(f"{self.name} is at most {limit} characters long")
        if "\x00" in value:
            raise self._invalid(f"{self.name} must not contain NUL characters")
        if self.pattern is not None and not self.pattern.fullmatch(value):
            raise self._invalid(f"{self.name} must match {self.pattern.pattern}; got {quoted(value)}")
        return value

    def _validate_number(self, value: Any) -> int | float:
        # bool is an int subclass in Python; JSON true is not a number.
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self._invalid(f"{self.name} must be a number, not {quoted(value)}")
        if self.type is FieldType.INTEGER and not isinstance(value, int):
            raise self._invalid(f"{self.name} must be an integer, not {quoted(value)}")
        if isinstance(value, float) and not math.isfinite(value):
            raise self._invalid(f"{self.name} must be finite")
        if self.minimum is not None and value < self.minimum:
            raise self._invalid(f"{self.name} must be at least {self.minimum:g}")
        if self.maximum is not None and value > self.maximum:
            raise self._invalid(f"{self.name} must be at most {self.maximum:g}")
        return value

    def _invalid(self, message: str) -> ValidationFailed:
        return ValidationFailed(message, field=self.name)


@dataclass(frozen=True, slots=True)
class GroupSchema:
    """The declared keys of one settings group, in declaration order."""

    name: str
    fields: Mapping[str, FieldSpec]
    description: str = ""
    public_fields: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        """Index the public keys once."""
        object.__setattr__(
            self, "public_fields", frozenset(n for n, spec in self.fields.items() if spec.public)
        )

    def defaults(self) -> dict[str, Any]:
        """Every key at its default."""
        return {name: spec.default for name, spec in self.fields.items()}

    def effective(self, stored: Mapping[str, Any]) -> dict[str, Any]:
        """The defaults with the stored values over them.

        Stored keys the schema no longer declares are dropped, and a stored value the schema no
        longer accepts (a tightened constraint) reads as the default, so a read never fails on old
        data.
        """
        values = self.defaults()
        for name, spec in self.fields.items():
            if name in stored:
                with contextlib.suppress(ValidationFailed):
                    values[name] = spec.validate(stored[name])
        return values

    def validate_patch(self, patch: Mapping[str, Any]) -> dict[str, Any]:
        """The validated partial update; every key checked on its own.

        Raises:
            ValidationFailed: an unknown key or an invalid value, named in ``field``.
        """
        if not isinstance(patch, Mapping):
            raise ValidationFailed(f"the {self.name} settings update must be a JSON object")
        checked: dict[str, Any] = {}
        for name, value in patch.items():
            spec = self.fields.get(name)
            if spec is None:
                raise ValidationFailed(
                    f"unknown {self.name} setting {quoted(name)}; known: {', '.join(self.fields)}",
                    field=str(name),
                )
            checked[name] = spec.validate(value)
        return checked

    def public_view(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Only the keys marked public."""
        return {name: values[name] for name in self.fields if name in self.public_fields and name in values}

    def event_values(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """The values an event may carry: every key except the secret ones."""
        return {
            name: value
            for name, value in values.items()
            if name in self.fields and not self.fields[name].secret
        }


def parse_group_schema(name: str, raw: Any) -> GroupSchema:
    """Check a group's declaration (as loaded from YAML) and build its schema.

    Expected shape: ``{description?, fields: {key: {type, default, public?, secret?, description?,
    max_length?, pattern?, min?, max?, choices?}}}``. Every default must pass its own constraints.

    Raises:
        ValueError: the declaration is malformed (the message names the group and key).
    """
    if not GROUP_NAME.fullmatch(name):
        raise ValueError(f"settings group name {name!r} must match {GROUP_NAME.pattern}")
    if not isinstance(raw, Mapping) or not isinstance(raw.get("fields"), Mapping) or not raw["fields"]:
        raise ValueError(f"settings group {name!r}: `fields` must be a non-empty mapping")
    fields: dict[str, FieldSpec] = {}
    for key, decl in raw["fields"].items():
        fields[str(key)] = _parse_field(name, key, decl)
    return GroupSchema(name=name, fields=fields, description=str(raw.get("description") or ""))


def _parse_field(group: str, key: Any, decl: Any) -> FieldSpec:
    where = f"settings group {group!r}, key {key!r}"
    if not isinstance(key, str) or not FIELD_NAME.fullmatch(key):
        raise ValueError(f"{where}: a key must match {FIELD_NAME.pattern}")
    if not isinstance(decl, Mapping):
        raise ValueError(f"{where}: the declaration must be a mapping")
    if unknown := set(decl) - _SCHEMA_KEYS:
        raise ValueError(f"{where}: unknown attributes {sorted(map(str, unknown))}")
    try:
        kind = FieldType(str(decl.get("type")))
    except ValueError:
        raise ValueError(f"{where}: type must be one of {', '.join(FieldType)}") from None
    if "default" not in decl:
        raise ValueError(f"{where}: a default is required")
    choices = decl.get("choices") or ()
    if kind is FieldType.ENUM and (
        not isinstance(choices, list) or not choices or not all(isinstance(c, str) for c in choices)
    ):
        raise ValueError(f"{where}: an enum needs `choices`, a non-empty list of strings")
    pattern = decl.get("pattern")
    try:
        compiled = re.compile(pattern) if pattern is not None else None
    except (re.error, TypeError) as exc:
        raise ValueError(f"{where}: pattern does not compile: {exc}") from None
    spec = FieldSpec(
        name=key,
        type=kind,
        default=decl["default"],
        public=_flag(where, decl, "public"),
        secret=_flag(where, decl, "secret"),
        description=str(decl.get("description") or ""),
        max_length=_optional_number(where, decl, "max_length", int),
        pattern=compiled,
        minimum=_optional_number(where, decl, "min", float),
        maximum=_optional_number(where, decl, "max", float),
        choices=tuple(choices),
    )
    try:
        spec.validate(spec.default)
    except ValidationFailed as exc:
        raise ValueError(f"{where}: the default is invalid: {exc.message}") from None
    return spec


def _flag(where: str, decl: Mapping[str, Any], name: str) -> bool:
    value = decl.get(name, False)
    if not isinstance(value, bool):
        raise ValueError(f"{where}: {name} must be true or false")
    return value


def _optional_number(where: str, decl: Mapping[str, Any], name: str, kind: type[int] | type[float]) -> Any:
    value = decl.get(name)
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or (kind is int and not isinstance(value, int))
    ):
        raise ValueError(f"{where}: {name} must be a{'n integer' if kind is int else ' number'}")
    return kind(value)
