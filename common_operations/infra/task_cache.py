"""GetTask's Redis read-through cache, which never keeps a snapshot older than a committed write.

Each entry ``co:task:{id}`` is a hash: ``v``, the row's ``cache_version`` (raised by a Postgres trigger
on every update of the row), and ``s``, the task's snapshot as JSON. An entry without ``s`` is a
*floor*: a write committed version ``v`` and nothing older may be stored any more.

- A reader that read version ``v`` from Postgres stores its snapshot only if the entry holds nothing
  newer (a Lua compare-and-set, atomic in Redis), so a slow reader cannot put back what a writer
  replaced.
- A writer, once its update applied, raises the floor to the version the update returned; an older
  snapshot (stored before or after) can then not be served. A deleted task gets a floor above any
  version (a tombstone), so a reader that read the row before the delete cannot bring it back.

Redis is optional: every call here swallows Redis errors (logged once per outage), and after a
failure Redis is left alone for ``retry_after`` seconds, so a Redis outage costs one socket timeout
rather than one per request. Floors that could not be written meanwhile are kept (bounded) and
written before this process serves from the cache again. What remains is the case this process
cannot see: a floor lost while other processes still reach Redis; entries then live at most
``ttl`` seconds.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import uuid
from datetime import datetime
from typing import Any, Final

from redis.asyncio import Redis
from redis.exceptions import RedisError

from common_operations.domain.status import TaskStatus
from common_operations.domain.task import RecordCounts, Task
from common_operations.infra.cache import CACHE_RETRY_AFTER, RedisOutage

log = logging.getLogger(__name__)

KEY_PREFIX: Final = "co:task:"
# Above any version a row reaches (Lua compares numbers as doubles: exact up to 2**53).
TOMBSTONE: Final = 2**53
MAX_PENDING_FLOORS: Final = 10_000

# Store a reader's snapshot of version ARGV[1] unless the entry holds a newer version, or the same
# version with its snapshot already.
_STORE: Final = """
local cur = redis.call('HGET', KEYS[1], 'v')
if cur then
  local c, v = tonumber(cur), tonumber(ARGV[1])
  if c > v or (c == v and redis.call('HEXISTS', KEYS[1], 's') == 1) then return 0 end
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'v', ARGV[1], 's', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""

# Raise the entry to version ARGV[1] without a snapshot, unless it is at that version or newer.
_FLOOR: Final = """
local cur = redis.call('HGET', KEYS[1], 'v')
if cur and tonumber(cur) >= tonumber(ARGV[1]) then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'v', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""


def cache_key(task_id: uuid.UUID, prefix: str = KEY_PREFIX) -> str:
    """The Redis key of a task's entry."""
    return f"{prefix}{task_id}"


class TaskCache:
    """Versioned task snapshots in Redis; see the module docstring for the guarantee."""

    def __init__(
        self,
        client: Redis,
        *,
        ttl: float,
        prefix: str = KEY_PREFIX,
        retry_after: float = CACHE_RETRY_AFTER,
        max_pending: int = MAX_PENDING_FLOORS,
    ) -> None:
        """Cache in ``client``.

        Args:
            client: a Redis client (see :func:`infra.cache.connect_for_caches`); not closed here.
            ttl: seconds an entry (snapshot, floor or tombstone) lives.
            prefix: of the keys (tests use their own).
            retry_after: seconds Redis is left alone after a failed call.
            max_pending: floors kept while Redis cannot be reached; beyond, only the TTL bounds staleness.
        """
        self._client = client
        self._ttl_ms = max(1, int(ttl * 1000))
        self._prefix = prefix
        self._retry_after = retry_after
        self._max_pending = max_pending
        self._store = client.register_script(_STORE)
        self._floor = client.register_script(_FLOOR)
        self._outage = RedisOutage("task cache", retry_after)
        self._pending: dict[uuid.UUID, int] = {}

    def key(self, task_id: uuid.UUID) -> str:
        """The Redis key of a task's entry."""
        return cache_key(task_id, self._prefix)

    async def get(self, task_id: uuid.UUID) -> Task | None:
        """The cached snapshot of a task, or ``None`` (not cached, a floor, or Redis unavailable)."""
        if not await self._ready():
            return None
        try:
            raw = await self._client.hget(self.key(task_id), "s")
        except RedisError as err:
            self._outage.failed("call", err)
            return None
        return decode_task(raw) if raw is not None else None

    async def store(self, task: Task, version: int) -> bool:
        """Keep a snapshot read from Postgres at ``version``, unless a newer version is known.

        Returns:
            Whether it was stored.
        """
        if not await self._ready():
            return False
        try:
            stored = await self._store(
                keys=[self.key(task.id)], args=[version, encode_task(task), self._ttl_ms]
            )
        except RedisError as err:
            self._outage.failed("call", err)
            return False
        return bool(stored)

    async def written(self, task_id: uuid.UUID, version: int) -> None:
        """A write of the task committed ``version``: no older snapshot may be served from now on."""
        if not await self._ready() or not await self._raise_floor(task_id, version):
            self._remember(task_id, version)

    async def deleted(self, task_id: uuid.UUID) -> None:
        """The task is gone: no snapshot of it may be served or stored again (for ``ttl``)."""
        await self.written(task_id, TOMBSTONE)

    async def _raise_floor(self, task_id: uuid.UUID, version: int) -> bool:
        try:
            await self._floor(keys=[self.key(task_id)], args=[version, self._ttl_ms])
        except RedisError as err:
            self._outage.failed("call", err)
            return False
        return True

    async def _ready(self) -> bool:
        """Whether Redis may be used now: not within ``retry_after`` of a failure, no floor owed."""
        if not self._outage.up:
            return False
        while self._pending:
            task_id, version = next(iter(self._pending.items()))
            if not await self._raise_floor(task_id, version):
                return False
            # A newer floor may have been remembered while this one was written.
            if self._pending.get(task_id) == version:
                del self._pending[task_id]
        return True

    def _remember(self, task_id: uuid.UUID, version: int) -> None:
        if task_id not in self._pending and len(self._pending) >= self._max_pending:
            log.warning(
                "task cache: more than %d floors owed to Redis; dropping %s", self._max_pending, task_id
            )
            return
        self._pending[task_id] = max(version, self._pending.get(task_id, version))


# Task fields by the type their annotation names (annotations are strings here: PEP 563).
_FIELDS: Final = {f.name: str(f.type) for f in dataclasses.fields(Task)}


def encode_task(task: Task) -> str:
    """A task as JSON (every field; :func:`decode_task` restores an equal task)."""
    out: dict[str, Any] = {}
    for name in _FIELDS:
        value = getattr(task, name)
        if isinstance(value, datetime):
            value = value.isoformat()
        elif isinstance(value, uuid.UUID):
            value = str(value)
        elif isinstance(value, TaskStatus):
            value = value.value
        elif isinstance(value, RecordCounts):
            value = dataclasses.asdict(value)
        out[name] = value
    return json.dumps(out, separators=(",", ":"))


def decode_task(raw: bytes | str) -> Task:
    """The task :func:`encode_task` encoded."""
    data: dict[str, Any] = json.loads(raw)
    values: dict[str, Any] = {}
    for name, kind in _FIELDS.items():
        if name not in data:
            continue  # a field added after the entry was written keeps its default
        value = data[name]
        if value is not None:
            if "datetime" in kind:
                value = datetime.fromisoformat(value)
            elif "UUID" in kind:
                value = uuid.UUID(value)
            elif "TaskStatus" in kind:
                value = TaskStatus(value)
            elif "RecordCounts" in kind:
                value = RecordCounts(**value)
        values[name] = value
    return Task(**values)
