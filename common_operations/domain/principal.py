"""The caller's identity, resolved by a transport and passed to the service layer."""

from __future__ import annotations

from dataclasses import dataclass, field

from common_operations.domain.errors import PermissionDenied, Unauthenticated

ADMIN_ROLE = "admin"
OPERATOR_ROLE = "operator"
SERVICE_ROLE = "service"
VIEWER_ROLE = "viewer"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a subject, its roles, and how that was established.

    ``via`` is ``jwt``, ``api_key``, ``mtls``, ``dev`` (the local admin of dev mode) or ``internal``
    (this service's own jobs and the CLI).
    """

    subject: str
    roles: frozenset[str] = field(default_factory=frozenset)
    via: str = "internal"

    def has_role(self, role: str) -> bool:
        """Whether the caller holds ``role``."""
        return role in self.roles


ANONYMOUS = Principal(subject="anonymous", via="anonymous")


def require_credentials(principal: Principal) -> None:
    """Refuse the anonymous caller of a public route anything beyond that route.

    Raises:
        Unauthenticated: ``principal`` is the anonymous one (no credentials were sent).
    """
    if principal.via == ANONYMOUS.via:
        raise Unauthenticated("credentials are required: a bearer token or an API key")


def require_admin(principal: Principal, action: str) -> None:
    """Refuse ``action`` (e.g. "changing messages") to a caller without the admin role.

    Raises:
        PermissionDenied: the caller is not an admin.
    """
    if not principal.has_role(ADMIN_ROLE):
        raise PermissionDenied(f"{action} needs the {ADMIN_ROLE} role")
