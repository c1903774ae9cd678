"""Settings groups over HTTP: admin ``GET|PUT /api/v1/settings/{group}``, public reads.

``GET /api/v1/public/settings/{group}`` needs no identity. The groups are declared in
``configs/settings/<group>.yaml``; these handlers are generic. The seed's payment routes keep
their own operation ids (``GetPaymentSettings``, ``UpdatePaymentSettings``,
``GetPublicPaymentSettings``) and answer exactly like the generic ones with ``group=payment``.
Authorisation is the service's (admin role), not this module's.
"""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Response, get, put
from litestar.datastructures import ResponseHeader
from litestar.params import FromPath, HeaderParameter, JSONBody

from common_operations.domain.errors import ServiceUnavailable
from common_operations.domain.preconditions import etag, parse_if_match
from common_operations.services.settings import SettingsService
from common_operations.web.dependencies import PUBLIC, Call, CallContext
from common_operations.web.errors import problem_responses
from common_operations.web.settings_schemas import UpdateSettingsResponse

PAYMENT = "payment"
ETAG_HEADER = [
    ResponseHeader(
        name="ETag",
        documentation_only=True,
        description='the group\'s version, quoted ("0": never changed); send it back in If-Match',
    )
]
IfMatch = Annotated[
    str | None,
    HeaderParameter(
        name="If-Match",
        description='the ETag read before (e.g. "7"); a stale one is answered 412 and changes nothing. '
        "Absent: the change applies to whatever version is current.",
    ),
]
SettingsValues = dict[str, Any]


def _service(call: CallContext) -> SettingsService:
    if call.settings is None:
        raise ServiceUnavailable("settings groups are not configured in this process")
    return call.settings


async def _read(call: CallContext, group: str) -> Response[SettingsValues]:
    view = await _service(call).get(call.principal, group)
    return Response(view.values, headers={"ETag": etag(view.version)})


async def _read_public(call: CallContext, group: str) -> Response[SettingsValues]:
    view = await _service(call).get_public(group)
    return Response(view.values, headers={"ETag": etag(view.version)})


async def _update(
    call: CallContext, group: str, data: SettingsValues, if_match: str | None
) -> Response[UpdateSettingsResponse]:
    result = await _service(call).update(call.principal, group, data, parse_if_match(if_match))
    if result.changed:
        message = f"{group} settings updated ({', '.join(result.changed_keys)})"
    else:
        message = f"{group} settings unchanged (the values were already set)"
    body = UpdateSettingsResponse(
        success=True, message=message, version=result.view.version, changed_keys=list(result.changed_keys)
    )
    return Response(body, headers={"ETag": etag(result.view.version)})


GET_DOC = "Every key of the group, defaults filled in; `ETag` is the group's version. Admin or operator role."
PUT_DOC = (
    "Partial update: only the keys given change, each validated against the group's schema (unknown "
    "key or wrong type: 400 naming the key; no type coercion). `If-Match` with a stale ETag: 412, "
    "nothing changed. Values equal to the current ones change nothing (no new version, audit row or "
    "event). Every change writes a `settings_audit` row and a `settings.changed` event. Admin role."
)
PUBLIC_DOC = "Only the keys the group's schema marks public. No identity needed."


class PaymentSettingsController(Controller):
    """``/api/v1/settings/payment`` (seed routes, admin read and write)."""

    path = "/api/v1/settings/payment"
    tags = ["Settings"]  # noqa: RUF012 - Litestar reads this class attribute as is

    @get(
        "/",
        operation_id="GetPaymentSettings",
        summary="Get the payment settings",
        description=GET_DOC,
        response_headers=ETAG_HEADER,
        responses=problem_responses(401, 403, 429, 503),
    )
    async def get_settings(self, call: Call) -> Response[SettingsValues]:
        """The payment settings (admin)."""
        return await _read(call, PAYMENT)

    @put(
        "/",
        operation_id="UpdatePaymentSettings",
        summary="Change some payment settings",
        description=PUT_DOC,
        response_headers=ETAG_HEADER,
        responses=problem_responses(400, 401, 403, 412, 413, 429, 503),
    )
    async def update_settings(
        self, data: JSONBody[SettingsValues], call: Call, if_match: IfMatch = None
    ) -> Response[UpdateSettingsResponse]:
        """Partial update of the payment settings (admin)."""
        return await _update(call, PAYMENT, data, if_match)


class PublicPaymentSettingsController(Controller):
    """``/api/v1/public/settings/payment`` (seed route, public read)."""

    path = "/api/v1/public/settings/payment"
    tags = ["Settings"]  # noqa: RUF012 - Litestar reads this class attribute as is

    @get(
        "/",
        operation_id="GetPublicPaymentSettings",
        summary="Get the public payment settings",
        description=PUBLIC_DOC,
        response_headers=ETAG_HEADER,
        responses=problem_responses(503),
        opt=PUBLIC,
    )
    async def get_public_settings(self, call: Call) -> Response[SettingsValues]:
        """The payment methods offered (anyone)."""
        return await _read_public(call, PAYMENT)


class SettingsController(Controller):
    """``/api/v1/settings/{group}`` and ``/api/v1/public/settings/{group}`` for every declared group."""

    path = "/api/v1"
    tags = ["Settings"]  # noqa: RUF012 - Litestar reads this class attribute as is

    @get(
        "/settings/{group:str}",
        operation_id="GetSettings",
        summary="Get a settings group",
        description=GET_DOC,
        response_headers=ETAG_HEADER,
        responses=problem_responses(401, 403, 404, 429, 503),
    )
    async def get_settings(self, group: FromPath[str], call: Call) -> Response[SettingsValues]:
        """A settings group (admin); unknown group: 404."""
        return await _read(call, group)

    @put(
        "/settings/{group:str}",
        operation_id="UpdateSettings",
        summary="Change some settings of a group",
        description=PUT_DOC,
        response_headers=ETAG_HEADER,
        responses=problem_responses(400, 401, 403, 404, 412, 413, 429, 503),
    )
    async def update_settings(
        self, group: FromPath[str], data: JSONBody[SettingsValues], call: Call, if_match: IfMatch = None
    ) -> Response[UpdateSettingsResponse]:
        """Partial update of a settings group (admin); unknown group: 404."""
        return await _update(call, group, data, if_match)

    @get(
        "/public/settings/{group:str}",
        operation_id="GetPublicSettings",
        summary="Get the public keys of a settings group",
        description=PUBLIC_DOC,
        response_headers=ETAG_HEADER,
        responses=problem_responses(404, 503),
        opt=PUBLIC,
    )
    async def get_public_settings(self, group: FromPath[str], call: Call) -> Response[SettingsValues]:
        """The public keys of a settings group (anyone); unknown group: 404."""
        return await _read_public(call, group)
