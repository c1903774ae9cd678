"""The messages catalogue: i18n message templates, their validation and rendering.

A message has a ``key`` (``^[A-Za-z0-9_.:-]+$``, at most 255 characters), a ``category`` (at most
100), a ``defaultLanguage`` and one template per language code (``de``, ``de-AT``, ``pt_BR``; at most
10 characters; each template at most 10 KiB of UTF-8). Templates name variables as ``{{name}}``
(spaces inside the braces allowed); every variable a template uses must be declared. Rendering
replaces each placeholder with its value, HTML-escaped unless the message opted out
(``escapeHtml: false``); a placeholder whose value was not given is left as written, so the gap is
visible instead of silently empty. Pure: no I/O.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from common_operations.domain.errors import ValidationFailed, quoted

MAX_KEY_LENGTH = 255
MAX_CATEGORY_LENGTH = 100
MAX_LANGUAGE_LENGTH = 10
MAX_TEMPLATE_BYTES = 10 * 1024
MAX_TRANSLATIONS = 200
MAX_VARIABLES = 100
MAX_VARIABLE_NAME_LENGTH = 64
MAX_RESOLVE_KEYS = 1000
MAX_VALUE_LENGTH = 10 * 1024
MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 50
MAX_PAGE = 1_000_000

KEY = re.compile(r"^[A-Za-z0-9_.:-]+$")
LANGUAGE = re.compile(r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8})*$")
VARIABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


@dataclass(frozen=True, slots=True)
class Message:
    """One message template with its translations."""

    key: str
    category: str
    default_language: str
    translations: Mapping[str, str]
    variables: tuple[str, ...] = ()
    escape_html: bool = True
    version: int = 0
    created_at: datetime | None = None
    updated_at: datetime | None = None

    def same_content(self, other: Message) -> bool:
        """Whether ``other`` says the same (versions and times aside)."""
        return (
            self.category == other.category
            and self.default_language == other.default_language
            and dict(self.translations) == dict(other.translations)
            and self.variables == other.variables
            and self.escape_html == other.escape_html
        )


@dataclass(frozen=True, slots=True)
class Resolved:
    """A rendered message: its text and the language it came from (None: fell back to the key)."""

    key: str
    text: str
    language: str | None
    found: bool


@dataclass(frozen=True, slots=True)
class MessagePage:
    """One page of a category's messages and the category's total."""

    messages: list[Message] = field(default_factory=list)
    total: int = 0


def validate_key(key: Any, *, name: str = "key") -> str:
    """``key`` if it is a valid message key.

    Raises:
        ValidationFailed: naming ``name``.
    """
    if not isinstance(key, str) or not key:
        raise ValidationFailed(f"{name} must be a non-empty string", field=name)
    if len(key) > MAX_KEY_LENGTH:
        raise ValidationFailed(f"{name} is at most {MAX_KEY_LENGTH} characters long", field=name)
    if not KEY.fullmatch(key):
        raise ValidationFailed(f"{name} must match {KEY.pattern}; got {quoted(key)}", field=name)
    return key


def validate_category(category: Any, *, name: str = "category") -> str:
    """``category`` if it is a valid category (1 to 100 characters, no NUL or control characters).

    Raises:
        ValidationFailed: naming ``name``.
    """
    if not isinstance(category, str) or not category.strip():
        raise ValidationFailed(f"{name} must be a non-empty string", field=name)
    if len(category) > MAX_CATEGORY_LENGTH:
        raise ValidationFailed(f"{name} is at most {MAX_CATEGORY_LENGTH} characters long", field=name)
    if any(ord(c) < 32 for c in category):
        raise ValidationFailed(f"{name} must not contain control characters", field=name)
    return category


def validate_language(language: Any, *, name: str = "language") -> str:
    """``language`` if it is a valid language code (``en``, ``de-AT``, ``pt_BR``; at most 10 characters).

    Raises:
        ValidationFailed: naming ``name``.
    """
    if not isinstance(language, str) or not language:
        raise ValidationFailed(f"{name} must be a non-empty language code", field=name)
    if len(language) > MAX_LANGUAGE_LENGTH:
        raise ValidationFailed(f"{name} is at most {MAX_LANGUAGE_LENGTH} characters long", field=name)
    if not LANGUAGE.fullmatch(language):
        raise ValidationFailed(f"{name} must match {LANGUAGE.pattern}; got {quoted(language)}", field=name)
    return language


def new_message(
    key: str,
    *,
    category: Any,
    default_language: Any,
    translations: Any,
    variables: Any = (),
    escape_html: Any = True,
) -> Message:
    """A validated message.

    Raises:
        ValidationFailed: a field is invalid (named in ``field``), a template uses an undeclared
            variable, the default language has no translation, or a template is larger than
            10 KiB of UTF-8.
    """
    key = validate_key(key)
    category = validate_category(category)
    default_language = validate_language(default_language, name="defaultLanguage")
    if not isinstance(escape_html, bool):
        raise ValidationFailed("escapeHtml must be a boolean", field="escapeHtml")
    declared = _variables(variables)
    if not isinstance(translations, Mapping) or not translations:
        raise ValidationFailed(
            "translations must be a non-empty object of language: template", field="translations"
        )
    if len(translations) > MAX_TRANSLATIONS:
        raise ValidationFailed(f"at most {MAX_TRANSLATIONS} translations", field="translations")
    checked: dict[str, str] = {}
    for language, template in translations.items():
        where = f"translations.{str(language)[: MAX_LANGUAGE_LENGTH + 1]}"
        validate_language(language, name=where)
        checked[language] = _template(template, where, declared)
    if default_language not in checked:
        raise ValidationFailed(
            f"defaultLanguage {default_language!r} has no translation", field="defaultLanguage"
        )
    return Message(key, category, default_language, checked, declared, escape_html)


def _variables(variables: Any) -> tuple[str, ...]:
    if variables is None:
        return ()
    if isinstance(variables, str | bytes) or not isinstance(variables, Sequence):
        raise ValidationFailed("variables must be a list of names", field="variables")
    if len(variables) > MAX_VARIABLES:
        raise ValidationFailed(f"at most {MAX_VARIABLES} variables", field="variables")
    names: list[str] = []
    for i, name in enumerate(variables):
        if not isinstance(name, str) or len(name) > MAX_VARIABLE_NAME_LENGTH or not VARIABLE.fullmatch(name):
            raise ValidationFailed(
                f"variables[{i}] must be an identifier ({VARIABLE.pattern}, at most "
                f"{MAX_VARIABLE_NAME_LENGTH} characters); got {quoted(name)}",
                field=f"variables[{i}]",
            )
        if name not in names:
            names.append(name)
    return tuple(names)


def _template(template: Any, where: str, declared: tuple[str, ...]) -> str:
    if not isinstance(template, str):
        raise ValidationFailed(f"{where} must be a string", field=where)
    if len(template.encode("utf-8", errors="surrogatepass")) > MAX_TEMPLATE_BYTES:
        raise ValidationFailed(
            f"{where} is larger than {MAX_TEMPLATE_BYTES // 1024} KiB of UTF-8", field=where
        )
    if "\x00" in template:
        raise ValidationFailed(f"{where} must not contain NUL characters", field=where)
    try:
        template.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationFailed(f"{where} is not valid Unicode text", field=where) from None
    for used in PLACEHOLDER.findall(template):
        if used not in declared:
            raise ValidationFailed(f"{where} uses the undeclared variable {used!r}", field=where)
    return template


def validate_variables(values: Any) -> dict[str, str]:
    """The variable values of a resolve request, as text (strings, numbers and booleans only).

    Raises:
        ValidationFailed: a value is not a scalar or is longer than 10 KiB.
    """
    if values is None:
        return {}
    if not isinstance(values, Mapping):
        raise ValidationFailed("variables must be an object of name: value", field="variables")
    texts: dict[str, str] = {}
    for name, value in values.items():
        where = f"variables.{str(name)[:MAX_VARIABLE_NAME_LENGTH]}"
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, int):
            text = str(value)
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise ValidationFailed(f"{where} must be a finite number", field=where)
            text = repr(value)
        elif isinstance(value, str):
            text = value
        else:
            raise ValidationFailed(f"{where} must be a string, number or boolean", field=where)
        if len(text) > MAX_VALUE_LENGTH:
            raise ValidationFailed(f"{where} is at most {MAX_VALUE_LENGTH} characters long", field=where)
        texts[str(name)] = text
    return texts


def render(template: str, values: Mapping[str, str], *, escape_html: bool = True) -> str:
    """``template`` with each ``{{name}}`` replaced by its value (HTML-escaped unless opted out).

    A placeholder without a value is left as written. Replacement is one pass, so a value that
    itself looks like a placeholder is not expanded again.
    """

    def substitute(match: re.Match[str]) -> str:
        value = values.get(match.group(1))
        if value is None:
            return match.group(0)
        return html.escape(value, quote=True) if escape_html else value

    return PLACEHOLDER.sub(substitute, template)


def _normalised(language: str) -> str:
    return language.replace("_", "-").lower()


def pick_language(message: Message, requested: str | None) -> str:
    """The translation to use: the requested language, its base language, else the default.

    Matching ignores case and treats ``_`` like ``-`` (``pt_BR`` finds ``pt-br``); ``de-AT`` falls
    back to ``de`` before the default language.
    """
    if requested:
        by_code = {_normalised(code): code for code in message.translations}
        wanted = _normalised(requested)
        candidates = [wanted]
        while "-" in wanted:
            wanted = wanted.rsplit("-", 1)[0]
            candidates.append(wanted)
        for candidate in candidates:
            if candidate in by_code:
                return by_code[candidate]
    return message.default_language


def resolve(key: str, message: Message | None, language: str | None, values: Mapping[str, str]) -> Resolved:
    """Render ``message`` in ``language`` (falling back as :func:`pick_language`), or the key itself."""
    if message is None:
        return Resolved(key=key, text=key, language=None, found=False)
    chosen = pick_language(message, language)
    template = message.translations.get(chosen)
    if template is None:  # a stored row without its default translation: not written by this service
        return Resolved(key=key, text=key, language=None, found=False)
    return Resolved(key, render(template, values, escape_html=message.escape_html), chosen, True)


def validate_resolve_keys(keys: Any) -> list[str]:
    """The distinct keys of a resolve request, in order (at most 1000, each a valid key).

    Raises:
        ValidationFailed: too many keys or an invalid one (named ``keys[i]``).
    """
    if not isinstance(keys, Sequence) or isinstance(keys, str | bytes):
        raise ValidationFailed("keys must be a list of message keys", field="keys")
    if len(keys) > MAX_RESOLVE_KEYS:
        raise ValidationFailed(f"at most {MAX_RESOLVE_KEYS} keys per request", field="keys")
    seen: dict[str, None] = {}
    for i, key in enumerate(keys):
        seen[validate_key(key, name=f"keys[{i}]")] = None
    return list(seen)


def page_bounds(page: int, page_size: int) -> tuple[int, int]:
    """``(offset, limit)`` of a 1-based page; page sizes above 1000 are capped.

    Raises:
        ValidationFailed: page or pageSize out of range.
    """
    if not 1 <= page <= MAX_PAGE:
        raise ValidationFailed(f"page must be between 1 and {MAX_PAGE}", field="page")
    if page_size < 1:
        raise ValidationFailed("pageSize must be at least 1", field="pageSize")
    limit = min(page_size, MAX_PAGE_SIZE)
    return (page - 1) * limit, limit
