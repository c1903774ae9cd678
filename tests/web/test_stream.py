"""``GET /api/v1/operations/tasks/{id}/stream`` (Server-Sent Events) on a live uvicorn server.

httpx's ASGITransport buffers a whole response before returning it, so an endless event stream
needs a real server: the service's own ``serve_http`` runs in the test's event loop (where the
runtime's pool and Temporal client live), on a free port.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from temporalio.worker import Worker

from common_operations.bootstrap import Runtime
from common_operations.services.watch import TaskWatcher
from common_operations.web.server import serve_http
from tests.auth_support import bearer
from tests.web.support import TASKS, assert_problem, caller

STEP = 20.0  # seconds any one expected event may take (a hang guard, not a speed test)


@dataclass
class Event:
    """One SSE message (comments are kept apart)."""

    id: str | None
    event: str | None
    data: str

    @property
    def task(self) -> dict[str, Any]:
        task: dict[str, Any] = json.loads(self.data)
        return task


class SSE:
    """Reads events (and comment lines) off a streaming httpx response."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.lines = response.aiter_lines()
        self.comments: list[str] = []

    async def next(self, *, comments: bool = False) -> Event | str | None:
        """The next event (or comment when ``comments``); None when the stream has ended."""
        fields: dict[str, str] = {}
        data: list[str] = []
        while True:
            try:
                line = await asyncio.wait_for(anext(self.lines), STEP)
            except StopAsyncIteration:
                return None
            if line == "":
                if fields or data:
                    return Event(fields.get("id"), fields.get("event"), "\n".join(data))
                continue
            if line.startswith(":"):
                self.comments.append(line[1:].strip())
                if comments:
                    return line[1:].strip()
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "data":
                data.append(value)
            else:
                fields[name] = value

    async def event(self) -> Event:
        got = await self.next()
        assert isinstance(got, Event), got
        return got

    async def until(self, done: Any) -> list[Event]:
        seen = []
        while True:
            event = await self.event()
            seen.append(event)
            if done(event):
                return seen


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Live:
    base: str
    serving: asyncio.Task[None]


@pytest.fixture
async def live(runtime: Runtime, worker: Worker) -> AsyncIterator[Live]:
    """The REST API served by ``serve_http`` on a free port, stopped as the CLI stops it."""
    port = free_port()
    serving = asyncio.ensure_future(serve_http(runtime, "127.0.0.1", port))
    base = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient() as probe:
        for _ in range(500):
            with contextlib.suppress(httpx.TransportError):
                await probe.get(f"{base}/health/live")
                break
            assert not serving.done(), serving
            await asyncio.sleep(0.02)
    yield Live(base, serving)
    serving.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(serving, STEP)


@pytest.fixture
async def http(live: Live) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=live.base, timeout=httpx.Timeout(STEP)) as client:
        yield client


async def create(http: httpx.AsyncClient, owner: str = "stream-owner") -> dict[str, Any]:
    resp = await http.post(
        TASKS, json={"taskType": "process", "requestedBy": owner}, headers=caller("stream-tests")
    )
    assert resp.status_code == 201, resp.text
    task: dict[str, Any] = resp.json()["task"]
    return task


async def report(http: httpx.AsyncClient, task_id: str, **body: Any) -> None:
    resp = await http.patch(f"{TASKS}/{task_id}/progress", json=body)
    assert resp.status_code == 200, resp.text


@contextlib.asynccontextmanager
async def stream(
    http: httpx.AsyncClient, task_id: str, headers: dict[str, str] | None = None, **params: str
) -> AsyncIterator[SSE]:
    async with http.stream("GET", f"{TASKS}/{task_id}/stream", headers=headers, params=params) as resp:
        assert resp.status_code == 200, await resp.aread()
        yield SSE(resp)


async def test_snapshots_arrive_as_progress_is_reported_ending_with_end(http: httpx.AsyncClient) -> None:
    task = await create(http)
    async with stream(http, task["id"]) as sse:
        assert sse.response.headers["content-type"].startswith("text/event-stream")
        assert sse.response.headers["cache-control"] == "no-cache"
        first = await sse.event()
        assert first.event == "task" and first.id is not None and int(first.id) >= 1
        assert first.task["id"] == task["id"] and first.task["status"] == "pending"

        await report(http, task["id"], totalRecords=10, processedRecords=4)
        seen = await sse.until(lambda e: e.task["processedRecords"] == 4)
        assert seen[-1].event == "task" and seen[-1].task["status"] == "processing"
        assert seen[-1].task["progressPercentage"] == 40.0

        await report(http, task["id"], processedRecords=10, successRecords=10, isCompleted=True)
        seen += await sse.until(lambda e: e.event == "end")
        assert [e.event for e in seen[:-1]] == ["task"] * (len(seen) - 1)
        ids = [int(first.id)] + [int(e.id or 0) for e in seen]
        assert ids == sorted(set(ids)), "ids strictly increase"
        end = seen[-1]
        assert await sse.next() is None, "the stream closes after end"

    # The data is the task exactly as GET shows it.
    got = await http.get(f"{TASKS}/{task['id']}")
    assert end.task == got.json()["task"]
    assert end.task["status"] == "completed"


async def test_last_event_id_resumes_after_it(http: httpx.AsyncClient) -> None:
    task = await create(http)
    async with stream(http, task["id"]) as sse:
        first = await sse.event()
    assert first.id is not None

    await report(http, task["id"], totalRecords=3, processedRecords=1)
    # Resumed after the first snapshot (as EventSource reconnects): the next one is newer.
    async with stream(http, task["id"], headers={"Last-Event-ID": first.id}) as sse:
        newer = await sse.event()
        assert int(newer.id or 0) > int(first.id)
        assert newer.task["processedRecords"] == 1

        await report(http, task["id"], processedRecords=3, successRecords=3, isCompleted=True)
        end = (await sse.until(lambda e: e.event == "end"))[-1]
    assert end.id is not None

    # Resumed at the end: the end again, and nothing before it; the query form works the same.
    resumes: list[tuple[dict[str, str] | None, dict[str, str]]] = [
        ({"Last-Event-ID": end.id}, {}),
        (None, {"lastEventId": end.id}),
    ]
    for headers, params in resumes:
        async with stream(http, task["id"], headers, **params) as sse:
            again = await sse.event()
            assert (again.event, again.id) == ("end", end.id)
            assert await sse.next() is None


async def test_hidden_missing_and_bad_requests_are_problems_before_any_event(http: httpx.AsyncClient) -> None:
    task = await create(http, owner="stream-someone")
    stranger = bearer("stream-stranger", [])
    hidden = await http.get(f"{TASKS}/{task['id']}/stream", headers=stranger)
    missing = await http.get(f"{TASKS}/00000000-0000-4000-8000-000000000000/stream", headers=stranger)
    assert_problem(hidden, 404, "TASK_NOT_FOUND")
    assert_problem(missing, 404, "TASK_NOT_FOUND")
    assert_problem(await http.get(f"{TASKS}/not-a-uuid/stream"), 400, "VALIDATION_FAILED")
    bad = await http.get(f"{TASKS}/{task['id']}/stream", headers={"Last-Event-ID": "yesterday"})
    assert_problem(bad, 400, "VALIDATION_FAILED")
    # The owner sees its own task's stream.
    async with stream(http, task["id"], headers=bearer("stream-someone", [])) as sse:
        assert (await sse.event()).task["id"] == task["id"]


async def test_quiet_streams_get_keepalive_comments(runtime: Runtime, http: httpx.AsyncClient) -> None:
    assert runtime.watcher is not None
    await runtime.watcher.close()
    runtime.watcher = TaskWatcher(
        runtime.repository, runtime.engine.pool, runtime.settings.database.url, keepalive=0.1
    )
    task = await create(http)
    async with stream(http, task["id"]) as sse:
        await sse.event()
        assert await sse.next(comments=True) == "keep-alive"
        assert await sse.next(comments=True) == "keep-alive"


async def test_a_client_going_away_frees_its_watch(runtime: Runtime, http: httpx.AsyncClient) -> None:
    assert runtime.watcher is not None
    watcher = runtime.watcher
    task = await create(http)
    async with stream(http, task["id"]) as sse:
        await sse.event()
        assert watcher.watched == 1
    for _ in range(500):
        if watcher.watched == 0:
            break
        await asyncio.sleep(0.02)
    assert watcher.watched == 0


async def test_many_concurrent_streams(http: httpx.AsyncClient) -> None:
    task = await create(http)

    async def follow() -> list[Event]:
        async with stream(http, task["id"]) as sse:
            return await sse.until(lambda e: e.event == "end")

    async with httpx.AsyncClient(base_url=str(http.base_url), timeout=STEP) as other:
        followers = [asyncio.ensure_future(follow()) for _ in range(20)]
        await asyncio.sleep(0.5)
        await report(
            other, task["id"], totalRecords=2, processedRecords=2, successRecords=2, isCompleted=True
        )
        results = await asyncio.gather(*followers)
    ends = {(seen[-1].id, seen[-1].data) for seen in results}
    assert len(ends) == 1 and json.loads(next(iter(ends))[1])["status"] == "completed"


async def test_stopping_the_server_ends_open_streams(live: Live, http: httpx.AsyncClient) -> None:
    task = await create(http)
    async with stream(http, task["id"]) as sse:
        await sse.event()
        live.serving.cancel()
        # The server stops (an open event stream does not hold it up) and the stream just ends.
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(live.serving, STEP)
        with contextlib.suppress(httpx.TransportError):
            assert await sse.next() is None
