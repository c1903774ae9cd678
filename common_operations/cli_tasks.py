"""``common-operations tasks …``: the operator's commands against a running service, over HTTP.

``list``, ``show``, ``watch``, ``cancel``, ``retry``, ``logs`` and the bulk actions ``bulk cancel`` /
``bulk retry`` call the REST API (:mod:`common_operations.cli_client`), so they work from anywhere
the API is reachable: ``--url`` (``CO_API_URL``, default http://127.0.0.1:8000) and ``--token``
(``CO_TOKEN``) or ``--api-key`` (``CO_API_KEY``); neither is the local admin of a ``make run``.
``reconcile`` stays in ``cli.py`` (it runs a reconciler pass with the service's own configuration).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from common_operations.cli_client import (
    DEFAULT_URL,
    EXIT_OK,
    EXIT_USAGE,
    FINAL_EXIT,
    ApiClient,
    CliError,
    JsonView,
    PlainView,
    RichView,
    WatchView,
    counts,
    parse_instant,
    percent,
    short_time,
    watch,
)

Url = Annotated[
    str, typer.Option("--url", envvar="CO_API_URL", help="the service's REST base URL", show_envvar=True)
]
Token = Annotated[
    str | None,
    typer.Option(
        "--token", envvar="CO_TOKEN", help="a bearer token (JWT)", show_envvar=True, show_default=False
    ),
]
ApiKey = Annotated[
    str | None,
    typer.Option("--api-key", envvar="CO_API_KEY", help="an API key (x-api-key)", show_envvar=True),
]
CaFile = Annotated[
    Path | None,
    typer.Option("--ca-file", envvar="CO_CA_FILE", help="CA bundle for an HTTPS service", show_envvar=True),
]
AsJson = Annotated[bool, typer.Option("--json", help="print the API's JSON instead of a table")]
Status = Annotated[
    str | None,
    typer.Option("--status", help="scheduled, pending, processing, completed, failed or cancelled"),
]
TaskType = Annotated[str | None, typer.Option("--type", help="task type, e.g. process")]
EntityType = Annotated[str | None, typer.Option("--entity-type", help="entity type, e.g. products")]
RequestedBy = Annotated[str | None, typer.Option("--requested-by", help="who the tasks are for")]
Since = Annotated[
    str | None, typer.Option("--since", help="created at or after: RFC 3339, or an age such as 2h, 7d")
]
Until = Annotated[
    str | None, typer.Option("--until", help="created at or before: RFC 3339, or an age such as 30m")
]
Search = Annotated[str | None, typer.Option("--search", help="substring of the id, file name or error")]


def _client(url: str, token: str | None, api_key: str | None, ca_file: Path | None) -> ApiClient:
    return ApiClient(url, token=token, api_key=api_key, verify=str(ca_file) if ca_file else True)


def _run(fn: Callable[[], int | None], *, refused_exit: int | None = None) -> None:
    """Run a command body; a :class:`CliError` is one line on stderr and its exit status.

    Args:
        fn: the command; returns its exit status (None: 0).
        refused_exit: the status of every error instead of its own (``watch`` keeps 1 and 3 for
            the task's outcome, so anything else that goes wrong is 2).
    """
    try:
        code = fn() or EXIT_OK
    except CliError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        code = refused_exit if refused_exit is not None else err.exit_code
    raise typer.Exit(code)


def _console() -> Any:
    from rich.console import Console

    # Not a terminal (a pipe, a test): wide enough that ids are never cut.
    return Console(width=None if sys.stdout.isatty() else 200, highlight=False)


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2))


def _instant(text: str | None) -> str | None:
    return parse_instant(text) if text else None


def register(tasks_app: typer.Typer) -> None:
    """Add the HTTP commands to the ``tasks`` group."""
    tasks_app.command("list")(tasks_list)
    tasks_app.command("show")(tasks_show)
    tasks_app.command("watch")(tasks_watch)
    tasks_app.command("cancel")(tasks_cancel)
    tasks_app.command("retry")(tasks_retry)
    tasks_app.command("logs")(tasks_logs)
    bulk = typer.Typer(
        help="Cancel or retry every task matching a filter, as one task you can watch.",
        no_args_is_help=True,
    )
    bulk.command("cancel")(bulk_cancel)
    bulk.command("retry")(bulk_retry)
    tasks_app.add_typer(bulk, name="bulk")


def tasks_list(
    status: Status = None,
    task_type: TaskType = None,
    entity_type: EntityType = None,
    requested_by: RequestedBy = None,
    since: Since = None,
    until: Until = None,
    search: Search = None,
    page: Annotated[int, typer.Option(min=1, help="1-based page")] = 1,
    page_size: Annotated[
        int, typer.Option("--page-size", "--limit", min=1, max=1000, help="rows per page")
    ] = 20,
    as_json: AsJson = False,
    url: Url = DEFAULT_URL,
    token: Token = None,
    api_key: ApiKey = None,
    ca_file: CaFile = None,
) -> None:
    """List tasks, newest first, with the API's filters (a table, or --json)."""

    def body() -> None:
        with _client(url, token, api_key, ca_file) as api:
            answer = api.list_tasks(
                status=status,
                taskType=task_type,
                entityType=entity_type,
                requestedBy=requested_by,
                startDate=_instant(since),
                endDate=_instant(until),
                search=search,
                page=page,
                pageSize=page_size,
            )
        if as_json:
            _print_json(answer)
            return
        from rich.table import Table

        table = Table(box=None, header_style="bold", pad_edge=False)
        for name in ("ID", "TYPE", "STATUS", "PROGRESS", "OK", "FAILED", "REQUESTED BY", "CREATED"):
            table.add_column(name, no_wrap=True)
        for t in answer.get("tasks", []):
            table.add_row(
                t["id"],
                t["taskType"],
                t["status"],
                f"{counts(t)} {percent(t)}",
                str(t.get("successRecords") or 0),
                str(t.get("failedRecords") or 0),
                t.get("requestedBy") or "-",
                short_time(t.get("createdAt")),
            )
        console = _console()
        if answer.get("tasks"):
            console.print(table)
        shown = len(answer.get("tasks", []))
        console.print(
            f"{shown} shown of {answer.get('total', shown)} matching (page {answer.get('page', page)})"
        )

    _run(body)


def tasks_show(
    task_id: Annotated[str, typer.Argument(help="the task's id")],
    as_json: AsJson = False,
    url: Url = DEFAULT_URL,
    token: Token = None,
    api_key: ApiKey = None,
    ca_file: CaFile = None,
) -> None:
    """Show one task: status, counts, times, error, files and its Temporal Web UI link."""

    def body() -> None:
        with _client(url, token, api_key, ca_file) as api:
            task = api.get_task(task_id)
        if as_json:
            _print_json(task)
            return
        rows = [
            ("id", task["id"]),
            ("type", task["taskType"]),
            ("entity", task.get("entityType") or "-"),
            ("status", task["status"]),
            ("progress", f"{counts(task)} ({percent(task)})"),
            ("ok / failed", f"{task.get('successRecords') or 0} / {task.get('failedRecords') or 0}"),
            ("requested by", task.get("requestedBy") or "-"),
            ("retries", f"{task.get('retryCount', 0)} of {task.get('maxRetries', 0)}"),
            ("created", short_time(task.get("createdAt"))),
            ("started", short_time(task.get("startedAt"))),
            ("completed", short_time(task.get("completedAt"))),
        ]
        if task.get("scheduledAt"):
            rows.append(("scheduled", short_time(task["scheduledAt"])))
        if task.get("nextRetryAt"):
            rows.append(("next retry", short_time(task["nextRetryAt"])))
        if task.get("errorMessage"):
            rows.append(("error", task["errorMessage"]))
        if task.get("filesAvailable"):
            rows.append(("files", ", ".join(task["filesAvailable"])))
        if task.get("params") not in (None, "", "{}"):
            rows.append(("params", str(task["params"])))
        if task.get("workflowUrl"):
            rows.append(("workflow", task["workflowUrl"]))
        width = max(len(k) for k, _ in rows)
        for key, value in rows:
            print(f"{key.ljust(width)}  {value}")

    _run(body)


def _watch(api: ApiClient, task_id: str, *, as_json: bool, poll: bool) -> int:
    view: WatchView
    if as_json:
        view = JsonView(sys.stdout)
    elif sys.stderr.isatty():
        view = RichView(task_id)
    else:
        view = PlainView(sys.stdout)
    final = watch(api, task_id, view, poll=poll)
    return FINAL_EXIT[final["status"]]


def tasks_watch(
    task_id: Annotated[str, typer.Argument(help="the task's id")],
    poll: Annotated[
        bool, typer.Option("--poll", help="poll GET every second instead of the event stream")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print each snapshot as a JSON line")] = False,
    url: Url = DEFAULT_URL,
    token: Token = None,
    api_key: ApiKey = None,
    ca_file: CaFile = None,
) -> None:
    """Follow a task live until it ends: a progress bar with counts, rate and ETA.

    Exit status: 0 completed, 1 failed, 3 cancelled, 2 usage error or the task cannot be read.
    """

    def body() -> int:
        with _client(url, token, api_key, ca_file) as api:
            return _watch(api, task_id, as_json=as_json, poll=poll)

    _run(body, refused_exit=EXIT_USAGE)


def tasks_cancel(
    task_id: Annotated[str, typer.Argument(help="the task's id")],
    reason: Annotated[str | None, typer.Option("--reason", help="recorded with the cancellation")] = None,
    as_json: AsJson = False,
    url: Url = DEFAULT_URL,
    token: Token = None,
    api_key: ApiKey = None,
    ca_file: CaFile = None,
) -> None:
    """Cancel a scheduled, pending or processing task (waits for its cleanup)."""

    def body() -> None:
        with _client(url, token, api_key, ca_file) as api:
            task = api.cancel(task_id, reason)
        if as_json:
            _print_json(task)
        else:
            print(f"{task['id']}  {task['status']}")

    _run(body)


def tasks_retry(
    task_id: Annotated[str, typer.Argument(help="the task's id")],
    as_json: AsJson = False,
    url: Url = DEFAULT_URL,
    token: Token = None,
    api_key: ApiKey = None,
    ca_file: CaFile = None,
) -> None:
    """Retry a failed task that has retries left (a new attempt of its workflow)."""

    def body() -> None:
        with _client(url, token, api_key, ca_file) as api:
            task = api.retry(task_id)
        if as_json:
            _print_json(task)
        else:
            tries = f"retry {task.get('retryCount', 0)} of {task.get('maxRetries', 0)}"
            print(f"{task['id']}  {task['status']}  ({tries})")

    _run(body)


def _log_line(entry: dict[str, Any]) -> str:
    level = str(entry.get("level", "")).upper()
    line = f"{short_time(entry.get('createdAt'))}  {level:<7} {entry.get('message', '')}"
    if entry.get("details"):
        line += f"  {entry['details']}"
    return line


def tasks_logs(
    task_id: Annotated[str, typer.Argument(help="the task's id")],
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="keep printing new lines until the task ends")
    ] = False,
    interval: Annotated[float, typer.Option(min=0.1, help="seconds between polls with --follow")] = 1.0,
    as_json: Annotated[bool, typer.Option("--json", help="print each line as JSON")] = False,
    url: Url = DEFAULT_URL,
    token: Token = None,
    api_key: ApiKey = None,
    ca_file: CaFile = None,
) -> None:
    """Print a task's log lines, oldest first; with --follow, new ones as they come until it ends."""
    page_size = 100

    def body() -> None:
        printed = 0
        with _client(url, token, api_key, ca_file) as api:
            while True:
                # Decided before reading the lines, so the lines of the final write are read after it.
                final = follow and api.get_task(task_id)["status"] in FINAL_EXIT
                while True:
                    page = api.logs(task_id, page=printed // page_size + 1, page_size=page_size)
                    entries = page.get("logs", [])[printed % page_size :]
                    for entry in entries:
                        print(json.dumps(entry) if as_json else _log_line(entry), flush=True)
                    printed += len(entries)
                    if len(page.get("logs", [])) < page_size:
                        break
                if not follow or final:
                    return
                time.sleep(interval)

    _run(body)


def _bulk(
    action: str,
    *,
    filters: dict[str, Any],
    reason: str | None,
    follow: bool,
    as_json: bool,
    connection: tuple[str, str | None, str | None, Path | None],
) -> int:
    with _client(*connection) as api:
        task = api.bulk_action(action, filters, reason)
        if as_json and not follow:
            _print_json(task)
            return EXIT_OK
        if not as_json:
            print(f"bulk {action} started as task {task['id']}")
        if not follow:
            print(f"watch it with: common-operations tasks watch {task['id']}")
            return EXIT_OK
        return _watch(api, task["id"], as_json=as_json, poll=False)


def _filters(
    task_type: str | None,
    entity_type: str | None,
    status: str | None,
    requested_by: str | None,
    since: str | None,
    until: str | None,
    search: str | None,
) -> dict[str, Any]:
    return {
        "taskType": task_type,
        "entityType": entity_type,
        "status": status,
        "requestedBy": requested_by,
        "since": _instant(since),
        "until": _instant(until),
        "search": search,
    }


def bulk_cancel(
    task_type: TaskType = None,
    status: Annotated[
        str | None, typer.Option("--status", help="scheduled, pending or processing (default: all three)")
    ] = None,
    requested_by: RequestedBy = None,
    entity_type: EntityType = None,
    since: Since = None,
    until: Until = None,
    search: Search = None,
    reason: Annotated[str | None, typer.Option("--reason", help="recorded with every cancellation")] = None,
    follow: Annotated[bool, typer.Option("--watch", help="watch the bulk task until it ends")] = False,
    as_json: AsJson = False,
    url: Url = DEFAULT_URL,
    token: Token = None,
    api_key: ApiKey = None,
    ca_file: CaFile = None,
) -> None:
    """Cancel every matching task (needs --type or --requested-by), as one task you can watch.

    Operators and admins only. With --watch the exit status is the bulk task's (see ``tasks watch``).
    """

    def body() -> int:
        filters = _filters(task_type, entity_type, status, requested_by, since, until, search)
        connection = (url, token, api_key, ca_file)
        return _bulk(
            "cancel", filters=filters, reason=reason, follow=follow, as_json=as_json, connection=connection
        )

    _run(body)


def bulk_retry(
    task_type: TaskType = None,
    requested_by: RequestedBy = None,
    entity_type: EntityType = None,
    since: Since = None,
    until: Until = None,
    search: Search = None,
    follow: Annotated[bool, typer.Option("--watch", help="watch the bulk task until it ends")] = False,
    as_json: AsJson = False,
    url: Url = DEFAULT_URL,
    token: Token = None,
    api_key: ApiKey = None,
    ca_file: CaFile = None,
) -> None:
    """Retry every matching failed task (needs --type or --requested-by), as one task you can watch.

    Tasks without retries left are counted as refused. Operators and admins only.
    """

    def body() -> int:
        filters = _filters(task_type, entity_type, "failed", requested_by, since, until, search)
        connection = (url, token, api_key, ca_file)
        return _bulk(
            "retry", filters=filters, reason=None, follow=follow, as_json=as_json, connection=connection
        )

    _run(body)
