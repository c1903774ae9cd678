"""Credentials for tests: HS256 tokens signed with the test settings' shared secret.

``make_settings`` (tests/conftest.py) runs the service in ``dev`` auth mode with this secret, issuer
and audience: a request without credentials is the local admin, one with a token is verified.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import jwt
from jwt.utils import base64url_encode

TEST_JWT_SECRET = "test-secret-for-hs256-tokens-only-0123456789"
TEST_ISSUER = "https://auth.test.local"
TEST_AUDIENCE = "common-operations"


def auth_settings(mode: str = "dev") -> dict[str, Any]:
    """The ``auth`` section the test settings use."""
    return {
        "mode": mode,
        "jwt": {
            "secret": TEST_JWT_SECRET,
            "issuer": TEST_ISSUER,
            "audience": TEST_AUDIENCE,
            "algorithms": ["HS256"],
        },
    }


def token(subject: str, roles: Iterable[str] = (), *, ttl: float = 3600, **claims: Any) -> str:
    """A valid token for ``subject`` with ``roles`` (extra ``claims`` override the defaults)."""
    now = int(time.time())
    payload: dict[str, Any] = {
        "sub": subject,
        "roles": list(roles),
        "iss": TEST_ISSUER,
        "aud": TEST_AUDIENCE,
        "iat": now,
        "nbf": now,
        "exp": now + int(ttl),
    }
    payload.update(claims)
    return jwt.encode(payload, TEST_JWT_SECRET, algorithm="HS256")


def bearer(subject: str, roles: Iterable[str] = (), **claims: Any) -> dict[str, str]:
    """HTTP headers carrying a token for ``subject``."""
    return {"authorization": f"Bearer {token(subject, roles, **claims)}"}


def metadata(subject: str, roles: Iterable[str] = (), **claims: Any) -> tuple[tuple[str, str], ...]:
    """gRPC metadata carrying a token for ``subject``."""
    return (("authorization", f"Bearer {token(subject, roles, **claims)}"),)


def forged() -> str:
    """A well-formed admin token signed with a secret the service does not know."""
    now = int(time.time())
    payload = {
        "sub": "mallory",
        "roles": ["admin"],
        "iss": TEST_ISSUER,
        "aud": TEST_AUDIENCE,
        "exp": now + 600,
    }
    return jwt.encode(payload, "not-the-service-secret-but-long-enough!!", algorithm="HS256")


def alg_none() -> str:
    """An unsigned token (``alg: none``) claiming the admin role."""
    header = base64url_encode(b'{"alg":"none","typ":"JWT"}').decode()
    payload = base64url_encode(b'{"sub":"mallory","roles":["admin"]}').decode()
    return f"{header}.{payload}."


# Tokens every transport must refuse, with a fragment of the refusal's message.
BAD_TOKENS: dict[str, tuple[Callable[[], str], str]] = {
    "forged": (forged, "signature"),
    "expired": (lambda: token("alice", ttl=-3600), "expired"),
    "not-yet-valid": (lambda: token("alice", nbf=int(time.time()) + 3600), "not valid yet"),
    "wrong-audience": (lambda: token("alice", aud="billing"), "audience"),
    "wrong-issuer": (lambda: token("alice", iss="https://evil.example"), "issuer"),
    "alg-none": (alg_none, "algorithm is not accepted"),
    "garbage": (lambda: "garbage", "malformed"),
    "no-subject": (lambda: token(""), "subject"),
    "long-subject": (lambda: token("s" * 300), "longer than 255"),
}
