"""The caller's identity, resolved by a transport and passed to the service layer."""

from __future__ import annotations

from dataclasses import dataclass, field

from common_operations.domain.errors import PermissionDenied

ADMIN_ROLE = "admin"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a subject and its roles."""

    subject: str
    roles: frozenset[str] = field(default_factory=frozenset)

    def has_role(self, role: str) -> bool:
        """Whether the caller holds ``role``."""
        return role in self.roles


ANONYMOUS = Principal(subject="anonymous")


def require_admin(principal: Principal, action: str) -> None:
    """Refuse ``action`` (e.g. "changing messages") to a caller without the admin role.

    Raises:
        PermissionDenied: the caller is not an admin.
    """
    if not principal.has_role(ADMIN_ROLE):
        raise PermissionDenied(f"{action} needs the {ADMIN_ROLE} role")
