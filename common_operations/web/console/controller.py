"""The operator console: server-rendered pages and htmx fragments over the task service.

A transport like the REST controllers: every page calls :class:`TaskService` with the caller's
principal (the ``call`` dependency, so the same authorization, limits and errors apply), and renders
the task exactly as the REST API shows it (``mapping.task_out``), which is also what the SSE stream
sends, so the page's scripts and its templates read the same field names. Live progress comes from
``GET /api/v1/operations/tasks/{id}/stream`` (``static/console.js``); task creation and an import's
upload go through the REST API from the browser (``static/console.js``), with the session cookie.

Nothing here is in the OpenAPI document: these are pages, not API.
"""

from __future__ import annotations

import json
import logging
import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from typing import Annotated, Any, Final
from urllib.parse import urlencode, urlsplit

import msgspec
from jinja2 import Environment, FileSystemLoader, select_autoescape
from litestar import Controller, Request, Response, get, post
from litestar.connection import ASGIConnection
from litestar.enums import MediaType, RequestEncodingType
from litestar.exceptions import HTTPException
from litestar.handlers.base import BaseRouteHandler
from litestar.params import Body, FromPath, FromQuery, QueryParameter
from litestar.response import Redirect

from common_operations.domain.errors import DomainError, PermissionDenied, Unauthenticated, ValidationFailed
from common_operations.domain.principal import Principal
from common_operations.domain.status import ACTIVE_STATUSES, TaskStatus, parse_status
from common_operations.domain.task import (
    DEFAULT_PAGE_SIZE,
    PageRequest,
    Task,
    TaskQuery,
    parse_cancel_reason,
    parse_task_id,
)
from common_operations.infra.storage.local import FILES_PATH
from common_operations.web import mapping
from common_operations.web.console.assets import STATIC_PATH, TEMPLATES_DIR
from common_operations.web.console.auth import (
    credential_headers,
    encode_credential,
    expired_cookie,
    session_cookie,
)
from common_operations.web.dependencies import PUBLIC, Call, CallContext
from common_operations.web.errors import STATUS_BY_KIND

logger = logging.getLogger(__name__)

CONSOLE_PATH: Final = "/console"
LOGIN_PATH: Final = f"{CONSOLE_PATH}/login"
STREAM_BASE: Final = "/api/v1/operations/tasks"
# Logs and events shown on a task page: the newest page of this many.
HISTORY_ROWS: Final = 50
# A failed task still changes while its workflow waits to retry it (nextRetryAt is set).
LIVE_STATUSES: Final = frozenset(s.value for s in ACTIVE_STATUSES)
# Cancel is offered where the workflow accepts it; retry/delete where the service does (it decides).
CANCELLABLE: Final = LIVE_STATUSES
DELETABLE: Final = frozenset({"completed", "failed", "cancelled"})

_templates = Environment(
    loader=FileSystemLoader(TEMPLATES_DIR),
    autoescape=select_autoescape(default=True, default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)


def _when(value: str | None) -> str:
    """An instant as ``YYYY-MM-DD HH:MM:SS`` UTC (the API's RFC 3339 strings), or a dash."""
    if not value:
        return "–"
    try:
        return datetime.fromisoformat(value).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except ValueError:
        return value


def _percent(value: float | None) -> str:
    return f"{(value or 0):.1f} %"


def _pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)


_templates.filters["when"] = _when
_templates.filters["percent"] = _percent
_templates.filters["pretty_json"] = _pretty_json


def render(
    name: str, status_code: int = 200, headers: Mapping[str, str] | None = None, **context: Any
) -> Response[str]:
    """A template rendered as an HTML response.

    Args:
        name: the template file under ``templates/``.
        status_code: the answer's status.
        headers: extra response headers (htmx directives).
        **context: the template's variables (``static``, ``stream_base`` and ``files_path`` are added).
    """
    body = _templates.get_template(name).render(
        static=STATIC_PATH,
        console=CONSOLE_PATH,
        stream_base=STREAM_BASE,
        files_path=FILES_PATH,
        live_statuses=LIVE_STATUSES,
        **context,
    )
    return Response(body, media_type=MediaType.HTML, status_code=status_code, headers=dict(headers or {}))


def task_json(task: Task) -> dict[str, Any]:
    """The task as ``GET /api/v1/operations/tasks/{id}`` shows it (camelCase keys, RFC 3339 strings)."""
    shown: dict[str, Any] = msgspec.to_builtins(mapping.task_out(task))
    return shown


def is_htmx(request: Request[Any, Any, Any]) -> bool:
    """Whether htmx sent the request (it then wants a fragment, not a page)."""
    return request.headers.get("hx-request") == "true" and "hx-history-restore-request" not in request.headers


def _instant(raw: str | None, field: str, *, end_of_day: bool) -> datetime | None:
    """A filter instant: RFC 3339 with a zone as the API takes it, or a plain date (that UTC day).

    Raises:
        ValidationFailed: neither, or a date-time without a time zone.
    """
    if raw is None or not raw.strip():
        return None
    text = raw.strip()
    try:
        day = date.fromisoformat(text)
    except ValueError:
        pass
    else:
        return datetime.combine(day, time.max if end_of_day else time.min, tzinfo=UTC)
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise ValidationFailed(f"{field}: a date (YYYY-MM-DD) or an RFC 3339 instant", field=field) from None
    if value.tzinfo is None:
        raise ValidationFailed(f"{field}: give the instant a time zone (e.g. Z)", field=field)
    return value


def _blank(value: str | None) -> str | None:
    return value.strip() if value and value.strip() else None


async def same_origin_posts(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """Guard: a console form may only be posted by the console's own pages.

    In dev mode a request without credentials is the local admin, so a page of another site must
    not be able to post a form here (cross-site request forgery); the session cookie is already
    SameSite=Strict. Browsers send ``Sec-Fetch-Site`` with every request (older ones ``Origin``
    with a POST); a client sending neither is not a browser page and is let through.

    Raises:
        PermissionDenied: the POST came from another origin.
    """
    if connection.scope.get("method") != "POST":
        return
    fetch_site = connection.headers.get("sec-fetch-site")
    if fetch_site is not None:
        # The browser's own statement; Origin is "null" for a form posted under no-referrer.
        if fetch_site in ("same-origin", "none"):
            return
        raise PermissionDenied("console forms can only be posted from the console")
    origin = connection.headers.get("origin")
    if origin is not None and urlsplit(origin).netloc != connection.headers.get("host", ""):
        raise PermissionDenied("console forms can only be posted from the console")


def console_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """Errors of console routes as pages (or, for htmx, as a message in the page's flash area).

    Without credentials (outside dev mode) the browser is sent to the login form.
    """
    if isinstance(exc, Unauthenticated):
        target = f"{LOGIN_PATH}?{urlencode({'next': request.url.path})}"
        if is_htmx(request):
            return Response("", status_code=200, headers={"HX-Redirect": target})
        return Redirect(target, status_code=303)
    if isinstance(exc, DomainError):
        status, message, code = STATUS_BY_KIND.get(exc.kind, 500), exc.message, exc.code
    elif isinstance(exc, HTTPException):
        status, message, code = exc.status_code, exc.detail, "REQUEST_FAILED"
    else:
        logger.exception("console request failed", exc_info=exc)
        status, message, code = 500, "an unexpected error occurred; it has been logged", "INTERNAL"
    if status >= 500 and isinstance(exc, DomainError):
        logger.warning("console request failed: %s", exc.message)
    if is_htmx(request):
        headers = {"HX-Retarget": "#flash", "HX-Reswap": "innerHTML"}
        return render("_flash.html", status, headers, level="error", message=message, code=code)
    return render("error.html", status, status=status, message=message, code=code, principal=None)


@dataclass
class CancelForm:
    """The cancel button's form: an optional reason."""

    reason: str = ""


@dataclass
class LoginForm:
    """The login form: a bearer token or an API key, and where to go next."""

    credential: str = ""
    next: str = ""


FormBody = Body(media_type=RequestEncodingType.URL_ENCODED)


def _safe_next(raw: str | None) -> str:
    """Where to go after login: only a path of the console (no open redirect to another site)."""
    if raw and raw.startswith(CONSOLE_PATH) and not raw.startswith("//") and "\\" not in raw:
        return raw
    return CONSOLE_PATH


class ConsoleController(Controller):
    """``/console``: the task list, a task's page, its actions, and the login form."""

    path = CONSOLE_PATH
    include_in_schema = False
    guards = [same_origin_posts]  # noqa: RUF012 - Litestar reads these class attributes as is
    exception_handlers = {DomainError: console_error, HTTPException: console_error}  # noqa: RUF012

    @get("/")
    async def task_list(
        self,
        request: Request[Any, Any, Any],
        call: Call,
        page: FromQuery[int] = 1,
        page_size: Annotated[int, QueryParameter(name="pageSize")] = DEFAULT_PAGE_SIZE,
        task_type: Annotated[str | None, QueryParameter(name="taskType")] = None,
        entity_type: Annotated[str | None, QueryParameter(name="entityType")] = None,
        status: FromQuery[str | None] = None,
        requested_by: Annotated[str | None, QueryParameter(name="requestedBy")] = None,
        start_date: Annotated[str | None, QueryParameter(name="startDate")] = None,
        end_date: Annotated[str | None, QueryParameter(name="endDate")] = None,
        search: FromQuery[str | None] = None,
    ) -> Response[str]:
        """The task list with the API's filters and search; htmx asks for the table alone."""
        filters = {
            "taskType": _blank(task_type) or "",
            "entityType": _blank(entity_type) or "",
            "status": _blank(status) or "",
            "requestedBy": _blank(requested_by) or "",
            "startDate": _blank(start_date) or "",
            "endDate": _blank(end_date) or "",
            "search": _blank(search) or "",
        }
        query = TaskQuery(
            page=page,
            page_size=page_size,
            task_type=_blank(task_type),
            entity_type=_blank(entity_type),
            status=parse_status(status),
            requested_by=_blank(requested_by),
            start_date=_instant(start_date, "startDate", end_of_day=False),
            end_date=_instant(end_date, "endDate", end_of_day=True),
            search=_blank(search),
        )
        result = await call.tasks.list_tasks(call.principal, query)
        active = {k: v for k, v in filters.items() if v}
        pages = max(1, math.ceil(result.total / result.page_size)) if result.page_size else 1

        def page_url(number: int) -> str:
            return f"{CONSOLE_PATH}?{urlencode({**active, 'page': number, 'pageSize': result.page_size})}"

        context: dict[str, Any] = {
            "tasks": [task_json(t) for t in result.items],
            "total": result.total,
            "page": result.page,
            "pages": pages,
            "page_size": result.page_size,
            "prev_url": page_url(result.page - 1) if result.page > 1 else None,
            # The total may be an estimate beyond 10,000: a full page means there may be more.
            "next_url": page_url(result.page + 1) if len(result.items) == result.page_size else None,
            "self_url": page_url(result.page),
            "filters": filters,
            "statuses": [s.value for s in TaskStatus],
            "task_types": self._task_types(request),
            "principal": call.principal,
        }
        if is_htmx(request) and request.headers.get("hx-target") == "task-table":
            return render("_table.html", **context)
        return render("list.html", **context)

    @get("/new")
    async def new_task(self, request: Request[Any, Any, Any], call: Call) -> Response[str]:
        """The form creating a task (and uploading an import's file) through the REST API."""
        return render("new.html", task_types=self._task_types(request), principal=call.principal)

    @get("/tasks/{task_id:str}")
    async def task_page(self, task_id: FromPath[str], call: Call) -> Response[str]:
        """One task: counts, progress, details, actions, downloads, logs and events."""
        tid = parse_task_id(task_id)
        task = await call.tasks.get_task(call.principal, tid)
        logs = await self._history(call, tid, "logs", None)
        events = await self._history(call, tid, "events", None)
        return render("task.html", t=task_json(task), logs=logs, events=events, principal=call.principal)

    @get("/tasks/{task_id:str}/panel")
    async def task_panel(self, task_id: FromPath[str], call: Call) -> Response[str]:
        """The task's summary and actions (refreshed by the page when the status changes)."""
        task = await call.tasks.get_task(call.principal, parse_task_id(task_id))
        return render("_panel.html", t=task_json(task))

    @get("/tasks/{task_id:str}/logs")
    async def task_logs(
        self, task_id: FromPath[str], call: Call, page: FromQuery[int | None] = None
    ) -> Response[str]:
        """A page of the task's log lines (default: the newest)."""
        tid = parse_task_id(task_id)
        return render("_logs.html", t={"id": str(tid)}, logs=await self._history(call, tid, "logs", page))

    @get("/tasks/{task_id:str}/events")
    async def task_events(
        self, task_id: FromPath[str], call: Call, page: FromQuery[int | None] = None
    ) -> Response[str]:
        """A page of the task's events (default: the newest)."""
        tid = parse_task_id(task_id)
        return render(
            "_events.html", t={"id": str(tid)}, events=await self._history(call, tid, "events", page)
        )

    @post("/tasks/{task_id:str}/cancel", status_code=200)
    async def cancel(
        self, task_id: FromPath[str], call: Call, data: Annotated[CancelForm, FormBody]
    ) -> Response[str]:
        """Cancel the task; answers its refreshed summary."""
        reason = parse_cancel_reason(_blank(data.reason))
        task = await call.tasks.cancel_task(call.principal, parse_task_id(task_id), reason)
        return render("_panel.html", t=task_json(task), flash=f"cancel requested: the task is {task.status}")

    @post("/tasks/{task_id:str}/retry", status_code=200)
    async def retry(self, task_id: FromPath[str], call: Call) -> Response[str]:
        """Start the next attempt of a failed task; answers its refreshed summary."""
        task = await call.tasks.retry_task(call.principal, parse_task_id(task_id))
        return render("_panel.html", t=task_json(task), flash=f"retried: the task is {task.status}")

    @post("/tasks/{task_id:str}/delete", status_code=200)
    async def delete(
        self, request: Request[Any, Any, Any], task_id: FromPath[str], call: Call
    ) -> Response[Any]:
        """Delete a finished task; the browser goes back to the list."""
        tid = parse_task_id(task_id)
        await call.tasks.delete_task(call.principal, tid)
        target = f"{CONSOLE_PATH}?{urlencode({'deleted': str(tid)})}"
        if is_htmx(request):
            return Response("", headers={"HX-Redirect": target})
        return Redirect(target, status_code=303)

    @get("/tasks/{task_id:str}/download")
    async def download(
        self,
        request: Request[Any, Any, Any],
        task_id: FromPath[str],
        call: Call,
        file: FromQuery[str] = "output",
    ) -> Redirect:
        """Send the browser to the signed URL of the task's output, result report or input."""
        download = await call.tasks.download_url(call.principal, parse_task_id(task_id), file)
        return Redirect(same_origin_file_url(request, download.url), status_code=302)

    @get("/login", opt=PUBLIC)
    async def login_page(
        self, request: Request[Any, Any, Any], next: FromQuery[str | None] = None
    ) -> Response[str]:
        """The login form (a bearer token or an API key)."""
        runtime = request.app.state["runtime"]
        return render(
            "login.html", next=_safe_next(next), dev_mode=runtime.auth.dev_mode, principal=None, error=None
        )

    @post("/login", opt=PUBLIC, status_code=303)
    async def login(
        self, request: Request[Any, Any, Any], data: Annotated[LoginForm, FormBody]
    ) -> Response[Any]:
        """Check the pasted credential and keep it in the HttpOnly session cookie."""
        runtime = request.app.state["runtime"]
        auth = runtime.auth
        target = _safe_next(data.next)
        try:
            value = encode_credential(data.credential)
            principal: Principal = await auth.authenticate(
                credential_headers(value, auth.settings.api_key_header.lower())
            )
        except (ValidationFailed, Unauthenticated) as exc:
            return render(
                "login.html", 401, next=target, dev_mode=auth.dev_mode, principal=None, error=exc.message
            )
        logger.info("console login of %s (%s)", principal.subject, principal.via)
        return Redirect(target, status_code=303, cookies=[session_cookie(value, secure=_https(request))])

    @post("/logout", opt=PUBLIC, status_code=303)
    async def logout(self, request: Request[Any, Any, Any]) -> Redirect:
        """Forget the session cookie."""
        return Redirect(LOGIN_PATH, status_code=303, cookies=[expired_cookie(secure=_https(request))])

    @staticmethod
    def _task_types(request: Request[Any, Any, Any]) -> list[str]:
        return sorted(request.app.state["runtime"].settings.operations.task_types)

    @staticmethod
    async def _history(call: CallContext, task_id: uuid.UUID, kind: str, page: int | None) -> dict[str, Any]:
        """A page of logs or events (``kind``), the newest page unless ``page`` is given."""

        async def fetch(number: int) -> tuple[Any, int]:
            paging = PageRequest(page=number, page_size=HISTORY_ROWS)
            if kind == "logs":
                logs = await call.tasks.task_logs(call.principal, task_id, paging)
                return msgspec.to_builtins(mapping.log_list(logs)), logs.total
            events = await call.tasks.task_events(call.principal, task_id, paging)
            return msgspec.to_builtins(mapping.event_list(events)), events.total

        number = page or 1
        shown, total = await fetch(number)
        pages = max(1, math.ceil(total / HISTORY_ROWS))
        if page is None and pages > 1:
            number = pages
            shown, total = await fetch(number)
        return {"items": shown[kind], "total": total, "page": number, "pages": pages}


def same_origin_file_url(request: Request[Any, Any, Any], url: str) -> str:
    """A signed URL of this service's own file endpoint, made relative to the browser's origin.

    Local storage signs URLs for ``storage.public_base_url`` (default ``http://127.0.0.1:<port>``);
    the browser may reach the console by another name, and the signature covers the path and query
    only. S3 URLs are returned as they are.
    """
    if request.app.state["runtime"].settings.storage.backend != "local":
        return url
    parts = urlsplit(url)
    if not parts.path.startswith(FILES_PATH + "/"):
        return url
    return f"{parts.path}?{parts.query}" if parts.query else parts.path


def _https(request: Request[Any, Any, Any]) -> bool:
    return request.url.scheme == "https"
