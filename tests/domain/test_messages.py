"""Message templates: validation limits, rendering, escaping and language fallback."""

from __future__ import annotations

from typing import Any

import pytest

from common_operations.domain import messages as rules
from common_operations.domain.errors import ValidationFailed
from common_operations.domain.messages import Message, new_message, render, resolve


def message(key: str = "greeting.hello", **overrides: Any) -> Message:
    fields: dict[str, Any] = {
        "category": "email",
        "default_language": "en",
        "translations": {"en": "Hello {{name}}", "de": "Hallo {{ name }}", "de-AT": "Servus {{name}}"},
        "variables": ["name"],
    }
    fields.update(overrides)
    return new_message(key, **fields)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"key": "k" * 256}, "key"),
        ({"key": "has space"}, "key"),
        ({"key": "a/b"}, "key"),
        ({"category": "c" * 101}, "category"),
        ({"category": ""}, "category"),
        ({"default_language": "abcdefghijk"}, "defaultLanguage"),
        ({"default_language": "fr"}, "defaultLanguage"),  # no translation in it
        ({"translations": {"en": "x", "abcdefghijk": "y"}}, "translations.abcdefghijk"),
        ({"translations": {"en": "é" * 5121}}, "translations.en"),  # 10,242 bytes of UTF-8
        ({"translations": {"en": "Hi {{who}}"}}, "translations.en"),  # undeclared variable
        ({"translations": {}}, "translations"),
        ({"variables": ["not an identifier"]}, "variables[0]"),
        ({"escape_html": "no"}, "escapeHtml"),
    ],
)
def test_limits_name_the_field(overrides: dict[str, Any], field: str) -> None:
    key = overrides.pop("key", "greeting.hello")
    with pytest.raises(ValidationFailed) as caught:
        message(key=key, **overrides)
    assert caught.value.details["field"] == field


def test_limits_at_the_edge_are_accepted() -> None:
    m = message(key="k" * 255, category="c" * 100, translations={"en": "x" * 10240, "zh-Hant-TW": "y"})
    assert m.key == "k" * 255 and m.translations["zh-Hant-TW"] == "y"
    assert rules.validate_language("pt_BR") == "pt_BR"


def test_render_escapes_unless_opted_out() -> None:
    assert render("Hi {{name}}", {"name": "<script>x</script>"}) == "Hi &lt;script&gt;x&lt;/script&gt;"
    assert render("Hi {{name}}", {"name": "<b>"}, escape_html=False) == "Hi <b>"
    # One pass: a value that looks like a placeholder is not expanded again.
    assert render("{{a}} {{b}}", {"a": "{{b}}", "b": "B"}) == "{{b}} B"
    assert render("Hi {{name}}", {}) == "Hi {{name}}"


def test_fallback_chain() -> None:
    m = message()
    values = {"name": "Ann"}
    assert resolve(m.key, m, "de-AT", values).text == "Servus Ann"
    assert resolve(m.key, m, "de_at", values).language == "de-AT"
    assert resolve(m.key, m, "de-CH", values).text == "Hallo Ann"  # base language
    fr = resolve(m.key, m, "fr", values)
    assert (fr.text, fr.language, fr.found) == ("Hello Ann", "en", True)
    assert resolve(m.key, m, None, values).language == "en"
    missing = resolve("no.such.key", None, "de", values)
    assert (missing.text, missing.language, missing.found) == ("no.such.key", None, False)


def test_resolve_inputs() -> None:
    assert rules.validate_resolve_keys(["a", "b", "a"]) == ["a", "b"]
    with pytest.raises(ValidationFailed):
        rules.validate_resolve_keys(["ok"] * 1001)
    with pytest.raises(ValidationFailed) as caught:
        rules.validate_resolve_keys(["ok", "bad key"])
    assert caught.value.details["field"] == "keys[1]"
    assert rules.validate_variables({"n": 3, "b": True, "s": "x"}) == {"n": "3", "b": "true", "s": "x"}
    with pytest.raises(ValidationFailed):
        rules.validate_variables({"n": {"nested": 1}})
    with pytest.raises(ValidationFailed):
        rules.page_bounds(0, 10)
    assert rules.page_bounds(2, 5000) == (1000, 1000)


def test_same_content() -> None:
    assert message().same_content(message())
    assert not message().same_content(message(escape_html=False))
