"""Schemathesis over the served OpenAPI: no input gets a 5xx, and every answer is the documented one.

The app is served by uvicorn on a free 127.0.0.1 port inside the test's event loop, on the test's
runtime and with the service's worker running (the asyncpg pool and the Temporal client belong to
this loop, see tests/web/conftest.py). Schemathesis generates and sends the requests from a worker
thread (``asyncio.to_thread``), so the loop stays free to serve them.

Every operation of the served document runs a bounded, derandomized number of examples, schema
conforming (positive) and schema violating (negative) ones. About half of the task-id path
parameters are replaced with the ids of real tasks in each state, and about half of the CreateTask
bodies get a configured task type, so requests reach the service, Temporal and Postgres instead of
stopping at "no such task" or "unknown task type". Some examples get one body member or query
parameter replaced by a value just past a domain limit (the document has no lengths or ranges, so
Schemathesis alone seldom goes there). Checked for every answer: not a 5xx (a documented 501 of a
route that is not implemented yet excepted), a documented status code, the documented content type,
headers and body schema. Each operation and mode stops at its first failure; all failures are
reported together.

The service runs in ``required`` auth mode. The document is fuzzed with an admin token and with a
plain user's token (the tasks aimed at are that user's own, so its requests reach the service too),
and without credentials: then no write succeeds and every operation that is not public answers 401.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import requests
import schemathesis
import uvicorn
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as fuzz_settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from temporalio.worker import Worker

from common_operations.bootstrap import Runtime
from common_operations.config import Settings
from common_operations.web.app import create_app
from tests.auth_support import auth_settings, bearer
from tests.web.support import create, eventually_status, reported

# Examples per operation and mode (admin token). 18 operations x (30 + 15) stays around half a minute
# on 2 cores; the user and anonymous runs take fewer.
POSITIVE_EXAMPLES = 30
NEGATIVE_EXAMPLES = 15
WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
CHECKS = [
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
REQUEST_TIMEOUT = 30.0
# CreateTask members whose valid range is narrower than their wire type.
IN_RANGE_ONLY = frozenset({"priority", "maxRetries", "fileSize"})
MAX_QUERY_VALUE = 8 * 1024

pytestmark = pytest.mark.timeout(420)

# Values just past the domain's limits: column lengths, int32/int64, UTC years 1 to 9999.
EDGE_VALUES = st.one_of(
    st.sampled_from([100, 101, 200, 201, 255, 256, 1024, 1025, 4000, 4001]).flatmap(
        lambda n: st.sampled_from(["x" * n, "é" * n])
    ),
    st.sampled_from(["", " ", "\x00", "a\x00b", "\ud800", "%_\\", "😀"]),
    st.sampled_from([-1, 0, 2**31 - 1, 2**31, 2**63 - 1, 2**63, 10**30, -(10**30)]),
    st.sampled_from(
        [
            "0001-01-01T00:00:00+01:00",
            "9999-12-31T23:59:59-01:00",
            "0001-01-01T00:00:00Z",
            "9999-12-31T23:59:59.999999Z",
            "2999-01-01T00:00:00Z",
        ]
    ),
    st.sampled_from(
        [
            '{"a":' * 33 + "1" + "}" * 33,
            "[" * 2000 + "]" * 2000,
            '{"k": "' + "v" * 70_000 + '"}',
            '{"a": ' + "9" * 400 + "}",
            '{"a": ' + "9" * 5000 + "}",
        ]
    ),
)


class _Server(uvicorn.Server):
    """Uvicorn without signal handlers: the test runner owns SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Leave the process's signal handlers alone."""
        yield


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Required auth mode, as every deployment but ``make run``: the token decides who calls."""
    settings.auth = settings.auth.model_validate(auth_settings("required"))
    return settings


@pytest.fixture
async def served(runtime: Runtime, worker: Worker) -> AsyncIterator[str]:
    """The REST app on a free local port, served in the test's event loop; its base URL."""
    # IPPROTO_TCP spelled out: asyncio sets TCP_NODELAY only on sockets that say so, and without it
    # every answer waits ~40 ms for the client's delayed ACK (Nagle).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(create_app(runtime), log_level="warning", access_log=False, lifespan="off")
    server = _Server(config)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if serving.done():
                serving.result()
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await serving
        sock.close()


@dataclass
class Finding:
    """What went wrong for one operation and generation mode."""

    operation: str
    mode: str
    error: str


@dataclass
class Run:
    """Counts of one fuzz run, for the report and the assertions."""

    base_url: str
    task_ids: list[str]
    task_types: list[str]
    # Examples per operation: positive, negative.
    examples: tuple[int, int] = (POSITIVE_EXAMPLES, NEGATIVE_EXAMPLES)
    # Without credentials: no write may succeed, and (method, path) outside ``public`` answer 401.
    anonymous: bool = False
    public: frozenset[tuple[str, str]] = frozenset()
    unauthenticated: dict[str, int] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    requests: int = 0
    setup: float = 0.0
    statuses: dict[int, int] = field(default_factory=dict)


def _put_edge(case: schemathesis.Case, index: int, value: Any) -> None:
    """Put ``value`` into one body member or query parameter of ``case`` (chosen by ``index``).

    The document has no lengths or ranges (those are the domain's, listed in its description), so
    Schemathesis alone seldom tries a value just past a column or an int32.
    """
    slots: list[tuple[str, str]] = []
    if isinstance(case.body, dict):
        slots += [("body", key) for key in sorted(case.body)]
    if case.operation.query:
        slots += [("query", p.name) for p in case.operation.query]
    if not slots:
        return
    where, key = slots[index % len(slots)]
    if where == "body":
        case.body = {**case.body, key: value}
    elif isinstance(value, str) and ("\ud800" in value or len(value) > MAX_QUERY_VALUE):
        # A URL cannot carry an unpaired surrogate (the client could not send it), and uvicorn
        # answers a request line of tens of KiB with its own plain-text 400 before the app runs.
        return
    else:
        case.query = {**(case.query or {}), key: str(value)}


def _small(value: Any) -> bool:
    return isinstance(value, int) and 0 <= value <= 100


# The health probes (/health*, the seed's /api/v1/operations/tasks/health).
HEALTH_OPERATIONS = frozenset({"HealthCheck", "Readiness", "Liveness", "HealthDetailed", "Health"})


def _server_error(response: schemathesis.Response, case: schemathesis.Case) -> str | None:
    if response.status_code < 500:
        return None
    documented = set(case.operation.definition.raw.get("responses", {}))
    # The payment settings routes are documented as 501 until they are implemented.
    if response.status_code == 501 and "501" in documented:
        return None
    # A health probe's documented 503 reports a backing service that was slow to answer (a loaded
    # machine), whatever the request said: it is the probe's finding, not an input's failure.
    probe = case.operation.definition.raw.get("operationId") in HEALTH_OPERATIONS
    if response.status_code == 503 and "503" in documented and probe:
        return None
    return f"{response.status_code} {response.text[:500]}"


def _fuzz_operation(run: Run, session: requests.Session, operation: Any, mode: GenerationMode) -> None:
    examples = run.examples[0] if mode is GenerationMode.POSITIVE else run.examples[1]
    method = operation.method.upper()
    public = (method, operation.path) in run.public
    path_names = [p.name for p in operation.path_parameters]
    creates = operation.definition.raw.get("operationId") == "CreateTask"
    # Operations without a body or query parameters keep stopping early once every example was sent.
    takes_input = bool(operation.query) or "requestBody" in operation.definition.raw

    @fuzz_settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )
    @given(
        case=operation.as_strategy(generation_mode=mode),
        task_id=st.sampled_from([*run.task_ids, None]),
        task_type=st.sampled_from([*run.task_types, None]),
        edge=st.one_of(st.none(), st.tuples(st.integers(0, 63), EDGE_VALUES)) if takes_input else st.none(),
    )
    def check(
        case: schemathesis.Case, task_id: str | None, task_type: str | None, edge: tuple[int, Any] | None
    ) -> None:
        if task_id is not None:
            for name in path_names:
                case.path_parameters = {**(case.path_parameters or {}), name: task_id}
        if creates and task_type is not None and isinstance(case.body, dict):
            # A known type, and no out-of-range numbers (most random int32s are): the create gets
            # past validation, so params, scheduledAt and the texts reach Temporal and Postgres.
            body = {k: v for k, v in case.body.items() if k not in IN_RANGE_ONLY or _small(v)}
            case.body = {**body, "taskType": task_type}
        if edge is not None:
            _put_edge(case, *edge)
        response = case.call(base_url=run.base_url, session=session, timeout=REQUEST_TIMEOUT)
        run.requests += 1
        run.statuses[response.status_code] = run.statuses.get(response.status_code, 0) + 1
        if error := _server_error(response, case):
            raise AssertionError(f"server error: {error}\n{case.as_curl_command()}")
        if run.anonymous:
            if response.status_code == 401:
                run.unauthenticated[operation.label] = run.unauthenticated.get(operation.label, 0) + 1
            if (method in WRITES or not public) and response.status_code < 400:
                raise AssertionError(
                    f"succeeded without credentials: {response.status_code}\n{case.as_curl_command()}"
                )
        case.validate_response(response, checks=CHECKS)

    try:
        check()
    except Unsatisfiable:
        # Negative mode: nothing of the operation can violate its schema (no body, free-form strings).
        assert mode is GenerationMode.NEGATIVE, operation.label
    except (Exception, BaseExceptionGroup) as exc:  # one finding per operation and mode; the rest run
        run.findings.append(Finding(operation.label, mode.value, str(exc)[:3000]))


def _event_stream(operation: Any) -> bool:
    """Whether the operation answers Server-Sent Events (``text/event-stream``)."""
    responses = operation.definition.raw.get("responses", {})
    return any("text/event-stream" in (r.get("content") or {}) for r in responses.values())


async def _tasks_in_every_state(base_url: str, who: str) -> list[str]:
    """Two pending, a processing, a failed and a completed task of ``who`` for the task-id operations."""
    # Reports and reads as an admin (always allowed); the tasks are created by ``who``'s token.
    async with httpx.AsyncClient(
        base_url=base_url, timeout=30, headers=bearer("fuzz-setup", ["admin"])
    ) as api:
        pending = await create(api, who)
        other_pending = await create(api, who)
        processing = await create(api, who)
        await reported(api, processing["id"], totalRecords=10, processedRecords=1)
        failed = await create(api, who)
        await reported(api, failed["id"], errorMessage="boom", isCompleted=True)
        completed = await create(api, who)
        await reported(api, completed["id"], totalRecords=1, processedRecords=1, isCompleted=True)
        await eventually_status(api, failed["id"], "failed")
        await eventually_status(api, completed["id"], "completed")
        return [pending["id"], other_pending["id"], processing["id"], failed["id"], completed["id"]]


async def _fuzz(run: Run, who: str, headers: dict[str, str]) -> dict[str, Any]:
    """Fuzz every operation of the served document as ``headers`` say; the document."""
    async with httpx.AsyncClient(base_url=run.base_url, headers=bearer("fuzz-docs", ["admin"])) as api:
        raw_schema: dict[str, Any] = (await api.get("/docs/openapi.json")).json()
    schema = schemathesis.openapi.from_dict(raw_schema)
    started = time.monotonic()
    with requests.Session() as session:
        session.headers.update(headers)
        for result in schema.get_all_operations():
            operation = result.ok()
            if _event_stream(operation) and not run.anonymous:
                # Open for as long as its task runs (keep-alives included), so a request on a pending
                # task never ends; tests/web/test_stream.py covers the stream and its problems. (An
                # anonymous caller is refused before any stream opens, so that run keeps it.)
                continue
            # Fresh tasks for each operation: the previous one may have cancelled or deleted them.
            if operation.path_parameters:
                t0 = time.monotonic()
                run.task_ids = await _tasks_in_every_state(run.base_url, who)
                run.setup += time.monotonic() - t0
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                await asyncio.to_thread(_fuzz_operation, run, session, operation, mode)
    elapsed = time.monotonic() - started
    print(
        f"schemathesis ({who}): {run.requests} requests in {elapsed:.1f}s ({run.setup:.1f}s making tasks), "
        f"statuses {sorted(run.statuses.items())}"
    )
    assert not run.findings, "\n\n".join(f"{f.operation} [{f.mode}]\n{f.error}" for f in run.findings)
    operations = sum(len(methods) for methods in raw_schema["paths"].values())
    assert run.requests >= operations, "every operation ran"
    return raw_schema


@pytest.mark.parametrize(
    ("roles", "examples"),
    [(["admin"], (POSITIVE_EXAMPLES, NEGATIVE_EXAMPLES)), ([], (15, 8))],
    ids=["admin", "user"],
)
async def test_openapi_operations_answer_as_documented(
    served: str, roles: list[str], examples: tuple[int, int]
) -> None:
    who = f"fuzz-{'-'.join(roles) or 'user'}-{uuid.uuid4().hex[:8]}"
    run = Run(base_url=served, task_ids=[], task_types=["process", "data_sync"], examples=examples)
    await _fuzz(run, who, bearer(who, roles))
    # Requests got past decoding into the service: tasks were created and reports applied (an
    # admin's) or read (a user's own).
    assert run.statuses.get(201, 0) > 0 and run.statuses.get(200, 0) > 0, run.statuses


def _public_operations(runtime: Runtime) -> frozenset[tuple[str, str]]:
    """(method, OpenAPI path) of the routes marked public: they serve callers without credentials."""
    app = create_app(runtime)
    public: set[tuple[str, str]] = set()
    for route in app.routes:
        for handler in getattr(route, "route_handlers", ()):
            if handler.opt.get("public"):
                path = re.sub(r"\{(\w+):[^}]+\}", r"{\1}", route.path)
                public |= {(method.upper(), path) for method in handler.http_methods}
    return frozenset(public)


async def test_without_credentials_nothing_changes(served: str, runtime: Runtime) -> None:
    public = _public_operations(runtime)
    assert ("GET", "/health") in public
    run = Run(
        base_url=served,
        task_ids=[],
        task_types=["process", "data_sync"],
        examples=(10, 5),
        anonymous=True,
        public=public,
    )
    raw_schema = await _fuzz(run, f"fuzz-anonymous-{uuid.uuid4().hex[:8]}", {})
    # Every operation that is not public refused the anonymous caller (at least once: a malformed
    # request may be refused for that first, 400/404/413).
    protected = {
        f"{method.upper()} {path}"
        for path, methods in raw_schema["paths"].items()
        for method in methods
        if (method.upper(), path) not in public
    }
    assert protected, "the document has operations that need credentials"
    assert protected <= set(run.unauthenticated), sorted(protected - set(run.unauthenticated))
    assert run.statuses.get(201, 0) == 0 and run.statuses.get(204, 0) == 0, run.statuses
