"""The caller's identity, resolved by a transport and passed to the service layer."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a subject and its roles."""

    subject: str
    roles: frozenset[str] = field(default_factory=frozenset)

    def has_role(self, role: str) -> bool:
        """Whether the caller holds ``role``."""
        return role in self.roles


ANONYMOUS = Principal(subject="anonymous")
