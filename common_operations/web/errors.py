"""RFC 9457 problem details for every 4xx and 5xx answer of the REST API.

Domain errors are mapped by their transport-neutral ``kind`` (the gRPC server maps the same kinds to
status codes), Litestar's own exceptions by their HTTP status. Every problem carries a stable
``code`` that clients can switch on; ``detail`` is for humans and may change.
"""

from __future__ import annotations

import logging
import re
from http import HTTPStatus
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi import ResponseSpec
from litestar.types import ExceptionHandlersMap

from common_operations.db.outage import as_outage
from common_operations.domain.errors import DomainError, ErrorKind, RateLimited
from common_operations.infra.secrets import scrub
from common_operations.web.schemas import FieldError, ProblemDetails

logger = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
TYPE_PREFIX = "urn:common-operations:problem:"

STATUS_BY_KIND: dict[ErrorKind, int] = {
    ErrorKind.INVALID: 400,
    ErrorKind.NOT_FOUND: 404,
    ErrorKind.CONFLICT: 409,
    ErrorKind.DUPLICATE: 409,
    ErrorKind.UNAUTHENTICATED: 401,
    ErrorKind.FORBIDDEN: 403,
    ErrorKind.PRECONDITION: 412,
    ErrorKind.UNAVAILABLE: 503,
    ErrorKind.EXHAUSTED: 429,
    ErrorKind.TOO_LARGE: 413,
    ErrorKind.INTERNAL: 500,
}

# Codes of problems raised by the framework rather than the domain.
CODE_BY_STATUS: dict[int, str] = {
    400: "VALIDATION_FAILED",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    406: "NOT_ACCEPTABLE",
    409: "CONFLICT",
    412: "PRECONDITION_FAILED",
    413: "PAYLOAD_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
    429: "RATE_LIMITED",
    501: "NOT_IMPLEMENTED",
    503: "SERVICE_UNAVAILABLE",
}

INTERNAL_DETAIL = "an unexpected error occurred; it has been logged"

# msgspec names the offending member as a JSON path: "... - at `$.taskType`" or "`$[0].x`".
_JSON_PATH = re.compile(r"\s*-\s*at\s*`\$\.?(?P<path>[^`]*)`\s*$")
_MISSING = re.compile(r"missing required field `(?P<name>[^`]+)`")


def problem(
    request: Request[Any, Any, Any],
    status: int,
    code: str,
    detail: str,
    *,
    errors: list[FieldError] | None = None,
    details: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> Response[ProblemDetails]:
    """A problem-details response.

    Args:
        request: the request that failed (its path becomes ``instance``).
        status: the HTTP status.
        code: the stable machine-readable code.
        detail: a human-readable explanation of this occurrence.
        errors: the offending fields, for 400s.
        details: further context (JSON-safe values only).
        headers: extra response headers (``Allow`` on a 405, for example).
    """
    body = ProblemDetails(
        type=TYPE_PREFIX + code.lower().replace("_", "-"),
        title=_title(status),
        status=status,
        detail=detail,
        code=code,
        instance=request.url.path,
        errors=errors or None,
        details=details or None,
    )
    return Response(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _title(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _json_safe(value: Any) -> Any:
    """Details come from domain code; anything that is not plain JSON is shown as text."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, list | tuple | set | frozenset):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    return str(value)


def domain_error_handler(request: Request[Any, Any, Any], exc: DomainError) -> Response[ProblemDetails]:
    """Map a domain error by its kind; a ``field`` detail becomes an entry of ``errors``."""
    status = STATUS_BY_KIND.get(exc.kind, 500)
    details = {k: _json_safe(v) for k, v in exc.details.items() if k != "field"}
    errors = None
    field = exc.details.get("field")
    if field is not None:
        errors = [FieldError(field=str(field), message=exc.message)]
    if status >= 500 and exc.kind is ErrorKind.INTERNAL:
        logger.error("internal domain error on %s %s", request.method, request.url.path, exc_info=exc)
    message = exc.message
    if status >= 500:
        # Outage messages can quote a backing service's error text (its host, port or URL): the
        # client learns what is down, not where it is. The full text is in the log.
        message = scrub(message)
        if message != exc.message:
            logger.warning("%s %s: %s", request.method, request.url.path, exc.message)
    headers = None
    if isinstance(exc, RateLimited):
        headers = {"Retry-After": str(exc.retry_after_seconds)}
    elif exc.kind is ErrorKind.UNAUTHENTICATED:
        headers = {"WWW-Authenticate": 'Bearer realm="common-operations"'}
    return problem(request, status, exc.code, message, errors=errors, details=details, headers=headers)


def _field_errors(extra: dict[str, Any] | list[Any] | None) -> list[FieldError]:
    """Litestar's validation ``extra`` as ``errors`` entries, naming the JSON field when it can."""
    items: list[Any] = extra if isinstance(extra, list) else [extra] if extra else []
    errors: list[FieldError] = []
    for item in items:
        if not isinstance(item, dict):
            errors.append(FieldError(field=None, message=str(item)))
            continue
        message = str(item.get("message", "invalid value"))
        key = item.get("key")
        # Query parameters are reported by their Python name; clients know them in camelCase.
        field = _camel(str(key)) if key is not None and key != "data" else None
        if match := _JSON_PATH.search(message):
            # A body member: name it as the client wrote it (the schemas rename to camelCase).
            message = message[: match.start()]
            field = match.group("path") or field
        if field is None and (missing := _MISSING.search(message)):
            field = missing.group("name")
        errors.append(FieldError(field=field, message=message))
    return errors


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


def validation_handler(request: Request[Any, Any, Any], exc: ValidationException) -> Response[ProblemDetails]:
    """Undecodable input (bad JSON, wrong types, missing fields, bad query parameters) → 400."""
    errors = _field_errors(exc.extra)
    if errors:
        detail = "; ".join(f"{e.field}: {e.message}" if e.field else e.message for e in errors)
    else:
        detail = exc.detail
    return problem(request, 400, "VALIDATION_FAILED", detail, errors=errors)


def http_error_handler(request: Request[Any, Any, Any], exc: HTTPException) -> Response[ProblemDetails]:
    """Framework errors (unknown route, wrong method, malformed body, …) by HTTP status."""
    status = exc.status_code
    expected = status < 500 or status in (501, 503)
    if not expected:
        logger.error("HTTP %s on %s %s", status, request.method, request.url.path, exc_info=exc)
    code = CODE_BY_STATUS.get(status, "BAD_REQUEST" if status < 500 else "INTERNAL")
    detail = exc.detail if expected else INTERNAL_DETAIL
    if status == 404 and detail == HTTPStatus.NOT_FOUND.phrase:
        detail = f"no route matches {request.method} {request.url.path}"
    elif status == 405 and detail == HTTPStatus.METHOD_NOT_ALLOWED.phrase:
        detail = f"{request.method} is not allowed on {request.url.path}"
    errors = _field_errors(exc.extra) if status == 400 else None
    headers = {str(k): str(v) for k, v in exc.headers.items()} if exc.headers else None
    return problem(request, status, code, detail, errors=errors, headers=headers)


def internal_error_handler(request: Request[Any, Any, Any], exc: Exception) -> Response[ProblemDetails]:
    """Anything unexpected: log the traceback, tell the client nothing about the internals.

    An unreachable database is not a bug: 503, to be retried.
    """
    if (outage := as_outage(exc)) is not None:
        logger.warning("%s %s: %s", request.method, request.url.path, exc)
        return domain_error_handler(request, outage)
    logger.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem(request, 500, "INTERNAL", INTERNAL_DETAIL)


def exception_handlers() -> ExceptionHandlersMap:
    """The handlers to install on the app; Litestar picks the most specific class."""
    return {
        DomainError: domain_error_handler,
        ValidationException: validation_handler,
        HTTPException: http_error_handler,
        Exception: internal_error_handler,
    }


def problem_responses(*statuses: int) -> dict[int, ResponseSpec]:
    """OpenAPI documentation of the problems a route can answer (replaces Litestar's default 400)."""
    return {
        status: ResponseSpec(
            data_container=ProblemDetails,
            description=_title(status) + " (problem details)",
            media_type=PROBLEM_JSON,
            generate_examples=False,
        )
        for status in statuses
    }
