"""Settings group schemas: parsing a declaration, per-key validation, views."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from common_operations.domain.errors import PreconditionFailed, ValidationFailed
from common_operations.domain.preconditions import VersionCondition, etag, parse_if_match
from common_operations.domain.settings_schema import GroupSchema, parse_group_schema
from common_operations.infra.settings_schemas import load_setting_groups

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "settings"


@pytest.fixture
def payment() -> GroupSchema:
    return load_setting_groups(CONFIGS)["payment"]


def test_payment_defaults_and_public_view(payment: GroupSchema) -> None:
    defaults = payment.defaults()
    assert defaults == {
        "stripeEnabled": True,
        "stripePublicKey": "",
        "paypalEnabled": False,
        "codEnabled": True,
        "bankTransferEnabled": True,
    }
    public = payment.public_view(defaults)
    assert "stripePublicKey" not in public
    assert set(public) == {"stripeEnabled", "paypalEnabled", "codEnabled", "bankTransferEnabled"}


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"unknownKey": True}, "unknownKey"),
        ({"stripeEnabled": "true"}, "stripeEnabled"),
        ({"stripeEnabled": 1}, "stripeEnabled"),
        ({"paypalEnabled": None}, "paypalEnabled"),
        ({"stripePublicKey": 42}, "stripePublicKey"),
        ({"stripePublicKey": "sk_live_secret"}, "stripePublicKey"),
        ({"stripePublicKey": "pk_test_" + "a" * 300}, "stripePublicKey"),
        ({"codEnabled": True, "stripePublicKey": "pk_live_x y"}, "stripePublicKey"),
    ],
)
def test_invalid_values_name_the_key(payment: GroupSchema, patch: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        payment.validate_patch(patch)
    assert caught.value.details["field"] == field


def test_valid_patch_and_empty_key(payment: GroupSchema) -> None:
    assert payment.validate_patch({"stripePublicKey": "pk_live_Abc123", "codEnabled": False}) == {
        "stripePublicKey": "pk_live_Abc123",
        "codEnabled": False,
    }
    assert payment.validate_patch({"stripePublicKey": ""}) == {"stripePublicKey": ""}


def test_effective_ignores_unknown_and_no_longer_valid_stored_values(payment: GroupSchema) -> None:
    values = payment.effective({"paypalEnabled": True, "gone": 1, "codEnabled": "yes"})
    assert values["paypalEnabled"] is True
    assert values["codEnabled"] is True  # the default: the stored value is not a bool
    assert "gone" not in values


def test_numbers_enums_and_constraints() -> None:
    schema = parse_group_schema(
        "shipping",
        {
            "fields": {
                "freeAbove": {"type": "number", "default": 50.0, "min": 0, "max": 10000},
                "maxParcels": {"type": "integer", "default": 3, "min": 1},
                "carrier": {"type": "enum", "default": "dhl", "choices": ["dhl", "ups"], "secret": True},
            }
        },
    )
    assert schema.validate_patch({"freeAbove": 10, "maxParcels": 2, "carrier": "ups"})
    bad_patches: list[dict[str, Any]] = [
        {"freeAbove": -1},
        {"freeAbove": True},
        {"maxParcels": 1.5},
        {"maxParcels": 0},
        {"carrier": "fedex"},
    ]
    for bad in bad_patches:
        with pytest.raises(ValidationFailed):
            schema.validate_patch(bad)
    assert schema.event_values({"carrier": "ups", "maxParcels": 2}) == {"maxParcels": 2}


@pytest.mark.parametrize(
    "raw",
    [
        None,
        {"fields": {}},
        {"fields": {"x": {"type": "bool"}}},  # no default
        {"fields": {"x": {"type": "float", "default": 1}}},
        {"fields": {"x": {"type": "bool", "default": "yes"}}},  # default fails its own type
        {"fields": {"x": {"type": "string", "default": "", "pattern": "("}}},
        {"fields": {"x": {"type": "enum", "default": "a"}}},  # no choices
        {"fields": {"x": {"type": "bool", "default": True, "colour": "red"}}},
        {"fields": {"bad key": {"type": "bool", "default": True}}},
    ],
)
def test_malformed_declarations_are_refused(raw: Any) -> None:
    with pytest.raises(ValueError):
        parse_group_schema("group", raw)


def test_loader_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "broken.yaml").write_text("fields: {x: {type: bool}}\n")
    with pytest.raises(ValueError, match=r"broken\.yaml"):
        load_setting_groups(tmp_path)
    assert load_setting_groups(tmp_path / "missing") == {}


def test_if_match_parsing() -> None:
    assert parse_if_match(None) is None
    assert parse_if_match("  ") is None
    assert parse_if_match('"7"') == VersionCondition(frozenset({7}))
    assert parse_if_match('W/"3", "4"') == VersionCondition(frozenset({3, 4}))
    assert parse_if_match("*") == VersionCondition(any_existing=True)
    assert parse_if_match('"abc"') == VersionCondition(frozenset())
    assert etag(0) == '"0"'
    VersionCondition(frozenset({2})).check(2, what="x")
    with pytest.raises(PreconditionFailed):
        VersionCondition(frozenset({2})).check(3, what="x")
    with pytest.raises(PreconditionFailed):
        VersionCondition(any_existing=True).check(None, what="x")
