"""The one place where errors become gRPC statuses.

A :class:`DomainError` keeps its message as the status details and its stable ``code`` in the
``error-code`` trailing metadata, so clients can branch on the code without parsing text; a rate
limited call also says in ``retry-after`` how many seconds to wait. A request protobuf cannot
decode is the caller's mistake too (INVALID_ARGUMENT), not grpc's UNKNOWN. Anything else is a bug:
it is logged with its traceback and the client sees a generic INTERNAL status.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Final, NoReturn, TypeAlias, TypeVar

import grpc
import grpc.aio
from google.protobuf.message import DecodeError, Message

from common_operations.db.outage import as_outage
from common_operations.domain.errors import DomainError, ErrorKind, RateLimited, ValidationFailed

log = logging.getLogger(__name__)

ERROR_CODE_KEY: Final = "error-code"
RETRY_AFTER_KEY: Final = "retry-after"
MAX_DETAILS_BYTES: Final = 1024
INTERNAL_CODE: Final = "INTERNAL"
INTERNAL_MESSAGE: Final = "internal error; see the service logs"

STATUS_BY_KIND: Final[dict[ErrorKind, grpc.StatusCode]] = {
    ErrorKind.INVALID: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorKind.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorKind.CONFLICT: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorKind.DUPLICATE: grpc.StatusCode.ALREADY_EXISTS,
    ErrorKind.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    ErrorKind.FORBIDDEN: grpc.StatusCode.PERMISSION_DENIED,
    ErrorKind.PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorKind.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    ErrorKind.EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorKind.TOO_LARGE: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorKind.INTERNAL: grpc.StatusCode.INTERNAL,
}

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]

_S = TypeVar("_S")
_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")


def status_for(err: DomainError) -> grpc.StatusCode:
    """The gRPC status code of a domain error."""
    return STATUS_BY_KIND.get(err.kind, grpc.StatusCode.INTERNAL)


@dataclass(frozen=True, slots=True)
class UndecodableRequest:
    """What the servicer receives instead of a request message that protobuf cannot decode."""

    message_type: str
    reason: str


_M = TypeVar("_M", bound=Message)


def lenient_deserializer(message_class: type[_M]) -> Callable[[bytes], _M | UndecodableRequest]:
    """A request deserializer that hands undecodable bytes to the method instead of raising.

    grpc answers a deserializer's exception with UNKNOWN and the exception's text; this way the
    method's :func:`grpc_errors` answers INVALID_ARGUMENT with the ``error-code`` like any bad input.
    Undecodable means corrupt wire data, invalid UTF-8 in a string, or nesting beyond protobuf's
    recursion limit (a ``Struct`` about 100 levels deep).

    Args:
        message_class: the generated request message class.
    """

    def decode(data: bytes) -> _M | UndecodableRequest:
        try:
            return message_class.FromString(data)
        except DecodeError as exc:
            return UndecodableRequest(message_class.DESCRIPTOR.full_name, str(exc))

    return decode


def status_details(err: DomainError) -> str:
    """The error's message as status details, cut to :data:`MAX_DETAILS_BYTES` of UTF-8.

    grpc sends the details percent-encoded in the ``grpc-message`` trailer (3 characters per
    non-ASCII byte), and a client drops an answer whose trailers pass its metadata limit (8 KiB
    soft, 16 KiB hard) as RESOURCE_EXHAUSTED "Stream removed": a message that names a long input
    must not cost the caller the answer.
    """
    encoded = err.message.encode("utf-8")
    if len(encoded) <= MAX_DETAILS_BYTES:
        return err.message
    return encoded[: MAX_DETAILS_BYTES - 3].decode("utf-8", errors="ignore") + "…"


def trailing_metadata(err: DomainError) -> tuple[tuple[str, str], ...]:
    """``error-code`` for every domain error, and ``retry-after`` (whole seconds) when rate limited.

    ``retry-after`` carries the same rounded-up seconds as REST's ``Retry-After`` header, so a
    client backs off the same way over either transport.
    """
    if isinstance(err, RateLimited):
        return ((ERROR_CODE_KEY, err.code), (RETRY_AFTER_KEY, str(err.retry_after_seconds)))
    return ((ERROR_CODE_KEY, err.code),)


def grpc_errors(
    method: Callable[[_S, _Req, Context], Awaitable[_Resp]],
) -> Callable[[_S, _Req, Context], Coroutine[Any, Any, _Resp]]:
    """Wrap an RPC method so that errors leave it as gRPC statuses.

    Args:
        method: an ``async`` servicer method ``(self, request, context) -> response``.

    Returns:
        The method, aborting the call with the mapped status when it raises.
    """

    @functools.wraps(method)
    async def handler(self: _S, request: _Req, context: Context) -> _Resp:
        try:
            _check_decoded(request)
            return await method(self, request, context)
        except Exception as exc:
            await _abort_for(context, method, exc)

    return handler


def grpc_stream_errors(
    method: Callable[[_S, _Req, Context], AsyncGenerator[_Resp, None]],
) -> Callable[[_S, _Req, Context], AsyncIterator[_Resp]]:
    """:func:`grpc_errors` for a server-streaming method (an async generator of responses).

    An error before the first response or between two ends the stream with the mapped status.
    """

    @functools.wraps(method)
    async def handler(self: _S, request: _Req, context: Context) -> AsyncIterator[_Resp]:
        try:
            _check_decoded(request)
            # aclosing: a call the client cancels closes the method's generator (and what it holds).
            async with contextlib.aclosing(method(self, request, context)) as responses:
                async for response in responses:
                    yield response
        except Exception as exc:
            await _abort_for(context, method, exc)

    return handler


def _check_decoded(request: object) -> None:
    if isinstance(request, UndecodableRequest):
        raise ValidationFailed(f"the request is not a valid {request.message_type} message: {request.reason}")


async def _abort_for(context: Context, method: object, exc: Exception) -> NoReturn:
    """End the call with the status ``exc`` maps to."""
    if isinstance(exc, grpc.aio.AbortError):
        # The method aborted the call itself; its status stands.
        raise exc
    if isinstance(exc, DomainError):
        await context.abort(status_for(exc), status_details(exc), trailing_metadata=trailing_metadata(exc))
    name = getattr(method, "__qualname__", method)
    if (outage := as_outage(exc)) is not None:  # an unreachable database: retry, not a bug
        log.warning("%s: %s", name, exc)
        await context.abort(
            status_for(outage), outage.message, trailing_metadata=((ERROR_CODE_KEY, outage.code),)
        )
    # The client learns nothing about internals; the traceback goes to the log.
    log.error("unexpected error in %s", name, exc_info=exc)
    await context.abort(
        grpc.StatusCode.INTERNAL,
        INTERNAL_MESSAGE,
        trailing_metadata=((ERROR_CODE_KEY, INTERNAL_CODE),),
    )
