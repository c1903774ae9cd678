"""The Authenticator: every way a credential is refused, and the ways it is accepted.

Tokens are minted here with real keys (HS256 secret, RSA and EC key pairs); JWKS are served by a
real HTTP server on 127.0.0.1. API keys are checked against the real ``api_keys`` table.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import asyncpg
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import RSAAlgorithm

from common_operations.config import AuthSettings, JwtSettings
from common_operations.db.api_keys_repository import ApiKeyRecord, ApiKeysRepository
from common_operations.domain.errors import (
    PermissionDenied,
    ServiceUnavailable,
    Unauthenticated,
    ValidationFailed,
)
from common_operations.domain.principal import ANONYMOUS, Principal
from common_operations.infra.jwks import JwksCache
from common_operations.services.api_keys import ApiKeyNotFound, ApiKeysService
from common_operations.services.identity import Authenticator
from tests.auth_support import TEST_AUDIENCE, TEST_ISSUER, TEST_JWT_SECRET, auth_settings, token

ADMIN = Principal("test-admin", frozenset({"admin"}), via="internal")


def hs_auth(mode: str = "required", **jwt_overrides: Any) -> Authenticator:
    settings = AuthSettings(**auth_settings(mode))
    settings.jwt = settings.jwt.model_copy(update=jwt_overrides)
    return Authenticator(settings)


def bearer(value: str) -> dict[str, str]:
    return {"authorization": f"Bearer {value}"}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(payload: dict[str, Any], alg: str = "none") -> str:
    """A token with the given header alg and no (or an empty) signature."""
    header = b64(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    return f"{header}.{b64(json.dumps(payload).encode())}."


def claims(subject: str = "alice", **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    payload: dict[str, Any] = {
        "sub": subject,
        "iss": TEST_ISSUER,
        "aud": TEST_AUDIENCE,
        "iat": now,
        "exp": now + 600,
    }
    payload.update(extra)
    return {k: v for k, v in payload.items() if v is not None}


async def refused(auth: Authenticator, headers: dict[str, str], reason: str) -> Unauthenticated:
    with pytest.raises(Unauthenticated) as info:
        await auth.authenticate(headers)
    assert reason in info.value.message, info.value.message
    assert info.value.code == "UNAUTHENTICATED"
    return info.value


# --- HS256 ----------------------------------------------------------------------------------------


async def test_a_valid_token_is_its_subject_with_its_roles() -> None:
    principal = await hs_auth().authenticate(bearer(token("alice", ["operator", "viewer"])))
    assert principal == Principal("alice", frozenset({"operator", "viewer"}), via="jwt")


@pytest.mark.parametrize(
    ("make_token", "reason"),
    [
        (
            lambda: jwt.encode(claims(), "another-secret-of-at-least-32-bytes!!", algorithm="HS256"),
            "signature",
        ),
        (lambda: token("alice", ttl=-3600), "expired"),
        (lambda: token("alice", nbf=int(time.time()) + 3600), "not valid yet"),
        (lambda: token("alice", iat=int(time.time()) + 3600), "not valid yet"),
        (lambda: token("alice", aud="another-service"), "audience"),
        (lambda: token("alice", iss="https://evil.example"), "issuer"),
        (lambda: unsigned(claims()), "algorithm is not accepted"),
        (lambda: unsigned(claims(), alg="None"), "algorithm is not accepted"),
        (lambda: jwt.encode(claims(exp=None), TEST_JWT_SECRET, algorithm="HS256"), "'exp'"),
        (lambda: jwt.encode(claims(aud=None), TEST_JWT_SECRET, algorithm="HS256"), "'aud'"),
        (lambda: jwt.encode(claims(iss=None), TEST_JWT_SECRET, algorithm="HS256"), "'iss'"),
        (lambda: jwt.encode(claims(sub=None), TEST_JWT_SECRET, algorithm="HS256"), "no subject"),
        (lambda: token(""), "no subject"),
        (lambda: token("   "), "no subject"),
        (lambda: token("x" * 256), "longer than 255"),
        (lambda: token("alice\nadmin"), "control characters"),
        (lambda: jwt.encode(claims(roles=7), TEST_JWT_SECRET, algorithm="HS256"), "roles claim"),
        (lambda: jwt.encode(claims(roles=[1, 2]), TEST_JWT_SECRET, algorithm="HS256"), "roles claim"),
        (lambda: "garbage", "malformed"),
        (lambda: "a.b.c", "malformed"),
        (lambda: token("alice")[:-4] + "AAAA", "signature"),
        (lambda: "x" * 20_000, "longer than"),
    ],
    ids=[
        "forged",
        "expired",
        "nbf-future",
        "iat-future",
        "wrong-audience",
        "wrong-issuer",
        "alg-none",
        "alg-None",
        "no-exp",
        "no-aud",
        "no-iss",
        "no-sub",
        "empty-sub",
        "blank-sub",
        "long-sub",
        "control-sub",
        "roles-int",
        "roles-not-strings",
        "garbage",
        "three-garbage-parts",
        "tampered-signature",
        "huge",
    ],
)
async def test_bad_tokens_are_refused_saying_why(make_token: Any, reason: str) -> None:
    auth = hs_auth()
    bad = make_token()
    err = await refused(auth, bearer(bad), reason)
    assert bad not in err.message


async def test_a_refusal_never_echoes_the_token_nor_is_it_logged(caplog: pytest.LogCaptureFixture) -> None:
    bad = token("alice", ttl=-3600)
    caplog.set_level("INFO")
    err = await refused(hs_auth(), bearer(bad), "expired")
    assert bad not in err.message
    assert bad not in caplog.text
    assert "expired" in caplog.text


async def test_a_verified_token_is_remembered_until_its_expiry_only() -> None:
    auth = hs_auth(leeway=0)
    good = token("alice", ["operator"], ttl=1)
    first = await auth.authenticate(bearer(good))
    assert await auth.authenticate(bearer(good)) is first  # served from the verified tokens
    # Another string (a changed signature) is verified on its own, never matched to a remembered one.
    tampered = good[:-2] + ("AA" if good[-2:] != "AA" else "BB")
    await refused(auth, bearer(tampered), "signature")
    await asyncio.sleep(1.5)  # past exp: the remembered entry must not outlive the token
    await refused(auth, bearer(good), "expired")


async def test_clock_skew_within_the_leeway_is_tolerated() -> None:
    auth = hs_auth(leeway=120)
    assert (await auth.authenticate(bearer(token("alice", ttl=-60)))).subject == "alice"
    assert (await auth.authenticate(bearer(token("alice", nbf=int(time.time()) + 60)))).subject == "alice"
    await refused(hs_auth(leeway=0), bearer(token("alice", ttl=-60)), "expired")


async def test_roles_from_a_nested_claim_or_a_separated_string() -> None:
    auth = hs_auth(roles_claim="realm_access.roles")
    nested = token("alice", realm_access={"roles": ["operator"]})
    assert (await auth.authenticate(bearer(nested))).roles == {"operator"}
    flat = hs_auth(roles_claim="scope")
    assert (await flat.authenticate(bearer(token("svc", scope="service, viewer admin")))).roles == {
        "service",
        "viewer",
        "admin",
    }
    # A token without the claim has no roles (a plain user).
    assert (await auth.authenticate(bearer(token("bob")))).roles == frozenset()


async def test_the_subject_may_come_from_another_claim() -> None:
    auth = hs_auth(subject_claim="preferred_username")
    principal = await auth.authenticate(bearer(token("opaque-id", preferred_username="alice")))
    assert principal.subject == "alice"


async def test_without_audience_and_issuer_configured_those_claims_are_not_checked() -> None:
    auth = hs_auth(audience=None, issuer=None)
    assert (await auth.authenticate(bearer(token("alice", aud="anything", iss="anyone")))).subject == "alice"


async def test_authorization_header_shapes() -> None:
    auth = hs_auth()
    await refused(auth, {"authorization": "Basic dXNlcjpwYXNz"}, "Bearer scheme")
    await refused(auth, {"authorization": "Bearer "}, "empty")
    await refused(auth, {"authorization": ""}, "Bearer scheme")
    # The scheme is case-insensitive (RFC 9110).
    assert (await auth.authenticate({"authorization": f"bearer {token('alice')}"})).subject == "alice"


async def test_hs256_needs_a_secret_and_asymmetric_algorithms_need_a_key() -> None:
    # Only RS256 configured and no key anywhere: no token can verify.
    auth = Authenticator(AuthSettings(mode="required", jwt=JwtSettings(algorithms=["RS256"])))
    await refused(auth, bearer(token("alice")), "no token signing key is configured")
    # A configured secret adds HS256 even when only RS256/ES256 are listed (config.yaml's default).
    with_secret = Authenticator(
        AuthSettings(mode="required", jwt=JwtSettings(secret=TEST_JWT_SECRET, algorithms=["RS256", "ES256"]))
    )
    assert (await with_secret.authenticate(bearer(token("alice")))).subject == "alice"
    with pytest.raises(ValueError, match="none"):
        Authenticator(AuthSettings(jwt=JwtSettings(secret=TEST_JWT_SECRET, algorithms=["none"])))


# --- modes, API key + bearer, mTLS ----------------------------------------------------------------


async def test_required_mode_without_credentials() -> None:
    auth = hs_auth("required")
    await refused(auth, {}, "credentials are required")
    assert await auth.authenticate({}, public=True) == ANONYMOUS


async def test_dev_mode_without_credentials_is_the_local_admin_but_a_bad_token_is_refused() -> None:
    auth = hs_auth("dev")
    local = await auth.authenticate({})
    assert local.subject == "local-admin" and local.has_role("admin") and local.via == "dev"
    await refused(auth, bearer(token("alice", ttl=-3600)), "expired")
    # This one has no key store: API keys are refused, not taken for the local admin.
    await refused(auth, {"x-api-key": "co_nope"}, "API keys are not accepted")
    assert (await auth.authenticate(bearer(token("alice")))).subject == "alice"


async def test_a_bearer_and_an_api_key_together_are_refused() -> None:
    await refused(
        hs_auth(), {**bearer(token("alice")), "x-api-key": "co_0123456789ab_" + "A" * 43}, "not both"
    )


async def test_mtls_subject_with_configured_roles_and_a_token_overrides_it() -> None:
    settings = AuthSettings(**auth_settings("required"))
    settings.mtls_roles = {"catalog-service": ["service"]}
    auth = Authenticator(settings)
    peer = await auth.authenticate({}, peer_subject="catalog-service")
    assert peer == Principal("catalog-service", frozenset({"service"}), via="mtls")
    assert (await auth.authenticate({}, peer_subject="unknown-peer")).roles == frozenset()
    # A credential in the request is verified and decides, certificate or not.
    assert (
        await auth.authenticate(bearer(token("alice")), peer_subject="catalog-service")
    ).subject == "alice"
    await refused(auth, bearer("garbage"), "malformed")


# --- RS256 via JWKS, ES256 via a public key, key confusion ----------------------------------------


class JwksServer:
    """A JWKS document served on 127.0.0.1, replaceable, counting fetches."""

    def __init__(self) -> None:
        self.document: dict[str, Any] = {"keys": []}
        self.fetches = 0
        self.status = 200
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.fetches += 1
                body = json.dumps(outer.document).encode()
                self.send_response(outer.status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/.well-known/jwks.json"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def publish(self, *keys: tuple[str, Any]) -> None:
        self.document = {
            "keys": [
                {**json.loads(RSAAlgorithm.to_jwk(k.public_key())), "kid": kid, "use": "sig"}
                for kid, k in keys
            ]
        }

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def jwks_server() -> Iterator[JwksServer]:
    server = JwksServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def rsa_keys() -> tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey]:
    return (
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
    )


def rs256(key: rsa.RSAPrivateKey, kid: str | None, subject: str = "alice", **extra: Any) -> str:
    """A token unique to this call (``jti``), so it is checked against the JWKS, not remembered."""
    headers = {"kid": kid} if kid else None
    extra.setdefault("jti", uuid.uuid4().hex)
    return jwt.encode(claims(subject, **extra), key, algorithm="RS256", headers=headers)


def jwks_auth(url: str, cache: JwksCache | None = None) -> Authenticator:
    settings = AuthSettings(
        mode="required",
        jwt=JwtSettings(jwks_url=url, issuer=TEST_ISSUER, audience=TEST_AUDIENCE, algorithms=["RS256"]),
    )
    return Authenticator(settings, jwks=cache)


async def test_rs256_from_a_jwks_with_key_rotation(
    jwks_server: JwksServer, rsa_keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey]
) -> None:
    old, new = rsa_keys
    jwks_server.publish(("k1", old))
    cache = JwksCache(jwks_server.url, cache_seconds=3600, refresh_cooldown=3600)
    auth = jwks_auth(jwks_server.url, cache)

    principal = await auth.authenticate(bearer(rs256(old, "k1", roles=["service"])))
    assert principal == Principal("alice", frozenset({"service"}), via="jwt")
    assert jwks_server.fetches == 1
    # Cached: no second fetch.
    await auth.authenticate(bearer(rs256(old, "k1")))
    assert jwks_server.fetches == 1

    # The IdP rotates: a token with the new kid makes one refetch, then verifies.
    jwks_server.publish(("k2", new))
    assert (await auth.authenticate(bearer(rs256(new, "k2", subject="bob")))).subject == "bob"
    assert jwks_server.fetches == 2
    # The old key is gone from the set now.
    await refused(auth, bearer(rs256(old, "k1")), "unknown key")

    # Made-up kids cannot make the service hammer the IdP: one forced refresh per cooldown.
    for i in range(5):
        await refused(auth, bearer(rs256(new, f"made-up-{i}")), "unknown key")
    assert jwks_server.fetches == 2


async def test_jwks_tokens_signed_by_another_key_or_with_another_algorithm_are_refused(
    jwks_server: JwksServer, rsa_keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey]
) -> None:
    good, attacker = rsa_keys
    jwks_server.publish(("k1", good))
    auth = jwks_auth(jwks_server.url)
    await refused(auth, bearer(rs256(attacker, "k1")), "signature")
    # HS256 "signed" with the published public key: never checked against a public key.
    public_pem = good.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    await refused(
        auth, bearer(hs256_with_raw_key(claims(), public_pem, kid="k1")), "algorithm is not accepted"
    )
    await refused(auth, bearer(rs256(good, "k1", aud="someone-else")), "audience")


async def test_the_jwks_unreachable_at_first_use_is_503_not_401(jwks_server: JwksServer) -> None:
    jwks_server.status = 500
    auth = jwks_auth(jwks_server.url)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(ServiceUnavailable):
        await auth.authenticate(bearer(rs256(key, "k1")))


async def test_a_stale_jwks_keeps_verifying_while_the_idp_is_down(
    jwks_server: JwksServer, rsa_keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey]
) -> None:
    key = rsa_keys[0]
    jwks_server.publish(("k1", key))
    now = [0.0]
    cache = JwksCache(jwks_server.url, cache_seconds=10, clock=lambda: now[0])
    auth = jwks_auth(jwks_server.url, cache)
    await auth.authenticate(bearer(rs256(key, "k1")))
    jwks_server.status = 503
    now[0] = 100.0  # long past cache_seconds: a refresh is due and fails
    assert (await auth.authenticate(bearer(rs256(key, "k1")))).subject == "alice"
    assert jwks_server.fetches == 2


def hs256_with_raw_key(payload: dict[str, Any], key: bytes, kid: str | None = None) -> str:
    """HS256 over any bytes (pyjwt itself refuses a PEM key as an HMAC secret)."""
    header: dict[str, Any] = {"alg": "HS256", "typ": "JWT"}
    if kid:
        header["kid"] = kid
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


async def test_es256_with_a_configured_public_key_and_the_classic_key_confusion() -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    settings = AuthSettings(
        mode="required",
        jwt=JwtSettings(
            public_key=public_pem.decode(), issuer=TEST_ISSUER, audience=TEST_AUDIENCE, algorithms=["ES256"]
        ),
    )
    auth = Authenticator(settings)
    good = jwt.encode(claims("svc", roles=["service"]), private, algorithm="ES256")
    assert await auth.authenticate(bearer(good)) == Principal("svc", frozenset({"service"}), via="jwt")
    other = ec.generate_private_key(ec.SECP256R1())
    await refused(auth, bearer(jwt.encode(claims(), other, algorithm="ES256")), "signature")
    # The attacker signs HS256 with the public key as the "secret".
    confused = hs256_with_raw_key(claims(roles=["admin"]), public_pem)
    await refused(auth, bearer(confused), "algorithm is not accepted")
    # Even with a secret configured too, an HS token is checked against the secret only.
    both = AuthSettings(mode="required", jwt=settings.jwt.model_copy(update={"secret": TEST_JWT_SECRET}))
    await refused(Authenticator(both), bearer(confused), "signature")
    # An RS256 token against an EC key: the algorithm is not configured.
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    await refused(auth, bearer(jwt.encode(claims(), rsa_key, algorithm="RS256")), "algorithm is not accepted")


async def test_an_rs_token_against_an_ec_public_key_is_refused() -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    public_pem = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    # Both algorithms allowed, but the configured key is an EC key.
    auth = Authenticator(
        AuthSettings(
            mode="required",
            jwt=JwtSettings(public_key=public_pem, audience=TEST_AUDIENCE, algorithms=["RS256", "ES256"]),
        )
    )
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    await refused(auth, bearer(jwt.encode(claims(), rsa_key, algorithm="RS256")), "does not fit")


# --- API keys -------------------------------------------------------------------------------------


@pytest.fixture
def keys(pool: asyncpg.Pool) -> ApiKeysService:
    return ApiKeysService(ApiKeysRepository(pool))


def key_auth(pool: asyncpg.Pool, *, touch_interval: float = 60.0, mode: str = "required") -> Authenticator:
    settings = AuthSettings(**auth_settings(mode))
    settings.api_key_touch_interval = touch_interval
    return Authenticator(settings, ApiKeysRepository(pool))


async def test_an_api_key_is_its_principal_with_its_roles(pool: asyncpg.Pool, keys: ApiKeysService) -> None:
    name = f"svc-{uuid.uuid4().hex[:8]}"
    created = await keys.create(ADMIN, name, ["service"], description="catalog worker")
    assert created.key.startswith(f"co_{created.record.prefix}_")
    principal = await key_auth(pool).authenticate({"x-api-key": created.key})
    assert principal == Principal(name, frozenset({"service"}), via="api_key")
    # Stored as a hash only.
    row = await pool.fetchrow("SELECT * FROM api_keys WHERE id = $1", created.record.id)
    assert row is not None
    assert created.key not in json.dumps(dict(row), default=str)
    assert row["key_hash"] == hashlib.sha256(created.key.encode()).hexdigest()


async def test_a_configured_header_name_is_used(pool: asyncpg.Pool, keys: ApiKeysService) -> None:
    created = await keys.create(ADMIN, "svc-header", ["service"])
    settings = AuthSettings(**auth_settings("required"))
    settings.api_key_header = "X-Service-Key"
    auth = Authenticator(settings, ApiKeysRepository(pool))
    assert (await auth.authenticate({"x-service-key": created.key})).subject == "svc-header"


async def test_revoked_expired_tampered_and_unknown_keys_are_refused(
    pool: asyncpg.Pool, keys: ApiKeysService
) -> None:
    auth = key_auth(pool)
    revoked = await keys.create(ADMIN, "svc-revoked", ["service"])
    await keys.revoke(ADMIN, str(revoked.record.id))
    await refused(auth, {"x-api-key": revoked.key}, "revoked")

    expiring = await keys.create(
        ADMIN, "svc-expired", ["service"], expires_at=datetime.now(UTC) + timedelta(days=1)
    )
    assert (await auth.authenticate({"x-api-key": expiring.key})).subject == "svc-expired"
    await pool.execute(
        "UPDATE api_keys SET expires_at = now() - interval '1 second' WHERE id = $1", expiring.record.id
    )
    await refused(auth, {"x-api-key": expiring.key}, "expired")

    good = await keys.create(ADMIN, "svc-good", ["service"])
    last = good.key[-1]
    tampered = good.key[:-1] + ("A" if last != "A" else "B")
    await refused(auth, {"x-api-key": tampered}, "unknown API key")
    await refused(auth, {"x-api-key": "co_0123456789ab_" + "A" * 43}, "unknown API key")
    await refused(auth, {"x-api-key": "co_short"}, "malformed")
    await refused(auth, {"x-api-key": good.key + "x" * 200}, "malformed")
    # The revoked state is told only to whoever holds the whole key: a tampered revoked key is unknown.
    await refused(auth, {"x-api-key": revoked.key[:-1] + ("A" if revoked.key[-1] != "A" else "B")}, "unknown")


async def test_last_use_is_recorded_at_most_once_per_interval(
    pool: asyncpg.Pool, keys: ApiKeysService
) -> None:
    created = await keys.create(ADMIN, "svc-touch", ["service"])
    auth = key_auth(pool, touch_interval=3600)
    assert created.record.last_used_at is None
    await auth.authenticate({"x-api-key": created.key})
    first = await pool.fetchval("SELECT last_used_at FROM api_keys WHERE id = $1", created.record.id)
    assert first is not None
    await auth.authenticate({"x-api-key": created.key})
    # A second authenticator (another replica) does not write within the interval either.
    await key_auth(pool, touch_interval=3600).authenticate({"x-api-key": created.key})
    again = await pool.fetchval("SELECT last_used_at FROM api_keys WHERE id = $1", created.record.id)
    assert again == first
    # With no interval, every use is recorded.
    eager = key_auth(pool, touch_interval=0)
    await eager.authenticate({"x-api-key": created.key})
    latest = await pool.fetchval("SELECT last_used_at FROM api_keys WHERE id = $1", created.record.id)
    assert latest > first


class FailingTouch:
    """A key store whose last-use write always fails."""

    def __init__(self, record: ApiKeyRecord) -> None:
        self.record = record
        self.touches = 0

    async def find_by_prefix(self, prefix: str) -> ApiKeyRecord | None:
        return self.record if prefix == self.record.prefix else None

    async def touch(self, key_id: uuid.UUID, min_interval: float) -> None:
        self.touches += 1
        raise ConnectionResetError("database went away")


async def test_a_failed_last_use_write_does_not_fail_the_request(keys: ApiKeysService) -> None:
    created = await keys.create(ADMIN, "svc-flaky", ["service"])
    store = FailingTouch(created.record)
    auth = Authenticator(AuthSettings(**auth_settings("required")), store)
    assert (await auth.authenticate({"x-api-key": created.key})).subject == "svc-flaky"
    assert store.touches == 1


async def test_key_management_is_admin_only_and_validated(pool: asyncpg.Pool, keys: ApiKeysService) -> None:
    operator = Principal("op", frozenset({"operator"}), via="jwt")
    with pytest.raises(PermissionDenied):
        await keys.create(operator, "svc", ["service"])
    with pytest.raises(PermissionDenied):
        await keys.list_keys(operator)
    with pytest.raises(PermissionDenied):
        await keys.revoke(operator, "0123456789ab")
    for principal, roles, expires, field in [
        ("", ["service"], None, "principal"),
        ("x" * 256, ["service"], None, "principal"),
        ("svc\x00", ["service"], None, "principal"),
        (" svc", ["service"], None, "principal"),
        ("svc", ["Service"], None, "roles"),
        ("svc", ["a" * 65], None, "roles"),
        ("svc", ["r"] * 21, None, "roles"),
        ("svc", ["service"], datetime.now(UTC) - timedelta(seconds=1), "expiresAt"),
        ("svc", ["service"], datetime(2030, 1, 1), "expiresAt"),  # naive: no time zone
    ]:
        with pytest.raises(ValidationFailed) as info:
            await keys.create(ADMIN, principal, roles, expires_at=expires)
        assert info.value.details["field"] == field
    with pytest.raises(ApiKeyNotFound):
        await keys.revoke(ADMIN, str(uuid.uuid4()))
    with pytest.raises(ApiKeyNotFound):
        await keys.revoke(ADMIN, "not-a-prefix")


async def test_create_and_revoke_are_audited_without_the_key(
    pool: asyncpg.Pool, keys: ApiKeysService
) -> None:
    created = await keys.create(ADMIN, "svc-audited", ["service", "viewer"])
    # By prefix this time; twice: the second changes nothing and is not audited again.
    first = await keys.revoke(ADMIN, created.record.prefix)
    second = await keys.revoke(ADMIN, created.record.prefix)
    assert first.revoked_at is not None and second.revoked_at == first.revoked_at
    assert first.revoked_by == ADMIN.subject
    rows = await pool.fetch(
        "SELECT * FROM admin_audit_log WHERE entity_type = 'api_key' AND entity_id = $1 ORDER BY id",
        str(created.record.id),
    )
    assert [r["action"] for r in rows] == ["api_key.create", "api_key.revoke"]
    for row in rows:
        assert row["actor"] == ADMIN.subject
        text = json.dumps(dict(row), default=str)
        assert created.key not in text
        assert created.record.key_hash not in text
        assert created.key.rsplit("_", 1)[1] not in text
    assert json.loads(rows[0]["new_state"])["principal"] == "svc-audited"
    assert json.loads(rows[1]["old_state"])["revokedAt"] is None
    assert json.loads(rows[1]["new_state"])["revokedAt"] is not None
