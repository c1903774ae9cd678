"""Request and response bodies of the settings and messages endpoints."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from common_operations.domain.messages import Message, Resolved
from common_operations.web.schemas import Schema


class UpdateSettingsResponse(Schema):
    """Answer of ``PUT /api/v1/settings/{group}`` (seed: ``{success, message}``; ``version`` added)."""

    success: bool
    message: str
    version: int
    changed_keys: list[str]


class MessageOut(Schema):
    """A message template with its translations (``{{name}}`` placeholders)."""

    key: str
    category: str
    default_language: str
    translations: dict[str, str]
    variables: list[str]
    escape_html: bool
    version: int
    created_at: datetime | None
    updated_at: datetime | None


class MessageListResponse(Schema):
    """A page of messages (ordered by key) and the total matching the filter."""

    messages: list[MessageOut]
    total: int


class UpsertMessageRequest(Schema):
    """Body of ``PUT /api/v1/messages/{key}``: the whole message (a replace, not a patch)."""

    category: str
    default_language: str
    translations: dict[str, str]
    variables: list[str] = []  # noqa: RUF012 - msgspec copies mutable defaults per instance
    escape_html: bool = True


class DeleteMessageResponse(Schema):
    """Answer of ``DELETE /api/v1/messages/{key}``."""

    success: bool
    version: int


class ResolveMessagesRequest(Schema):
    """Body of ``POST /api/v1/messages/resolve``.

    ``language`` omitted: each message's default language. ``variables`` values are strings,
    numbers or booleans.
    """

    keys: list[str]
    language: str | None = None
    variables: dict[str, Any] = {}  # noqa: RUF012 - msgspec copies mutable defaults per instance


class ResolvedOut(Schema):
    """One rendered message; ``found`` false means the text is the key itself."""

    text: str
    language: str | None
    found: bool


class ResolveMessagesResponse(Schema):
    """Rendered messages by key (each requested key once)."""

    messages: dict[str, ResolvedOut]


def message_out(message: Message) -> MessageOut:
    """The wire form of a message."""
    return MessageOut(
        key=message.key,
        category=message.category,
        default_language=message.default_language,
        translations=dict(message.translations),
        variables=list(message.variables),
        escape_html=message.escape_html,
        version=message.version,
        created_at=message.created_at,
        updated_at=message.updated_at,
    )


def resolved_out(resolved: list[Resolved]) -> ResolveMessagesResponse:
    """The wire form of a resolve answer."""
    return ResolveMessagesResponse(
        messages={r.key: ResolvedOut(text=r.text, language=r.language, found=r.found) for r in resolved}
    )
