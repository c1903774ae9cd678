"""Delegated task types through REST: another service's activity does the work."""

from __future__ import annotations

from temporalio.client import Client as TemporalClient

from tests.delegates import DelegateProbe, delegate_worker
from tests.helpers import assert_eventually
from tests.web.support import TASKS, Client, create, eventually_status, get


async def test_delegated_echo_completes(
    api: Client, who: str, client: TemporalClient, delegate_queue: str
) -> None:
    async with delegate_worker(client, delegate_queue) as probe:
        task = await create(api, who, taskType="delegated_echo", params={"records": 5})
        done = await eventually_status(api, task["id"], "completed")
    assert probe.started == [task["id"]]
    assert (done["totalRecords"], done["processedRecords"], done["successRecords"]) == (5, 5, 5)
    assert done["progressPercentage"] == 100.0
    events = (await api.get(f"{TASKS}/{task['id']}/events")).json()["events"]
    assert events[-1]["eventType"] == "task.completed"


async def test_delegated_slow_cancelled_through_rest_reaches_the_activity(
    api: Client, who: str, client: TemporalClient, delegate_queue: str
) -> None:
    async with delegate_worker(client, delegate_queue) as probe:
        task = await create(api, who, taskType="delegated_slow")
        await assert_eventually(lambda: _heartbeats(probe), lambda n: n > 0)
        await eventually_status(api, task["id"], "processing")

        resp = await api.post(f"{TASKS}/{task['id']}/cancel")
        assert resp.status_code == 200, resp.text
        await eventually_status(api, task["id"], "cancelled")
        await assert_eventually(lambda: _cancelled(probe), lambda ids: task["id"] in ids)
    assert (await get(api, task["id"]))["completedAt"] is not None


async def test_delegated_flaky_fails_with_the_activity_error(
    api: Client, who: str, client: TemporalClient, delegate_queue: str
) -> None:
    async with delegate_worker(client, delegate_queue) as probe:
        task = await create(api, who, taskType="delegated_flaky")
        failed = await eventually_status(api, task["id"], "failed")
    assert probe.attempts == 2  # the type's retry policy allows two attempts
    assert "downstream catalog unavailable" in (failed["errorMessage"] or "")


async def _heartbeats(probe: DelegateProbe) -> int:
    return probe.heartbeats


async def _cancelled(probe: DelegateProbe) -> list[str]:
    return list(probe.cancelled)
