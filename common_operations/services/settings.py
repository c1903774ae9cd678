"""Settings groups: admin read and partial update with optimistic concurrency, public read.

Reads are served from the Redis cache when it has the group (a versioned entry that never goes
backwards, see :mod:`common_operations.infra.versioned_cache`) and from Postgres otherwise. A change
is validated per key against the group's schema, then written with its audit rows (``settings_audit``
and ``admin_audit_log``, secrets masked in the latter) and its ``settings.changed`` event in one
transaction; the cache gets the new version after the commit.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from common_operations.db.audit_repository import AuditEntry
from common_operations.db.settings_repository import GroupChange, SettingsRepository, StoredGroup
from common_operations.domain.authorization import require_settings_reader
from common_operations.domain.errors import SettingsGroupNotFound, quoted
from common_operations.domain.preconditions import VersionCondition
from common_operations.domain.principal import Principal, require_admin
from common_operations.domain.settings_schema import GroupSchema
from common_operations.infra.versioned_cache import VersionedCache
from common_operations.services.limits import TaskLimits

# What the admin audit log shows instead of a value the schema marks secret.
SECRET_MASK: Final = "***"


@dataclass(frozen=True, slots=True)
class SettingsView:
    """A group's values (every key, defaults filled in) at a version (the ETag)."""

    group: str
    values: dict[str, Any]
    version: int


@dataclass(frozen=True, slots=True)
class SettingsUpdate:
    """The outcome of an update: the new view and whether anything changed."""

    view: SettingsView
    changed: bool
    changed_keys: tuple[str, ...]


class SettingsService:
    """The settings groups declared in ``settings_groups.schemas_dir``."""

    def __init__(
        self,
        repository: SettingsRepository,
        schemas: Mapping[str, GroupSchema],
        cache: VersionedCache,
        *,
        limits: TaskLimits | None = None,
    ) -> None:
        """Serve ``schemas``' groups from ``repository`` through ``cache``.

        ``limits``: the rate limits; an update takes a token of the caller's ``admin`` bucket.
        """
        self._repository = repository
        self._schemas = dict(schemas)
        self._cache = cache
        self._limits = limits or TaskLimits()

    @property
    def groups(self) -> list[str]:
        """The declared group names."""
        return sorted(self._schemas)

    async def get(self, principal: Principal, group: str) -> SettingsView:
        """Every key of ``group`` (admins and operators; changing it is for admins only).

        Raises:
            PermissionDenied: the caller is neither an admin nor an operator.
            SettingsGroupNotFound: no such group is declared.
        """
        require_settings_reader(principal, f"the {group[:100]} settings group")
        schema = self._schema(group)
        stored = await self._read(group)
        return SettingsView(group, schema.effective(stored.values), stored.version)

    async def get_public(self, group: str) -> SettingsView:
        """The keys of ``group`` marked public (anyone).

        Raises:
            SettingsGroupNotFound: no such group is declared.
        """
        schema = self._schema(group)
        stored = await self._read(group)
        return SettingsView(group, schema.public_view(schema.effective(stored.values)), stored.version)

    async def update(
        self,
        principal: Principal,
        group: str,
        patch: Mapping[str, Any],
        condition: VersionCondition | None = None,
    ) -> SettingsUpdate:
        """Change some keys of ``group``; the others keep their values (admins only).

        Setting keys to the values they already have changes nothing: no new version, no audit row,
        no event. The audit rows hold the whole group before and after (``admin_audit_log``: with
        the values of ``secret`` keys masked); the event names the changed keys and carries their
        new values, except keys the schema marks ``secret``.

        Args:
            principal: the caller.
            group: the group.
            patch: the keys to set (validated one by one, no type coercion).
            condition: ``If-Match``; None applies the change to whatever version is current.

        Raises:
            PermissionDenied: the caller is not an admin.
            SettingsGroupNotFound: no such group is declared.
            ValidationFailed: an unknown key or invalid value (named in ``field``).
            PreconditionFailed: the group's version is not the one the condition names.
            RateLimited: the caller's ``admin`` bucket is empty.
        """
        require_admin(principal, f"the {group[:100]} settings group")
        await self._limits.check(principal, "admin")
        schema = self._schema(group)
        checked = schema.validate_patch(patch)
        changed_keys: list[str] = []

        def decide(current: StoredGroup) -> GroupChange | None:
            if condition is not None:
                # The group always exists (at its defaults), so `*` matches any version.
                condition.check(current.version, what=f"settings group {group!r}")
            before = schema.effective(current.values)
            changed_keys.extend(
                k for k, v in checked.items() if before[k] != v or type(before[k]) is not type(v)
            )
            if not changed_keys:
                return None
            after = {**before, **{k: checked[k] for k in changed_keys}}
            explicit = {k: v for k, v in current.values.items() if k in schema.fields}
            return GroupChange(
                values={**explicit, **{k: checked[k] for k in changed_keys}},
                audit_old=before,
                audit_new=after,
                event={
                    "group": group,
                    "changedKeys": list(changed_keys),
                    "values": schema.event_values({k: after[k] for k in changed_keys}),
                    "changedBy": principal.subject,
                },
                admin_audit=AuditEntry(
                    "settings.update",
                    "settings",
                    group,
                    old_state=_masked(schema, before),
                    new_state=_masked(schema, after),
                    metadata={"changedKeys": list(changed_keys)},
                ),
            )

        stored, changed = await self._repository.change(
            group,
            changed_by=principal.subject,
            is_public=bool(schema.public_fields),
            decide=decide,
            actor=principal,
        )
        await self._cache.put(group, stored.version, stored.values, after_change=changed)
        view = SettingsView(group, schema.effective(stored.values), stored.version)
        return SettingsUpdate(view, changed, tuple(changed_keys))

    async def _read(self, group: str) -> StoredGroup:
        cached = await self._cache.get(group)
        if cached is not None and isinstance(cached[1], dict):
            return StoredGroup(values=cached[1], version=cached[0])
        stored = await self._repository.read(group)
        await self._cache.put(group, stored.version, stored.values)
        return stored

    def _schema(self, group: str) -> GroupSchema:
        schema = self._schemas.get(group)
        if schema is None:
            raise SettingsGroupNotFound(
                f"no settings group {quoted(group)}; declared: {', '.join(self.groups) or 'none'}",
                group=group[:100],
            )
        return schema


def _masked(schema: GroupSchema, values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` with every key the schema marks secret shown as :data:`SECRET_MASK`."""
    return {
        name: SECRET_MASK if name in schema.fields and schema.fields[name].secret else value
        for name, value in values.items()
    }
