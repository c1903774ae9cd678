"""The console's session: the operator's credential in an HttpOnly cookie, used like its header.

A browser's ``EventSource`` (the live progress bars) cannot send an ``Authorization`` header, and a
page should not keep a token where its scripts can read it. So the console's login form takes a
bearer token or an API key, checks it, and keeps it in the ``co_console`` cookie (HttpOnly,
SameSite=Strict, Secure over HTTPS). The REST ``call`` dependency treats that cookie like the
corresponding header when the request carries neither header: the same verification, the same
principal, nothing stored on the server. SameSite=Strict keeps other sites' pages from sending it
(no cross-site request forgery through the cookie).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from litestar.datastructures import Cookie

from common_operations.domain.errors import ValidationFailed

COOKIE_NAME: Final = "co_console"
AUTHORIZATION_HEADER: Final = "authorization"
# API keys are minted as co_<prefix>_<secret> (services/api_keys.py); a JWT never starts so.
API_KEY_PREFIX: Final = "co_"
_BEARER: Final = "bearer:"
_API_KEY: Final = "key:"
# Longer than any token a browser cookie could hold (4096 bytes per cookie).
MAX_CREDENTIAL_LENGTH: Final = 3800


def encode_credential(raw: str) -> str:
    """The cookie value for a credential pasted into the login form.

    ``Bearer <token>`` and a bare JWT are bearer tokens; ``co_…`` is an API key.

    Raises:
        ValidationFailed: empty, too long for a cookie, or with characters no token or key has.
    """
    value = raw.strip()
    if value.lower().startswith("bearer "):
        value = value[len("bearer ") :].strip()
    if not value:
        raise ValidationFailed("paste a bearer token or an API key", field="credential")
    if len(value) > MAX_CREDENTIAL_LENGTH:
        raise ValidationFailed("the credential is too long to keep in a cookie", field="credential")
    # JWTs are base64url with dots, API keys base64url with underscores: nothing a cookie escapes.
    if not all(c.isascii() and (c.isalnum() or c in "-_.~+/=") for c in value):
        raise ValidationFailed("that is not a bearer token or an API key", field="credential")
    kind = _API_KEY if value.startswith(API_KEY_PREFIX) else _BEARER
    return kind + value


def credential_headers(cookie: str, api_key_header: str) -> dict[str, str]:
    """The header a cookie value stands for (empty for a value this module did not write)."""
    if cookie.startswith(_BEARER):
        return {AUTHORIZATION_HEADER: "Bearer " + cookie[len(_BEARER) :]}
    if cookie.startswith(_API_KEY):
        return {api_key_header: cookie[len(_API_KEY) :]}
    return {}


def with_console_credential(
    headers: Mapping[str, str], cookies: Mapping[str, str], api_key_header: str
) -> Mapping[str, str]:
    """The request's headers, plus the cookie's credential when they carry no credential of their own.

    A header always wins over the cookie (a script or CLI sending its own token means that one).

    Args:
        headers: the request's headers (names lower-case).
        cookies: the request's cookies.
        api_key_header: the configured API key header name (lower-case).
    """
    cookie = cookies.get(COOKIE_NAME)
    if not cookie or AUTHORIZATION_HEADER in headers or api_key_header in headers:
        return headers
    extra = credential_headers(cookie, api_key_header)
    if not extra:
        return headers
    return {**dict(headers), **extra}


def session_cookie(value: str, *, secure: bool) -> Cookie:
    """The ``co_console`` cookie holding an encoded credential (a browser-session cookie)."""
    return Cookie(
        key=COOKIE_NAME,
        value=value,
        path="/",
        httponly=True,
        samesite="strict",
        secure=secure,
    )


def expired_cookie(*, secure: bool) -> Cookie:
    """A ``co_console`` cookie that makes the browser drop the session (logout)."""
    return Cookie(
        key=COOKIE_NAME, value="", path="/", max_age=0, httponly=True, samesite="strict", secure=secure
    )
