"""Up- and downloads of the local storage backend through signed URLs (``/api/v1/files/{key}``).

The URLs come from :meth:`LocalStorage.presign_upload` and :meth:`LocalStorage.presign_download`;
a request is served only with a valid, unexpired signature for its operation and key. With the S3
backend clients talk to the object store directly, and every path here answers 404.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio.to_thread
from litestar import Controller, Request, Response, get, put
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.exceptions import NotFoundException
from litestar.params import FromPath, SkipValidation
from litestar.response import Stream

from common_operations.domain.errors import PayloadTooLarge, ValidationFailed
from common_operations.domain.files import content_disposition
from common_operations.infra.storage.base import ObjectNotFound
from common_operations.infra.storage.local import FILES_PATH, LocalStorage, store_stream
from common_operations.infra.storage.signing import InvalidSignature, Operation, SignedGrant
from common_operations.web.errors import problem, problem_responses
from common_operations.web.schemas import ProblemDetails

READ_CHUNK_BYTES = 256 * 1024
DEFAULT_CONTENT_TYPE = "application/octet-stream"


@dataclass(frozen=True, slots=True)
class UploadedFile:
    """The stored upload."""

    key: str
    size: int


def _provide_files(state: State) -> LocalStorage:
    storage = state.runtime.storage
    if not isinstance(storage, LocalStorage):
        # Not an error of the client's URL but of where it was sent: there are no files here.
        raise NotFoundException("files are not served here: the storage backend is not local")
    return storage


# The injected storage is ours: no need for Litestar to validate it on every request.
Files = NamedDependency[SkipValidation[LocalStorage]]


def _grant(files: LocalStorage, op: Operation, key: Path, request: Request[Any, Any, Any]) -> SignedGrant:
    """The verified grant of the request's URL (the key as the URL names it, without the leading /)."""
    query: dict[str, str] = {}
    for name, values in request.query_params.dict().items():
        if len(values) != 1:
            # A repeated parameter could be read one way here and another way when signed.
            raise InvalidSignature(f"the URL repeats the parameter {name!r}")
        query[name] = values[0]
    return files.verify(op, key.as_posix().lstrip("/"), query)


class FileController(Controller):
    """Signed up- and downloads of task files (local storage backend only)."""

    path = FILES_PATH
    tags = ["Files"]  # noqa: RUF012 - Litestar reads this class attribute as is
    dependencies = {"files": Provide(_provide_files, sync_to_thread=False)}  # noqa: RUF012 - as above
    include_in_schema = False

    @put(
        "/{key:path}",
        operation_id="UploadFile",
        summary="Upload a file to a signed URL",
        status_code=200,
        # The grant's own limit applies, checked while the body streams in.
        request_max_body_size=None,
        responses=problem_responses(400, 403, 404, 411, 413),
    )
    async def upload(
        self, key: FromPath[Path], files: Files, request: Request[Any, Any, Any]
    ) -> UploadedFile | Response[ProblemDetails]:
        """Store the request body (streamed, never held in memory) under the URL's key.

        Raises:
            InvalidSignature: (403 ``INVALID_SIGNATURE``) the URL is not a valid upload URL of this key.
            UrlExpired: (403 ``URL_EXPIRED``) the URL has expired.
            PayloadTooLarge: (413) the body is larger than the URL allows; nothing is stored.
        """
        grant = _grant(files, "put", key, request)
        max_size = grant.max_size
        if max_size is None:
            raise InvalidSignature("the URL is not an upload URL")
        length_header = request.headers.get("content-length")
        if length_header is not None:
            if not length_header.isdigit():
                raise ValidationFailed("Content-Length must be a whole number", field="Content-Length")
            length = int(length_header)
            if length > max_size:
                raise PayloadTooLarge(
                    f"the upload has {length} bytes; this URL accepts at most {max_size}",
                    size=length,
                    max_size=max_size,
                )
        elif "chunked" not in request.headers.get("transfer-encoding", "").lower():
            return problem(
                request, 411, "LENGTH_REQUIRED", "send the file as the body, with a Content-Length header"
            )
        content_type = grant.content_type or request.headers.get("content-type") or DEFAULT_CONTENT_TYPE
        size = await store_stream(
            files,
            grant.key,
            request.stream(),
            max_size=max_size,
            content_type=content_type,
            allow_empty=False,
        )
        return UploadedFile(key=grant.key, size=size)

    @get(
        "/{key:path}",
        operation_id="DownloadFile",
        summary="Download a file from a signed URL",
        responses=problem_responses(400, 403, 404),
    )
    async def download(self, key: FromPath[Path], files: Files, request: Request[Any, Any, Any]) -> Stream:
        """Stream the file, named by the URL's download name.

        Raises:
            InvalidSignature: (403 ``INVALID_SIGNATURE``) the URL is not a valid download URL of this key.
            UrlExpired: (403 ``URL_EXPIRED``) the URL has expired.
            ObjectNotFound: (404 ``NOT_FOUND``) no file has the key (yet).
        """
        grant = _grant(files, "get", key, request)
        info = await anyio.to_thread.run_sync(files.stat, grant.key)
        if info is None:
            raise ObjectNotFound(f"no file has the key {grant.key!r}", key=grant.key)
        # nosniff: a browser must not run an uploaded file as HTML or script from this origin.
        headers = {"Content-Length": str(info.size), "X-Content-Type-Options": "nosniff"}
        headers["Content-Disposition"] = content_disposition(
            grant.download_name or grant.key.rsplit("/", 1)[-1]
        )
        media_type = grant.content_type or DEFAULT_CONTENT_TYPE
        # Litestar appends "; charset=utf-8" to every text/* type; one that names its charset
        # already goes out as it is.
        if media_type.startswith("text/") and "charset=" in media_type:
            headers["content-type"] = media_type
        return Stream(_chunks(files, grant.key, info.size), media_type=media_type, headers=headers)


async def _chunks(files: LocalStorage, key: str, size: int) -> AsyncIterator[bytes]:
    """The first ``size`` bytes of the file, read in a worker thread chunk by chunk.

    Never more than ``size``: the file may be replaced while it is sent, and the answer's
    Content-Length was already promised.
    """
    with files.open_read(key) as file:
        left = size
        while left > 0:
            chunk = await anyio.to_thread.run_sync(file.read, min(READ_CHUNK_BYTES, left))
            if not chunk:
                break
            left -= len(chunk)
            yield chunk
