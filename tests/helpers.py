"""Small helpers shared by the tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def assert_eventually(
    probe: Callable[[], Awaitable[T]],
    predicate: Callable[[T], bool],
    *,
    timeout: float = 15.0,
    interval: float = 0.1,
) -> T:
    """Poll ``probe`` until ``predicate`` holds for its result; fail with the last value."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        last = await probe()
        if predicate(last):
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s; last value: {last!r}")
        await asyncio.sleep(interval)
