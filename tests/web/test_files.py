"""Signed up- and downloads of the local storage backend through the real REST app."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

import httpx
import pytest

from common_operations.bootstrap import Runtime
from common_operations.config import S3Settings, Settings
from common_operations.domain.files import input_key, output_key
from common_operations.infra.storage import LocalStorage
from common_operations.infra.storage.s3 import S3Storage
from common_operations.web.app import create_app
from tests.web.support import assert_problem

TASK = "5a6b7c8d-9e0f-4a1b-8c2d-3e4f5a6b7c8d"


@pytest.fixture
def settings(settings: Settings, tmp_path: Path) -> Settings:
    """The suite's settings with this test's own data directory (storage root and signing key)."""
    return settings.model_copy(update={"data_dir": tmp_path})


@pytest.fixture
def storage(runtime: Runtime) -> LocalStorage:
    assert isinstance(runtime.storage, LocalStorage)
    return runtime.storage


def local(url: str) -> str:
    """The path and query of a signed URL, for the test's ASGI client."""
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


def with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.update(changes)
    return f"{parts.path}?{urlencode(query)}"


def upload_url(storage: LocalStorage, key: str, max_size: int = 1000, **kwargs: str) -> str:
    return local(storage.presign_upload(key, expires=timedelta(minutes=5), max_size=max_size, **kwargs).url)


async def test_upload_then_download(api: httpx.AsyncClient, storage: LocalStorage) -> None:
    key = input_key(TASK)
    data = b"sku,name\nA-1,Widget\n" * 1000
    resp = await api.put(upload_url(storage, key, 100_000, content_type="text/csv"), content=data)
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"key": key, "size": len(data)}
    info = storage.stat(key)
    assert info is not None
    assert (info.size, info.content_type) == (len(data), "text/csv")

    url = storage.presign_download(
        key, expires=timedelta(minutes=5), download_name="Prödukte 2026.csv", content_type="text/csv"
    )
    resp = await api.get(local(url.url))
    assert resp.status_code == 200, resp.text
    assert resp.content == data
    assert resp.headers["content-length"] == str(len(data))
    assert resp.headers["content-type"].startswith("text/csv")
    disposition = resp.headers["content-disposition"]
    assert disposition.startswith('attachment; filename="Produkte 2026.csv"; ')
    assert unquote(disposition.split("UTF-8''", 1)[1]) == "Prödukte 2026.csv"


async def test_a_chunked_upload_streams_in(api: httpx.AsyncClient, storage: LocalStorage) -> None:
    key = input_key(TASK)

    async def body() -> AsyncIterator[bytes]:
        for _ in range(40):
            yield b"z" * 65536

    resp = await api.put(upload_url(storage, key, 40 * 65536), content=body())
    assert resp.status_code == 200, resp.text
    assert resp.json()["size"] == 40 * 65536
    # Larger than the app's 1 MiB limit of ordinary request bodies: the grant's limit applies here.
    assert 40 * 65536 > 1024 * 1024
    # Without a content type in the grant or the request, the object is plain bytes.
    info = storage.stat(key)
    assert info is not None and info.content_type == "application/octet-stream"
    resp = await api.get(local(storage.presign_download(key, expires=timedelta(minutes=1)).url))
    assert resp.headers["content-type"] == "application/octet-stream"
    assert f'filename="{key.rsplit("/", 1)[1]}"' in resp.headers["content-disposition"]


async def test_an_over_limit_upload_is_refused_and_nothing_is_stored(
    api: httpx.AsyncClient, storage: LocalStorage
) -> None:
    key = input_key(TASK)
    url = upload_url(storage, key, max_size=10)
    # Announced by Content-Length: refused before the body is read.
    assert_problem(await api.put(url, content=b"x" * 11), 413, "PAYLOAD_TOO_LARGE")
    assert storage.stat(key) is None

    # Streamed without a length: refused at the first byte past the limit.
    async def body() -> AsyncIterator[bytes]:
        for _ in range(5):
            yield b"x" * 4

    assert_problem(await api.put(url, content=body()), 413, "PAYLOAD_TOO_LARGE")
    assert storage.stat(key) is None
    assert list(storage.iter_keys("")) == []
    # Exactly at the limit is fine.
    assert (await api.put(url, content=b"x" * 10)).status_code == 200


async def test_missing_and_empty_bodies(api: httpx.AsyncClient, storage: LocalStorage) -> None:
    key = input_key(TASK)
    url = upload_url(storage, key)
    assert_problem(await api.put(url, content=b""), 400, "EMPTY_BODY")
    request = api.build_request("PUT", url)
    request.headers.pop("content-length", None)
    assert_problem(await api.send(request), 411, "LENGTH_REQUIRED")
    assert storage.stat(key) is None


async def test_expired_urls_are_refused(api: httpx.AsyncClient, storage: LocalStorage) -> None:
    key = input_key(TASK)
    # Signed directly with an expiry in the past: no waiting for a clock.
    query = storage.signer.sign("put", key, int(time.time()) - 1, {"max": "100"})
    body = assert_problem(
        await api.put(f"/api/v1/files/{key}?{urlencode(query)}", content=b"x"), 403, "URL_EXPIRED"
    )
    assert "expired" in body["detail"]
    query = storage.signer.sign("get", key, int(time.time()) - 1, {})
    assert_problem(await api.get(f"/api/v1/files/{key}?{urlencode(query)}"), 403, "URL_EXPIRED")
    assert storage.stat(key) is None


async def test_tampered_urls_are_refused(api: httpx.AsyncClient, storage: LocalStorage) -> None:
    key = input_key(TASK)
    url = storage.presign_upload(key, expires=timedelta(minutes=5), max_size=10).url
    for bad in (
        with_query(url, max="1000000"),
        with_query(url, signature="A" * 43),
        with_query(url, expires=str(int(time.time()) + 86400)),
        local(url).replace(key, input_key(TASK)),
        local(url).split("?")[0],
        local(url) + "&max=5",
    ):
        assert_problem(await api.put(bad, content=b"x" * 20), 403, "INVALID_SIGNATURE")
    # An upload URL does not download, nor a download URL upload.
    assert_problem(await api.get(local(url)), 403, "INVALID_SIGNATURE")
    get_url = storage.presign_download(key, expires=timedelta(minutes=5)).url
    assert_problem(await api.put(local(get_url), content=b"x"), 403, "INVALID_SIGNATURE")
    assert list(storage.iter_keys("")) == []


async def test_download_of_a_missing_file(api: httpx.AsyncClient, storage: LocalStorage) -> None:
    url = storage.presign_download(output_key(TASK, "csv"), expires=timedelta(minutes=5)).url
    assert_problem(await api.get(local(url)), 404, "NOT_FOUND")


async def test_a_traversal_key_is_refused(api: httpx.AsyncClient) -> None:
    # Percent-encoded, so the client sends the dots as they are and the server decodes them.
    resp = await api.get("/api/v1/files/a/%2e%2e/%2e%2e/etc/passwd?expires=1&signature=x")
    assert_problem(resp, 400, "INVALID_KEY")


async def test_files_are_not_served_with_the_s3_backend(runtime: Runtime, storage: LocalStorage) -> None:
    # Never contacted: presigning and answering 404 need no request to the store.
    s3 = S3Storage(S3Settings(endpoint="127.0.0.1:9"))
    app = create_app(dataclasses.replace(runtime, storage=s3))
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver.local") as api:
        url = storage.presign_download(input_key(TASK), expires=timedelta(minutes=5)).url
        assert_problem(await api.get(local(url)), 404, "NOT_FOUND")
        assert_problem(await api.put(upload_url(storage, input_key(TASK)), content=b"x"), 404, "NOT_FOUND")
