"""Resolving the caller from transport metadata.

Until real authentication lands, the platform's gateway passes the caller in trusted headers
(``x-user-id``, ``x-user-roles``). Both transports call :func:`principal_from_headers`, so swapping in
token verification later touches this module only.
"""

from __future__ import annotations

from collections.abc import Mapping

from common_operations.domain.principal import ANONYMOUS, Principal

USER_HEADER = "x-user-id"
ROLES_HEADER = "x-user-roles"


def principal_from_headers(headers: Mapping[str, str]) -> Principal:
    """The caller named by the headers (lower-case names), or the anonymous principal."""
    subject = (headers.get(USER_HEADER) or "").strip()
    if not subject:
        return ANONYMOUS
    roles = frozenset(r.strip() for r in (headers.get(ROLES_HEADER) or "").split(",") if r.strip())
    return Principal(subject=subject[:255], roles=roles)
