"""ListTasks through REST: filters, search, paging, order.

Every query filters on a requester unique to the test, so tasks of other tests in the shared
database never show up.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from tests.web.support import TASKS, Client, create, reported


async def ids(api: Client, **params: Any) -> list[str]:
    """Ids of the first page matching ``params``, in the order the API returns them."""
    resp = await api.get(TASKS, params=params)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["total"] == len(body["tasks"]), body  # all fit on one page in these tests
    return [t["id"] for t in body["tasks"]]


async def test_filters_and_search(api: Client, who: str) -> None:
    a = await create(api, who, taskType="process", entityType="product", fileName="catalog_2024%.csv")
    b = await create(api, who, taskType="data_sync", entityType="order", fileName="catalogX2024Y.csv")
    c = await create(api, who, taskType="process", entityType="order")
    await reported(api, c["id"], totalRecords=1, processedRecords=1, isCompleted=True)
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    d = await create(api, who, taskType="report_generation", entityType="product", scheduledAt=later)
    mine = {"requestedBy": who}

    assert await ids(api, **mine) == [d["id"], c["id"], b["id"], a["id"]]  # newest first
    assert await ids(api, requestedBy=f"{who}-nobody") == []

    assert set(await ids(api, **mine, taskType="process")) == {a["id"], c["id"]}
    assert set(await ids(api, **mine, entityType="order")) == {b["id"], c["id"]}
    assert await ids(api, **mine, taskType="process", entityType="order") == [c["id"]]
    assert await ids(api, **mine, status="completed") == [c["id"]]
    assert await ids(api, **mine, status="COMPLETED") == [c["id"]]  # as lenient as gRPC
    assert await ids(api, **mine, status="scheduled") == [d["id"]]
    assert set(await ids(api, **mine, status="pending")) == {a["id"], b["id"]}
    assert await ids(api, **mine, status="failed") == []

    # Creation-time window, bounds inclusive.
    created = {t["id"]: t["createdAt"] for t in (a, b, c, d)}
    assert set(await ids(api, **mine, startDate=created[b["id"]])) == {b["id"], c["id"], d["id"]}
    assert set(await ids(api, **mine, endDate=created[b["id"]])) == {a["id"], b["id"]}
    window = {"startDate": created[b["id"]], "endDate": created[c["id"]]}
    assert set(await ids(api, **mine, **window)) == {b["id"], c["id"]}
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    assert await ids(api, **mine, startDate=future) == []

    # Search: file name (case-insensitive), id prefix; % and _ are literal, not LIKE wildcards.
    assert set(await ids(api, **mine, search="catalog")) == {a["id"], b["id"]}
    assert await ids(api, **mine, search="CATALOG_2024%") == [a["id"]]
    assert await ids(api, **mine, search="%") == [a["id"]]
    assert await ids(api, **mine, search="_") == [a["id"]]
    assert await ids(api, **mine, search=b["id"][:13]) == [b["id"]]
    assert await ids(api, **mine, search="no-such-file") == []


async def test_paging_totals_and_order(api: Client, who: str) -> None:
    created = [(await create(api, who, fileName=f"page-{i}.csv"))["id"] for i in range(5)]
    newest_first = created[::-1]

    seen: list[str] = []
    for page, expected in ((1, 2), (2, 2), (3, 1), (4, 0)):
        resp = await api.get(TASKS, params={"requestedBy": who, "page": page, "pageSize": 2})
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert (body["total"], body["page"], body["pageSize"]) == (5, page, 2)
        assert len(body["tasks"]) == expected
        seen += [t["id"] for t in body["tasks"]]
    assert seen == newest_first

    body = (await api.get(TASKS, params={"requestedBy": who})).json()
    assert (body["page"], body["pageSize"], body["total"]) == (1, 20, 5)

    body = (await api.get(TASKS, params={"requestedBy": who, "pageSize": 5000})).json()
    assert body["pageSize"] == 1000  # capped, not refused (seed behaviour)
    assert [t["id"] for t in body["tasks"]] == newest_first
