"""Who calls: the one place where credentials become a :class:`Principal`.

Both transports hand the request's metadata (lower-case header / gRPC metadata names) and, for gRPC
over mTLS, the verified client certificate's subject to :meth:`Authenticator.authenticate`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from common_operations.config import AuthSettings
from common_operations.domain.errors import Unauthenticated
from common_operations.domain.principal import ANONYMOUS, Principal

log = logging.getLogger(__name__)

AUTHORIZATION_HEADER = "authorization"


class Authenticator:
    """Verifies bearer tokens, API keys and client certificates (issue 8: being built)."""

    def __init__(self, settings: AuthSettings) -> None:
        """Verify credentials as ``settings`` say."""
        self.settings = settings
        self.dev_principal = Principal(
            subject=settings.dev_subject, roles=frozenset(settings.dev_roles), via="dev"
        )

    @property
    def dev_mode(self) -> bool:
        """Whether a request without credentials is the local admin."""
        return self.settings.mode == "dev"

    async def authenticate(
        self, headers: Mapping[str, str], *, peer_subject: str | None = None, public: bool = False
    ) -> Principal:
        """The caller the credentials prove.

        Args:
            headers: request headers or gRPC metadata, names lower-case.
            peer_subject: the subject of a verified client certificate (gRPC mTLS), if any.
            public: the operation needs no credentials (a caller without any is anonymous).

        Raises:
            Unauthenticated: credentials are missing where required, or do not verify.
        """
        if peer_subject:
            roles = frozenset(self.settings.mtls_roles.get(peer_subject, ()))
            return Principal(subject=peer_subject[:255], roles=roles, via="mtls")
        if self.dev_mode:
            return self.dev_principal
        if public:
            return ANONYMOUS
        raise Unauthenticated("credentials are required: a bearer token or an API key")
