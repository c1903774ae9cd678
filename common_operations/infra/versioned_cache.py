"""A Redis read-through cache of versioned JSON documents that never goes backwards.

Each entry is ``<version>:<json>``. Writes go through a script that keeps the entry only if its
version is newer than the cached one, so a reader that fetched version 6 from Postgres just before
a change cannot overwrite the version 7 the writer cached after committing. Redis is optional:
every error is logged and swallowed (the caller falls back to Postgres), and after a failure Redis is
left alone for ``retry_after`` seconds so an unreachable server does not add a timeout to every call.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from common_operations.infra.cache import CACHE_RETRY_AFTER, RedisOutage

log = logging.getLogger(__name__)

# KEYS[1] entry, ARGV[1] version, ARGV[2] JSON, ARGV[3] ttl in ms. 1 when stored.
_SET_IF_NEWER = """
local current = redis.call('GET', KEYS[1])
if current then
  local version = tonumber(string.match(current, '^(%d+):'))
  if version and version >= tonumber(ARGV[1]) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. ARGV[2], 'PX', ARGV[3])
return 1
"""


class VersionedCache:
    """Versioned JSON documents under ``<prefix><name>`` with a time to live."""

    def __init__(
        self, redis: Redis | None, prefix: str, ttl: float, *, retry_after: float = CACHE_RETRY_AFTER
    ) -> None:
        """Cache in ``redis`` (None: no caching at all).

        Args:
            redis: the client, or None when no Redis is configured.
            prefix: key prefix of this cache's entries (e.g. ``co:settings:``).
            ttl: seconds an entry lives; bounds any staleness a lost invalidation could leave.
            retry_after: seconds Redis is skipped after an error.
        """
        self._redis = redis
        self._prefix = prefix
        self._ttl_ms = max(1, int(ttl * 1000))
        self._outage = RedisOutage(f"cache {prefix}", retry_after)

    async def get(self, name: str) -> tuple[int, Any] | None:
        """The cached ``(version, document)``, or None (absent, unreadable or Redis unavailable)."""
        if not self._usable():
            return None
        try:
            raw = await self._redis.get(self._prefix + name)  # type: ignore[union-attr]
        except (RedisError, OSError) as exc:
            self._outage.failed("get", exc)
            return None
        return _decode(raw) if raw is not None else None

    async def get_many(self, names: list[str]) -> dict[str, tuple[int, Any]]:
        """The cached ``(version, document)`` of each of ``names`` that is cached (one round trip)."""
        if not names or not self._usable():
            return {}
        try:
            raws = await self._redis.mget([self._prefix + n for n in names])  # type: ignore[union-attr]
        except (RedisError, OSError) as exc:
            self._outage.failed("get", exc)
            return {}
        found: dict[str, tuple[int, Any]] = {}
        for name, raw in zip(names, raws, strict=True):
            if raw is not None and (entry := _decode(raw)) is not None:
                found[name] = entry
        return found

    async def put(self, name: str, version: int, document: Any, *, after_change: bool = False) -> None:
        """Cache ``document`` at ``version`` unless a newer version is cached already.

        Args:
            name: the document's name.
            version: its version.
            document: JSON-serialisable content.
            after_change: the document was just changed: Redis is tried even while it is being
                skipped, since an older entry left behind would be served until its TTL ends.
        """
        if self._redis is None or not (after_change or self._usable()):
            return
        body = json.dumps(document, separators=(",", ":"))
        try:
            await self._redis.eval(
                _SET_IF_NEWER, 1, self._prefix + name, str(version), body, str(self._ttl_ms)
            )
        except (RedisError, OSError) as exc:
            self._outage.failed("put", exc)

    def _usable(self) -> bool:
        return self._redis is not None and self._outage.up


def _decode(raw: bytes | str) -> tuple[int, Any] | None:
    try:
        data = raw.encode() if isinstance(raw, str) else bytes(raw)
        version, _, body = data.partition(b":")
        return int(version), json.loads(body)
    except ValueError:
        return None
