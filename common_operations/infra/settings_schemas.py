"""Loading the settings groups' schemas: one YAML file per group in ``settings_groups.schemas_dir``."""

from __future__ import annotations

from pathlib import Path

import yaml

from common_operations.domain.settings_schema import GroupSchema, parse_group_schema


def load_setting_groups(directory: Path) -> dict[str, GroupSchema]:
    """Every ``<group>.yaml`` of ``directory``, parsed and checked (the file name is the group).

    A missing directory declares no groups. A malformed file stops the start with an error naming
    it, rather than surfacing as a 500 on the first request.

    Raises:
        ValueError: a file does not parse or declares an invalid schema.
    """
    groups: dict[str, GroupSchema] = {}
    if not directory.is_dir():
        return groups
    for path in sorted(directory.glob("*.yaml")):
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
            groups[path.stem] = parse_group_schema(path.stem, raw)
        except (yaml.YAMLError, ValueError) as exc:
            raise ValueError(f"{path}: {exc}") from exc
    return groups
