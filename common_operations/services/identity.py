"""Who calls: the one place where credentials become a :class:`Principal`.

Both transports hand the request's metadata (lower-case header / gRPC metadata names) and, for gRPC
over mTLS, the verified client certificate's subject to :meth:`Authenticator.authenticate`.

Credentials, in the order they decide:

1. ``authorization: Bearer <JWT>`` or an API key (``x-api-key: co_<prefix>_<secret>``; the header
   name is ``auth.api_key_header``). Both at once is refused as ambiguous. Whatever is presented is
   verified in every mode: a bad token is 401 even in ``dev`` mode, never the local admin.
2. A verified client certificate (gRPC mTLS): its subject, with the roles ``auth.mtls_roles`` gives.
3. Nothing: the local admin in ``dev`` mode, the anonymous principal for public operations,
   otherwise 401.

Refusals say which check failed (expired, wrong audience, unknown key, …) and never echo the
credential; they are logged at INFO without it.
"""

from __future__ import annotations

import hmac
import logging
import time
import unicodedata
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from jwt.exceptions import (
    DecodeError,
    ExpiredSignatureError,
    ImmatureSignatureError,
    InvalidAlgorithmError,
    InvalidAudienceError,
    InvalidIssuedAtError,
    InvalidIssuerError,
    InvalidKeyError,
    InvalidSignatureError,
    MissingRequiredClaimError,
    PyJWTError,
)
from pydantic import SecretStr

from common_operations.config import AuthSettings, JwtSettings
from common_operations.db.api_keys_repository import ApiKeyRecord
from common_operations.domain.errors import Unauthenticated
from common_operations.domain.principal import ANONYMOUS, Principal
from common_operations.infra.jwks import JwksCache
from common_operations.infra.logs import bind as bind_log_context
from common_operations.services.api_keys import hash_key, parse_key

log = logging.getLogger(__name__)

AUTHORIZATION_HEADER = "authorization"
MAX_SUBJECT_LENGTH = 255
# A token is a few hundred bytes to a few KiB; verifying a megabyte of base64 is work for nothing.
MAX_TOKEN_LENGTH = 16 * 1024
MAX_ROLES = 100
# Verified tokens are remembered (token → principal) so that a client sending the same token on
# every request pays a dict lookup instead of pyjwt's decode and signature check (~130 µs): at most
# this long, never past the token's exp, and for at most this many tokens. A key removed from the
# JWKS stops its tokens within VERIFIED_TOKEN_SECONDS.
VERIFIED_TOKEN_SECONDS = 60.0
VERIFIED_TOKENS = 10_000

HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
EC_ALGORITHMS = frozenset({"ES256", "ES384", "ES512", "ES256K"})
OKP_ALGORITHMS = frozenset({"EdDSA"})
ASYMMETRIC_ALGORITHMS = RSA_ALGORITHMS | EC_ALGORITHMS | OKP_ALGORITHMS


class ApiKeyStore(Protocol):
    """Where API keys are looked up (``db.api_keys_repository.ApiKeysRepository``)."""

    async def find_by_prefix(self, prefix: str) -> ApiKeyRecord | None:
        """The key with that public prefix, revoked and expired ones included."""

    async def touch(self, key_id: uuid.UUID, min_interval: float) -> None:
        """Record a use of the key (at most once per ``min_interval`` seconds)."""


def _key_family(algorithm: str) -> str:
    if algorithm in HMAC_ALGORITHMS:
        return "hmac"
    if algorithm in RSA_ALGORITHMS:
        return "rsa"
    if algorithm in EC_ALGORITHMS:
        return "ec"
    if algorithm in OKP_ALGORITHMS:
        return "okp"
    return "unknown"


def _public_key_family(key: Any) -> str:
    if isinstance(key, rsa.RSAPublicKey):
        return "rsa"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return "ec"
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return "okp"
    return "unknown"


def _claim(claims: Mapping[str, Any], path: str) -> Any:
    """A claim by name, or by a dotted path into nested objects (``realm_access.roles``)."""
    if path in claims:
        return claims[path]
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _bad_text(text: str) -> bool:
    return any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") for ch in text)


def valid_subject(value: Any) -> str:
    """A principal name from a credential: a non-blank string of at most 255 characters, no controls.

    Raises:
        Unauthenticated: the value is not such a string.
    """
    if not isinstance(value, str) or not value.strip():
        raise Unauthenticated("the token has no subject")
    if len(value) > MAX_SUBJECT_LENGTH:
        raise Unauthenticated(f"the token's subject is longer than {MAX_SUBJECT_LENGTH} characters")
    if _bad_text(value):
        raise Unauthenticated("the token's subject contains control characters")
    return value


def roles_from(value: Any) -> frozenset[str]:
    """Roles from a claim: a list of strings, or one string separated by spaces or commas.

    Raises:
        Unauthenticated: the claim is neither.
    """
    if value is None:
        return frozenset()
    if isinstance(value, str):
        items: list[Any] = value.replace(",", " ").split()
    elif isinstance(value, list):
        items = value
    else:
        raise Unauthenticated("the token's roles claim is not a list of strings")
    if len(items) > MAX_ROLES or not all(
        isinstance(r, str) and 0 < len(r) <= 64 and not _bad_text(r) for r in items
    ):
        raise Unauthenticated("the token's roles claim is not a list of short strings")
    return frozenset(items)


class JwtVerifier:
    """Bearer tokens: signature, algorithm and the registered claims, as ``auth.jwt`` says."""

    def __init__(self, settings: JwtSettings, jwks: JwksCache | None = None) -> None:
        """Verify with the keys ``settings`` name (``jwks`` replaces the cache built for ``jwks_url``).

        Raises:
            ValueError: ``public_key`` / ``public_key_file`` is not a PEM public key, or the
                configuration allows the ``none`` algorithm.
        """
        self.settings = settings
        # A SecretStr when validated; a plain str when a section was assigned without validation.
        secret: Any = settings.secret
        text = secret.get_secret_value() if isinstance(secret, SecretStr) else secret
        self._secret = text.encode("utf-8") if text else None
        pem = settings.public_key
        if pem is None and settings.public_key_file is not None:
            pem = Path(settings.public_key_file).read_text()
        self._public_key: Any = load_pem_public_key(pem.encode("utf-8")) if pem else None
        if self._public_key is not None and _public_key_family(self._public_key) == "unknown":
            raise ValueError("auth.jwt.public_key is not an RSA, EC or Ed25519 public key")
        self._verified: dict[str, tuple[Principal, float]] = {}
        self._jwks = jwks
        if self._jwks is None and settings.jwks_url:
            self._jwks = JwksCache(settings.jwks_url, cache_seconds=settings.jwks_cache_seconds)
        configured = set(settings.algorithms)
        if any(a.lower() == "none" for a in configured):
            raise ValueError("auth.jwt.algorithms must not allow `none`")
        # A configured secret means HS256 tokens are meant, even if only RS256/ES256 are listed.
        if self._secret:
            configured.add("HS256")
        # An algorithm is accepted only when a key of its kind is configured: an HS token is never
        # checked against a public key (the classic key confusion), nor an RS/ES one without a key.
        self.algorithms = frozenset(
            a
            for a in configured
            if (a in HMAC_ALGORITHMS and self._secret)
            or (a in ASYMMETRIC_ALGORITHMS and (self._jwks is not None or self._public_key is not None))
        )

    @property
    def configured(self) -> bool:
        """Whether any token can verify at all."""
        return bool(self.algorithms)

    async def verify(self, token: str) -> Principal:
        """The principal a valid token names (remembered for a while once verified).

        Raises:
            Unauthenticated: the token does not verify; the message says which check failed.
            ServiceUnavailable: the JWKS is needed and cannot be fetched.
        """
        remembered = self._verified.get(token)
        if remembered is not None:
            principal, until = remembered
            if time.time() < until:
                return principal
            self._verified.pop(token, None)
        principal, expires = await self._verify(token)
        if len(self._verified) >= VERIFIED_TOKENS:
            self._verified.clear()
        self._verified[token] = (principal, min(time.time() + VERIFIED_TOKEN_SECONDS, expires))
        return principal

    async def _verify(self, token: str) -> tuple[Principal, float]:
        """The principal a token names and its ``exp`` (epoch seconds), checked in full."""
        if not self.configured:
            raise Unauthenticated("bearer tokens are not accepted: no token signing key is configured")
        if len(token) > MAX_TOKEN_LENGTH:
            raise Unauthenticated(f"the token is longer than {MAX_TOKEN_LENGTH} characters")
        try:
            header = jwt.get_unverified_header(token)
        except (PyJWTError, ValueError, TypeError, RecursionError):
            raise Unauthenticated("the bearer token is malformed") from None
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm not in self.algorithms:
            raise Unauthenticated(
                f"the token's algorithm is not accepted (accepted: {', '.join(sorted(self.algorithms))})"
            )
        key = await self._key(algorithm, header.get("kid"))
        s = self.settings
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=s.audience,
                issuer=s.issuer,
                leeway=s.leeway,
                options={
                    "require": ["exp"],
                    "verify_aud": s.audience is not None,
                    # The subject claim is checked below (it may not be `sub`).
                    "verify_sub": False,
                    "verify_jti": False,
                },
            )
        except ExpiredSignatureError:
            raise Unauthenticated("the token has expired") from None
        except ImmatureSignatureError:
            raise Unauthenticated("the token is not valid yet (nbf or iat in the future)") from None
        except InvalidAudienceError:
            raise Unauthenticated("the token is for another audience (wrong aud)") from None
        except InvalidIssuerError:
            raise Unauthenticated("the token is from another issuer (wrong iss)") from None
        except MissingRequiredClaimError as exc:
            raise Unauthenticated(f"the token lacks the {exc.claim!r} claim") from None
        except InvalidSignatureError:
            raise Unauthenticated("the token's signature does not verify") from None
        except InvalidIssuedAtError:
            raise Unauthenticated("the token's iat claim is not a number") from None
        except (InvalidKeyError, InvalidAlgorithmError):
            raise Unauthenticated("the token's algorithm does not fit the verifying key") from None
        except DecodeError:
            raise Unauthenticated("the bearer token is malformed") from None
        except (PyJWTError, ValueError, TypeError, OverflowError, RecursionError):
            raise Unauthenticated("the bearer token is invalid") from None
        if not isinstance(claims, dict):
            raise Unauthenticated("the bearer token is malformed")
        subject = valid_subject(_claim(claims, s.subject_claim))
        roles = roles_from(_claim(claims, s.roles_claim))
        # ``exp`` is required and was checked to be a number by jwt.decode.
        return Principal(subject=subject, roles=roles, via="jwt"), float(claims["exp"])

    async def _key(self, algorithm: str, kid: Any) -> Any:
        family = _key_family(algorithm)
        if family == "hmac":
            return self._secret
        if kid is not None and not isinstance(kid, str):
            raise Unauthenticated("the token's kid is not a string")
        if self._jwks is not None:
            published = await self._jwks.key(kid)
            if (published.algorithm is not None and published.algorithm != algorithm) or (
                _public_key_family(published.key) != family
            ):
                # The key is published for another algorithm, or is of another type.
                raise Unauthenticated("the token's algorithm does not fit its signing key")
            return published.key
        if _public_key_family(self._public_key) != family:
            raise Unauthenticated("the token's algorithm does not fit the configured public key")
        return self._public_key


class Authenticator:
    """Verifies bearer tokens, API keys and client certificates; the only source of principals."""

    def __init__(
        self,
        settings: AuthSettings,
        api_keys: ApiKeyStore | None = None,
        *,
        jwks: JwksCache | None = None,
    ) -> None:
        """Verify credentials as ``settings`` say.

        Args:
            settings: the ``auth`` section.
            api_keys: where API keys are looked up (None: API keys are refused).
            jwks: the JWKS cache to use instead of one built for ``auth.jwt.jwks_url`` (tests).
        """
        self.settings = settings
        self.dev_principal = Principal(
            subject=settings.dev_subject, roles=frozenset(settings.dev_roles), via="dev"
        )
        self.jwt = JwtVerifier(settings.jwt, jwks)
        self._api_keys = api_keys
        self._api_key_header = settings.api_key_header.lower()
        # key id → monotonic time of the last recorded use, so a busy key costs one write a minute.
        self._touched: dict[uuid.UUID, float] = {}

    @property
    def dev_mode(self) -> bool:
        """Whether a request without credentials is the local admin."""
        return self.settings.mode == "dev"

    async def authenticate(
        self, headers: Mapping[str, str], *, peer_subject: str | None = None, public: bool = False
    ) -> Principal:
        """The caller the credentials prove; later log lines of the request name it (``principal``).

        Args and errors: see :meth:`_authenticate`.
        """
        principal = await self._authenticate(headers, peer_subject=peer_subject, public=public)
        bind_log_context(principal=principal.subject)
        return principal

    async def _authenticate(
        self, headers: Mapping[str, str], *, peer_subject: str | None, public: bool
    ) -> Principal:
        """The caller the credentials prove.

        Args:
            headers: request headers or gRPC metadata, names lower-case.
            peer_subject: the subject of a verified client certificate (gRPC mTLS), if any.
            public: the operation needs no credentials (a caller without any is anonymous).

        Raises:
            Unauthenticated: credentials are missing where required, or do not verify.
            ServiceUnavailable: a credential cannot be checked now (JWKS or database unreachable).
        """
        authorization = headers.get(AUTHORIZATION_HEADER)
        api_key = headers.get(self._api_key_header)
        try:
            if authorization is not None and api_key is not None:
                raise Unauthenticated("send one credential, a bearer token or an API key, not both")
            if authorization is not None:
                return await self.jwt.verify(self._bearer(authorization))
            if api_key is not None:
                return await self._verify_api_key(api_key)
        except Unauthenticated as exc:
            log.info("credentials refused: %s", exc.message)
            raise
        if peer_subject:
            roles = frozenset(self.settings.mtls_roles.get(peer_subject, ()))
            return Principal(subject=peer_subject[:MAX_SUBJECT_LENGTH], roles=roles, via="mtls")
        if self.dev_mode:
            return self.dev_principal
        if public:
            return ANONYMOUS
        raise Unauthenticated(
            f"credentials are required: `authorization: Bearer <token>` or `{self._api_key_header}: <key>`"
        )

    @staticmethod
    def _bearer(value: str) -> str:
        scheme, _, token = value.strip().partition(" ")
        if scheme.lower() != "bearer":
            raise Unauthenticated("the authorization header must use the Bearer scheme")
        token = token.strip()
        if not token:
            raise Unauthenticated("the bearer token is empty")
        return token

    async def _verify_api_key(self, key: str) -> Principal:
        if self._api_keys is None:
            raise Unauthenticated("API keys are not accepted by this process")
        key = key.strip()
        prefix = parse_key(key)
        if prefix is None:
            raise Unauthenticated("the API key is malformed (expected co_<prefix>_<secret>)")
        record = await self._api_keys.find_by_prefix(prefix)
        # The same answer for an unknown prefix and a wrong secret, so prefixes cannot be probed;
        # the hash is compared in constant time.
        if record is None or not hmac.compare_digest(hash_key(key), record.key_hash):
            raise Unauthenticated("unknown API key")
        if record.revoked_at is not None:
            raise Unauthenticated("the API key has been revoked")
        if record.expires_at is not None and record.expires_at <= datetime.now(UTC):
            raise Unauthenticated("the API key has expired")
        await self._touch(record)
        return Principal(subject=record.principal, roles=frozenset(record.roles), via="api_key")

    async def _touch(self, record: ApiKeyRecord) -> None:
        assert self._api_keys is not None
        interval = self.settings.api_key_touch_interval
        now = time.monotonic()
        last = self._touched.get(record.id)
        if last is not None and now - last < interval:
            return
        self._touched[record.id] = now
        if len(self._touched) > 10_000:  # keys are few; bound the map anyway
            self._touched.clear()
        try:
            await self._api_keys.touch(record.id, interval)
        except Exception:
            # Bookkeeping only: the key verified, so the request goes on without it.
            log.warning("could not record the use of API key %s", record.prefix, exc_info=True)
