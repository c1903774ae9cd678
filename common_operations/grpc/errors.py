"""The one place where errors become gRPC statuses.

A :class:`DomainError` keeps its message as the status details and its stable ``code`` in the
``error-code`` trailing metadata, so clients can branch on the code without parsing text. Anything
else is a bug: it is logged with its traceback and the client sees a generic INTERNAL status.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Final, TypeAlias, TypeVar

import grpc
import grpc.aio

from common_operations.domain.errors import DomainError, ErrorKind

log = logging.getLogger(__name__)

ERROR_CODE_KEY: Final = "error-code"
INTERNAL_CODE: Final = "INTERNAL"
INTERNAL_MESSAGE: Final = "internal error; see the service logs"

STATUS_BY_KIND: Final[dict[ErrorKind, grpc.StatusCode]] = {
    ErrorKind.INVALID: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorKind.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorKind.CONFLICT: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorKind.FORBIDDEN: grpc.StatusCode.PERMISSION_DENIED,
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
            return await method(self, request, context)
        except DomainError as err:
            await context.abort(status_for(err), err.message, trailing_metadata=((ERROR_CODE_KEY, err.code),))
        except grpc.aio.AbortError:
            # The method aborted the call itself; its status stands.
            raise
        except Exception:
            # The client learns nothing about internals; the traceback goes to the log.
            log.exception("unexpected error in %s", getattr(method, "__qualname__", method))
            await context.abort(
                grpc.StatusCode.INTERNAL,
                INTERNAL_MESSAGE,
                trailing_metadata=((ERROR_CODE_KEY, INTERNAL_CODE),),
            )

    return handler
