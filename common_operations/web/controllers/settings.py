"""Payment settings endpoints (seed routes); answered with 501 until the settings service lands."""

from __future__ import annotations

from litestar import Controller, get, put
from litestar.exceptions import HTTPException

from common_operations.web.errors import problem_responses

_NOT_IMPLEMENTED = problem_responses(501)


def _not_implemented() -> HTTPException:
    return HTTPException(status_code=501, detail="payment settings are not implemented yet")


class PaymentSettingsController(Controller):
    """``/api/v1/settings/payment`` (admin read and write)."""

    path = "/api/v1/settings/payment"
    tags = ["Settings"]  # noqa: RUF012 - Litestar reads this class attribute as is

    @get("/", operation_id="GetPaymentSettings", responses=_NOT_IMPLEMENTED, sync_to_thread=False)
    def get_settings(self) -> None:
        """Not implemented yet: 501 ``NOT_IMPLEMENTED``."""
        raise _not_implemented()

    @put("/", operation_id="UpdatePaymentSettings", responses=_NOT_IMPLEMENTED, sync_to_thread=False)
    def update_settings(self) -> None:
        """Not implemented yet: 501 ``NOT_IMPLEMENTED``."""
        raise _not_implemented()


class PublicPaymentSettingsController(Controller):
    """``/api/v1/public/settings/payment`` (public read)."""

    path = "/api/v1/public/settings/payment"
    tags = ["Settings"]  # noqa: RUF012 - Litestar reads this class attribute as is

    @get("/", operation_id="GetPublicPaymentSettings", responses=_NOT_IMPLEMENTED, sync_to_thread=False)
    def get_public_settings(self) -> None:
        """Not implemented yet: 501 ``NOT_IMPLEMENTED``."""
        raise _not_implemented()
