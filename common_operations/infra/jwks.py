"""The identity provider's signing keys (a JWKS document), fetched over HTTP and cached.

Keys are fetched when first needed and again once ``cache_seconds`` have passed. A token naming a
key id (``kid``) the cached set lacks makes one early refresh (the IdP rotated its keys), but at
most one per ``refresh_cooldown`` seconds: a stream of tokens with made-up ids must not turn the
service into a load generator against the IdP. Concurrent requests share one fetch.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from jwt import PyJWK
from jwt.exceptions import PyJWTError

from common_operations.domain.errors import ServiceUnavailable, Unauthenticated

log = logging.getLogger(__name__)

# A JWKS holds a handful of keys; anything much larger is not one.
MAX_JWKS_BYTES = 1024 * 1024
FETCH_TIMEOUT = 5.0
DEFAULT_REFRESH_COOLDOWN = 10.0


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A public key of the set and the algorithm it is published for (None: not stated)."""

    key: Any
    algorithm: str | None


class JwksCache:
    """The signing keys published at a JWKS URL, by key id."""

    def __init__(
        self,
        url: str,
        *,
        cache_seconds: float = 300.0,
        refresh_cooldown: float = DEFAULT_REFRESH_COOLDOWN,
        clock: Callable[[], float] = time.monotonic,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """Fetch keys from ``url``.

        Args:
            url: the JWKS document's address.
            cache_seconds: how long a fetched set is used before it is fetched again.
            refresh_cooldown: least seconds between two refreshes forced by an unknown ``kid``.
            clock: monotonic seconds (tests pass their own).
            transport: the HTTP transport (tests); httpx's default otherwise.
        """
        self._url = url
        self._cache_seconds = cache_seconds
        self._refresh_cooldown = refresh_cooldown
        self._clock = clock
        self._transport = transport
        self._keys: dict[str | None, SigningKey] = {}
        self._fetched_at: float | None = None
        self._forced_at: float | None = None
        # Bumped by every completed fetch: a request that waited for the lock sees whether another
        # one fetched meanwhile and then does not fetch again.
        self._generation = 0
        self._lock = asyncio.Lock()

    @property
    def fetches(self) -> int:
        """How many times the set was fetched successfully (for tests and metrics)."""
        return self._generation

    async def key(self, kid: str | None) -> SigningKey:
        """The key a token's header names (no ``kid``: the set's only key).

        Raises:
            Unauthenticated: no key of the set has that id (after one refresh, if one was allowed).
            ServiceUnavailable: the set was never fetched and cannot be fetched now.
        """
        generation = self._generation
        if self._stale():
            await self._refresh(generation)
        found = self._find(kid)
        if found is not None:
            return found
        now = self._clock()
        fetched_just_now = self._generation != generation
        if not fetched_just_now and (
            self._forced_at is None or now - self._forced_at >= self._refresh_cooldown
        ):
            self._forced_at = now
            await self._refresh(self._generation)
            found = self._find(kid)
            if found is not None:
                return found
        if kid is None:
            raise Unauthenticated("the token names no signing key (kid) and the key set has several")
        raise Unauthenticated("the token is signed with an unknown key (kid)")

    def _stale(self) -> bool:
        return self._fetched_at is None or self._clock() - self._fetched_at >= self._cache_seconds

    def _find(self, kid: str | None) -> SigningKey | None:
        if kid is None and len(self._keys) == 1:
            return next(iter(self._keys.values()))
        return self._keys.get(kid)

    async def _refresh(self, seen_generation: int) -> None:
        async with self._lock:
            if self._generation != seen_generation:
                return  # another request fetched while this one waited
            try:
                keys = await self._fetch()
            except (httpx.HTTPError, ValueError) as exc:
                if self._keys:
                    # A stale set still verifies tokens of unrotated keys; better than refusing all.
                    log.warning(
                        "could not refresh the JWKS from %s (%s); keeping the cached keys", self._url, exc
                    )
                    self._fetched_at = self._clock()
                    return
                log.warning("could not fetch the JWKS from %s: %s", self._url, exc)
                raise ServiceUnavailable(
                    "the identity provider's signing keys cannot be fetched; try again shortly"
                ) from exc
            self._keys = keys
            self._fetched_at = self._clock()
            self._generation += 1

    async def _fetch(self) -> dict[str | None, SigningKey]:
        async with httpx.AsyncClient(timeout=FETCH_TIMEOUT, transport=self._transport) as client:
            response = await client.get(self._url, headers={"accept": "application/json"})
            response.raise_for_status()
            if len(response.content) > MAX_JWKS_BYTES:
                raise ValueError(f"the JWKS is larger than {MAX_JWKS_BYTES} bytes")
            document: Any = json.loads(response.content)
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise ValueError("the JWKS document has no `keys` list")
        keys: dict[str | None, SigningKey] = {}
        for entry in document["keys"]:
            # Encryption keys and key types this service cannot use are skipped, not fatal: an IdP
            # may publish more than signing keys.
            if not isinstance(entry, dict) or entry.get("use", "sig") != "sig" or entry.get("kty") == "oct":
                continue
            try:
                jwk = PyJWK(entry)
            except PyJWTError:
                continue
            algorithm = entry.get("alg")
            keys[jwk.key_id] = SigningKey(jwk.key, algorithm if isinstance(algorithm, str) else None)
        if not keys:
            raise ValueError("the JWKS holds no usable signing key")
        log.info("fetched %d signing key(s) from %s", len(keys), self._url)
        return keys
