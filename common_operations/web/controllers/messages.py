"""The messages catalogue over HTTP (``/api/v1/messages``): read, admin upsert and delete, resolve.

Authorisation is the service's (admin role for changes), not this module's.
"""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, Response, delete, get, post, put
from litestar.datastructures import ResponseHeader
from litestar.params import FromPath, HeaderParameter, JSONBody, QueryParameter

from common_operations.domain.errors import ServiceUnavailable
from common_operations.domain.messages import DEFAULT_PAGE_SIZE
from common_operations.domain.preconditions import etag, parse_if_match
from common_operations.services.messages import MessagesService
from common_operations.web.dependencies import Call, CallContext
from common_operations.web.errors import problem_responses
from common_operations.web.settings_schemas import (
    DeleteMessageResponse,
    MessageListResponse,
    MessageOut,
    ResolveMessagesRequest,
    ResolveMessagesResponse,
    UpsertMessageRequest,
    message_out,
    resolved_out,
)

MESSAGE = "/{key:str}"
ETAG_HEADER = [
    ResponseHeader(name="ETag", documentation_only=True, description="the message's version, quoted")
]
IfMatch = Annotated[
    str | None,
    HeaderParameter(
        name="If-Match",
        description='the ETag read before (e.g. "3"; `*`: the message must exist); a stale one is '
        "answered 412 and changes nothing. Absent: unconditional.",
    ),
]


def _service(call: CallContext) -> MessagesService:
    if call.messages is None:
        raise ServiceUnavailable("the messages catalogue is not configured in this process")
    return call.messages


class MessagesController(Controller):
    """i18n message templates: ``{{name}}`` placeholders, translations per language code."""

    path = "/api/v1/messages"
    tags = ["Messages"]  # noqa: RUF012 - Litestar reads this class attribute as is

    @get(
        "/",
        operation_id="ListMessages",
        summary="List messages",
        responses=problem_responses(400, 401, 429, 503),
    )
    async def list_messages(
        self,
        call: Call,
        category: Annotated[str | None, QueryParameter(description="only this category")] = None,
        page: Annotated[int, QueryParameter(description="1-based page number")] = 1,
        page_size: Annotated[
            int, QueryParameter(name="pageSize", description="messages per page (at most 1000)")
        ] = DEFAULT_PAGE_SIZE,
    ) -> MessageListResponse:
        """Messages ordered by key, optionally of one category; ``total`` counts all that match."""
        found = await _service(call).page(category, page, page_size)
        return MessageListResponse(messages=[message_out(m) for m in found.messages], total=found.total)

    @get(
        MESSAGE,
        operation_id="GetMessage",
        summary="Get a message",
        response_headers=ETAG_HEADER,
        responses=problem_responses(400, 401, 404, 429, 503),
    )
    async def get_message(self, key: FromPath[str], call: Call) -> Response[MessageOut]:
        """One message by key."""
        message = await _service(call).get(key)
        return Response(message_out(message), headers={"ETag": etag(message.version)})

    @put(
        MESSAGE,
        operation_id="UpsertMessage",
        summary="Create or replace a message",
        response_headers=ETAG_HEADER,
        responses=problem_responses(400, 401, 403, 412, 413, 429, 503),
    )
    async def upsert_message(
        self, key: FromPath[str], data: JSONBody[UpsertMessageRequest], call: Call, if_match: IfMatch = None
    ) -> Response[MessageOut]:
        """Admin role. Key: ``^[A-Za-z0-9_.:-]+$``, at most 255 characters; category at most 100.

        Language codes: ``^[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8})*$``, at most 10 characters; each
        template at most 10 KiB of UTF-8; ``defaultLanguage`` must have a translation. Templates use
        ``{{name}}`` placeholders, and each must be declared in ``variables``. The same content again
        changes nothing (same version, no event); a change publishes ``messages.changed``.
        """
        fields = {
            "category": data.category,
            "defaultLanguage": data.default_language,
            "translations": data.translations,
            "variables": data.variables,
            "escapeHtml": data.escape_html,
        }
        message, _ = await _service(call).upsert(call.principal, key, fields, parse_if_match(if_match))
        return Response(message_out(message), headers={"ETag": etag(message.version)})

    @delete(
        MESSAGE,
        operation_id="DeleteMessage",
        summary="Delete a message",
        status_code=200,
        responses=problem_responses(400, 401, 403, 404, 412, 429, 503),
    )
    async def delete_message(
        self, key: FromPath[str], call: Call, if_match: IfMatch = None
    ) -> DeleteMessageResponse:
        """Admin role; publishes ``messages.changed`` with ``action: delete``."""
        deleted = await _service(call).delete(call.principal, key, parse_if_match(if_match))
        return DeleteMessageResponse(success=True, version=deleted.version)

    @post(
        "/resolve",
        operation_id="ResolveMessages",
        summary="Render messages in a language",
        status_code=200,
        responses=problem_responses(400, 401, 413, 429, 503),
    )
    async def resolve_messages(
        self, data: JSONBody[ResolveMessagesRequest], call: Call
    ) -> ResolveMessagesResponse:
        """Up to 1000 keys (distinct, each a message key) rendered with ``variables``.

        Each key falls back from the requested language to its base language (``de-AT`` → ``de``), to
        the message's default language, and finally to the key itself (``found: false``). Values are
        HTML-escaped unless the message has ``escapeHtml: false``; a placeholder without a value is
        left as written. No identity needed.
        """
        resolved = await _service(call).resolve(data.keys, data.language, data.variables)
        return resolved_out(resolved)
