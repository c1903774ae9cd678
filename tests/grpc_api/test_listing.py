"""ListTasks through gRPC: filters, search, paging and totals.

Every test lists only its own tasks (a unique ``requested_by``): other tests share the database.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from google.protobuf import timestamp_pb2

from common_operations.grpc.v1 import operations_pb2 as pb
from tests.grpc_api.support import ALICE, create, owner, report

if TYPE_CHECKING:
    from common_operations.grpc.v1.operations_pb2_grpc import OperationsServiceAsyncStub


async def _list(stub: OperationsServiceAsyncStub, **filters: Any) -> pb.ListTasksResponse:
    return await stub.ListTasks(pb.ListTasksRequest(**filters), metadata=ALICE)


async def _seed(stub: OperationsServiceAsyncStub, who: str) -> list[pb.Task]:
    """Five tasks of ``who``, oldest first: three product ``process`` tasks, two order ``data_sync``."""
    return [
        await create(stub, "process", entity_type="product", requested_by=who),
        await create(
            stub, "process", entity_type="product", requested_by=who, file_name="summer-catalog.csv"
        ),
        await create(stub, "data_sync", entity_type="order", requested_by=who),
        await create(stub, "process", entity_type="product", requested_by=who),
        await create(stub, "data_sync", entity_type="order", requested_by=who),
    ]


async def test_filters_and_total(stub: OperationsServiceAsyncStub) -> None:
    who = owner("lister")
    tasks = await _seed(stub, who)
    await report(stub, tasks[3].id, total_records=2, processed_records=1, success_records=1)

    everything = await _list(stub, requested_by=who)
    assert everything.total == 5
    # Newest first.
    assert [t.id for t in everything.tasks] == [t.id for t in reversed(tasks)]
    assert (everything.page, everything.page_size) == (1, 20)

    by_type = await _list(stub, requested_by=who, task_type="data_sync")
    assert {t.id for t in by_type.tasks} == {tasks[2].id, tasks[4].id} and by_type.total == 2

    by_entity = await _list(stub, requested_by=who, entity_type="product")
    assert by_entity.total == 3 and all(t.entity_type == "product" for t in by_entity.tasks)

    processing = await _list(stub, requested_by=who, status="processing")
    assert [t.id for t in processing.tasks] == [tasks[3].id]

    combined = await _list(stub, requested_by=who, task_type="process", status="pending")
    assert {t.id for t in combined.tasks} == {tasks[0].id, tasks[1].id}

    nobody = await _list(stub, requested_by=owner("nobody"))
    assert nobody.total == 0 and not nobody.tasks


async def test_search_matches_file_name_and_id(stub: OperationsServiceAsyncStub) -> None:
    who = owner("searcher")
    tasks = await _seed(stub, who)

    by_file = await _list(stub, requested_by=who, search="SUMMER-cat")
    assert [t.id for t in by_file.tasks] == [tasks[1].id]

    by_id = await _list(stub, requested_by=who, search=tasks[2].id[:13])
    assert [t.id for t in by_id.tasks] == [tasks[2].id]

    # LIKE wildcards are taken literally.
    assert (await _list(stub, requested_by=who, search="%")).total == 0


async def test_paging(stub: OperationsServiceAsyncStub) -> None:
    who = owner("pager")
    tasks = await _seed(stub, who)
    newest_first = [t.id for t in reversed(tasks)]

    pages = [await _list(stub, requested_by=who, page=n, page_size=2) for n in (1, 2, 3, 4)]
    assert [[t.id for t in p.tasks] for p in pages] == [
        newest_first[0:2],
        newest_first[2:4],
        newest_first[4:],
        [],
    ]
    assert {p.total for p in pages} == {5}
    assert [(p.page, p.page_size) for p in pages] == [(1, 2), (2, 2), (3, 2), (4, 2)]

    # The seed API caps large pages instead of rejecting them.
    capped = await _list(stub, requested_by=who, page_size=5000)
    assert capped.page_size == 1000 and capped.total == 5


async def test_date_range(stub: OperationsServiceAsyncStub) -> None:
    who = owner("dated")
    tasks = await _seed(stub, who)

    def at(task: pb.Task) -> timestamp_pb2.Timestamp:
        return task.created_at

    since_third = await _list(stub, requested_by=who, start_date=at(tasks[2]))
    assert {t.id for t in since_third.tasks} == {t.id for t in tasks[2:]}

    until_second = await _list(stub, requested_by=who, end_date=at(tasks[1]))
    assert {t.id for t in until_second.tasks} == {t.id for t in tasks[:2]}

    window = await _list(stub, requested_by=who, start_date=at(tasks[1]), end_date=at(tasks[3]))
    assert window.total == 3
