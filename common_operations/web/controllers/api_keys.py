"""API keys over HTTP (``/api/v1/admin/api-keys``): create (the key is shown once), list, revoke.

Admin role; the rules are :class:`~common_operations.services.api_keys.ApiKeysService`'s, this module
only decodes and encodes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec
from litestar import Controller, delete, get, post
from litestar.datastructures import State
from litestar.params import FromPath, JSONBody, QueryParameter

from common_operations.db.api_keys_repository import ApiKeyRecord
from common_operations.domain.errors import ServiceUnavailable
from common_operations.services.api_keys import (
    DEFAULT_PAGE_SIZE,
    MAX_DESCRIPTION_LENGTH,
    MAX_PRINCIPAL_LENGTH,
    MAX_ROLES,
    ApiKeysService,
)
from common_operations.web.dependencies import Call
from common_operations.web.errors import problem_responses
from common_operations.web.schemas import Schema


class CreateApiKeyRequest(Schema):
    """Body of ``POST /api/v1/admin/api-keys``."""

    principal: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_PRINCIPAL_LENGTH)]
    roles: Annotated[list[str], msgspec.Meta(max_length=MAX_ROLES)]
    description: Annotated[str, msgspec.Meta(max_length=MAX_DESCRIPTION_LENGTH)] = ""
    expires_at: datetime | None = None


class ApiKeyOut(Schema):
    """An API key as admins see it: never the key, never its hash."""

    id: str
    prefix: str
    principal: str
    roles: list[str]
    description: str
    created_by: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    revoked_by: str | None
    last_used_at: datetime | None


class CreatedApiKeyOut(Schema):
    """Answer of a create: the key record and ``key``, the secret shown this once."""

    api_key: ApiKeyOut
    key: str
    warning: str = "store the key now: it is not shown again and cannot be recovered"


class ApiKeyListResponse(Schema):
    """A page of keys (newest first) and the total matching."""

    api_keys: list[ApiKeyOut]
    total: int
    page: int
    page_size: int


def api_key_out(record: ApiKeyRecord) -> ApiKeyOut:
    """The admin view of a stored key."""
    return ApiKeyOut(
        id=str(record.id),
        prefix=record.prefix,
        principal=record.principal,
        roles=list(record.roles),
        description=record.description,
        created_by=record.created_by,
        created_at=record.created_at,
        expires_at=record.expires_at,
        revoked_at=record.revoked_at,
        revoked_by=record.revoked_by,
        last_used_at=record.last_used_at,
    )


def _service(state: State) -> ApiKeysService:
    runtime = state.get("runtime")
    service = getattr(runtime, "api_keys", None)
    if not isinstance(service, ApiKeysService):
        raise ServiceUnavailable("API keys are not configured in this process")
    return service


class ApiKeysController(Controller):
    """Keys for services that hold no user token: ``x-api-key: co_<prefix>_<secret>``."""

    path = "/api/v1/admin/api-keys"
    tags = ["Admin"]  # noqa: RUF012 - Litestar reads this class attribute as is

    @post(
        "/",
        operation_id="CreateApiKey",
        summary="Create an API key",
        status_code=201,
        responses=problem_responses(400, 401, 403, 503),
    )
    async def create_api_key(
        self, data: JSONBody[CreateApiKeyRequest], call: Call, state: State
    ) -> CreatedApiKeyOut:
        """Admin role. A key for ``principal`` with ``roles``; the answer's ``key`` is shown only now.

        ``principal``: 1 to 255 characters, no control characters. ``roles``: at most 20, each
        ``[a-z0-9_.-]{1,64}`` (admin, operator, service, viewer, or your own). ``expiresAt``: an
        instant in the future (omitted: the key does not expire). Written to the admin audit log
        (``api_key.create``), without the key.
        """
        created = await _service(state).create(
            call.principal,
            data.principal,
            data.roles,
            description=data.description,
            expires_at=data.expires_at,
        )
        return CreatedApiKeyOut(api_key=api_key_out(created.record), key=created.key)

    @get(
        "/",
        operation_id="ListApiKeys",
        summary="List API keys",
        responses=problem_responses(400, 401, 403, 503),
    )
    async def list_api_keys(
        self,
        call: Call,
        state: State,
        page: Annotated[int, QueryParameter(description="1-based page number")] = 1,
        page_size: Annotated[
            int, QueryParameter(name="pageSize", description="keys per page (at most 1000)")
        ] = DEFAULT_PAGE_SIZE,
        include_revoked: Annotated[
            bool, QueryParameter(name="includeRevoked", description="list revoked keys too")
        ] = False,
    ) -> ApiKeyListResponse:
        """Admin role. Keys newest first with their prefix, principal, roles and last use; no secrets."""
        found = await _service(state).list_keys(
            call.principal, include_revoked=include_revoked, page=page, page_size=page_size
        )
        return ApiKeyListResponse(
            api_keys=[api_key_out(k) for k in found.keys],
            total=found.total,
            page=found.page,
            page_size=found.page_size,
        )

    @delete(
        "/{key_id:str}",
        operation_id="RevokeApiKey",
        summary="Revoke an API key",
        status_code=200,
        responses=problem_responses(400, 401, 403, 404, 503),
    )
    async def revoke_api_key(self, key_id: FromPath[str], call: Call, state: State) -> ApiKeyOut:
        """Admin role. The key (by id or prefix) stops working at once; answered with the revoked key.

        Revoking a revoked key changes nothing and answers it as it is (a retried revoke succeeds).
        Written to the admin audit log (``api_key.revoke``).
        """
        return api_key_out(await _service(state).revoke(call.principal, key_id))
