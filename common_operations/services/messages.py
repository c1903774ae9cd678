"""The messages catalogue: read, admin upsert and delete, and batch resolve with fallbacks.

Messages are cached in Redis by key (versioned entries, refreshed after every change, a tombstone
on delete); Postgres answers whatever the cache does not hold, and everything works without Redis.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from common_operations.db.messages_repository import (
    MessagesRepository,
    message_document,
    message_from_document,
)
from common_operations.domain import messages as rules
from common_operations.domain.errors import MessageNotFound, quoted
from common_operations.domain.messages import Message, MessagePage, Resolved
from common_operations.domain.preconditions import VersionCondition
from common_operations.domain.principal import Principal, require_admin
from common_operations.infra.versioned_cache import VersionedCache
from common_operations.services.limits import TaskLimits


class MessagesService:
    """Message templates and their rendering."""

    def __init__(
        self, repository: MessagesRepository, cache: VersionedCache, *, limits: TaskLimits | None = None
    ) -> None:
        """Serve the catalogue from ``repository`` through ``cache``.

        ``limits``: the rate limits; a change takes a token of the caller's ``admin`` bucket.
        """
        self._repository = repository
        self._cache = cache
        self._limits = limits or TaskLimits()

    async def page(self, category: str | None, page: int, page_size: int) -> MessagePage:
        """A page of the messages of ``category`` (all when None), ordered by key.

        Raises:
            ValidationFailed: a bad category, page or pageSize.
        """
        if category is not None:
            category = rules.validate_category(category)
        offset, limit = rules.page_bounds(page, page_size)
        return await self._repository.page(category, offset, limit)

    async def get(self, key: str) -> Message:
        """The message with ``key``.

        Raises:
            ValidationFailed: the key is malformed.
            MessageNotFound: there is none.
        """
        rules.validate_key(key)
        found = (await self._load([key])).get(key)
        if found is None:
            raise MessageNotFound(f"no message with key {quoted(key)}", key=key)
        return found

    async def upsert(
        self,
        principal: Principal,
        key: str,
        fields: Mapping[str, Any],
        condition: VersionCondition | None = None,
    ) -> tuple[Message, bool]:
        """Create or replace the message ``key`` (admins only).

        Replacing it with the same content changes nothing: no new version, no event, no audit
        row; a change is recorded in ``admin_audit_log`` (``message.upsert``) with the write.

        Args:
            principal: the caller.
            key: the message key.
            fields: ``category``, ``defaultLanguage``, ``translations``, ``variables``, ``escapeHtml``.
            condition: ``If-Match``; ``*`` requires the message to exist.

        Returns:
            The stored message and whether it was created or changed.

        Raises:
            PermissionDenied: the caller is not an admin.
            ValidationFailed: an invalid field (named in ``field``).
            PreconditionFailed: the condition does not hold.
            RateLimited: the caller's ``admin`` bucket is empty.
        """
        require_admin(principal, "changing messages")
        await self._limits.check(principal, "admin")
        message = rules.new_message(
            key,
            category=fields.get("category"),
            default_language=fields.get("defaultLanguage"),
            translations=fields.get("translations"),
            variables=fields.get("variables") or (),
            escape_html=fields.get("escapeHtml", True),
        )

        def decide(current: Message | None) -> bool:
            if condition is not None:
                condition.check(current.version if current else None, what=f"message {key!r}")
            return current is None or not current.same_content(message)

        stored, changed = await self._repository.upsert(
            message, changed_by=principal.subject, decide=decide, actor=principal
        )
        if changed:
            await self._cache.put(key, stored.version, message_document(stored), after_change=True)
        return stored, changed

    async def delete(
        self, principal: Principal, key: str, condition: VersionCondition | None = None
    ) -> Message:
        """Delete the message ``key`` (admins only), recorded in ``admin_audit_log`` (``message.delete``).

        Raises:
            PermissionDenied: the caller is not an admin.
            ValidationFailed: the key is malformed.
            MessageNotFound: there is none (and no condition was given).
            PreconditionFailed: the condition does not hold.
            RateLimited: the caller's ``admin`` bucket is empty.
        """
        require_admin(principal, "changing messages")
        await self._limits.check(principal, "admin")
        rules.validate_key(key)

        def decide(current: Message | None) -> bool:
            if condition is not None:
                condition.check(current.version if current else None, what=f"message {key!r}")
            return current is not None

        deleted = await self._repository.delete(
            key, changed_by=principal.subject, decide=decide, actor=principal
        )
        if deleted is None:
            raise MessageNotFound(f"no message with key {quoted(key)}", key=key)
        # A tombstone newer than the deleted version, not a plain delete: a reader that fetched the
        # message just before the delete cannot put it back (its version is older). A message made
        # again under the key starts at version 1 and is read from Postgres until the tombstone's
        # TTL ends.
        await self._cache.put(key, deleted.version + 1, None, after_change=True)
        return deleted

    async def resolve(self, keys: Sequence[Any], language: str | None, variables: Any) -> list[Resolved]:
        """Render each key in ``language``: requested language → its base → default → the key itself.

        Raises:
            ValidationFailed: too many or malformed keys, a malformed language or variable value.
        """
        wanted = rules.validate_resolve_keys(keys)
        if language is not None:
            language = rules.validate_language(language)
        values = rules.validate_variables(variables)
        found = await self._load(wanted)
        return [rules.resolve(key, found.get(key), language, values) for key in wanted]

    async def _load(self, keys: Sequence[str]) -> dict[str, Message]:
        messages: dict[str, Message] = {}
        missing: list[str] = []
        entries = await self._cache.get_many(list(keys))
        for key in keys:
            cached = entries.get(key)
            if cached is not None and isinstance(cached[1], dict):
                try:
                    messages[key] = message_from_document(cached[1])
                    continue
                except (KeyError, TypeError, ValueError):
                    pass  # an entry of another shape (older release): read it again
            missing.append(key)
        if missing:
            loaded = await self._repository.get_many(missing)
            for key, message in loaded.items():
                messages[key] = message
                await self._cache.put(key, message.version, message_document(message))
        return messages
