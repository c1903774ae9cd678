"""The S3 backend against moto's in-process S3 server.

moto does not check presigned URLs' signatures or expiry (../shared/notes/stack-recipes.md §7), so
those are asserted on the URL itself; the local backend's tests cover rejection.
"""

from __future__ import annotations

import os
from datetime import timedelta
from urllib.parse import parse_qs, unquote, urlsplit

import httpx
import pytest

from common_operations.config import S3Settings
from common_operations.domain.errors import PayloadTooLarge
from common_operations.domain.files import InvalidKey, input_key, output_key, task_prefix
from common_operations.infra.storage import ObjectNotFound, check_uploaded_size
from common_operations.infra.storage.s3 import MIN_PART_SIZE, S3Storage, StorageUnavailable

TASK = "3c9e1a52-5b7d-4f20-8a61-7e8f9a0b1c2d"


def read(storage: S3Storage, key: str, offset: int = 0) -> bytes:
    with storage.open_read(key, offset) as stream:
        return stream.read()


def test_ensure_ready_creates_the_bucket_once(s3_settings: S3Settings) -> None:
    storage = S3Storage(s3_settings)
    assert not storage.client.bucket_exists(s3_settings.bucket)
    storage.ensure_ready()
    assert storage.client.bucket_exists(s3_settings.bucket)
    storage.ensure_ready()


def test_ensure_ready_without_permission_to_create(s3_settings: S3Settings) -> None:
    settings = s3_settings.model_copy(update={"create_bucket": False})
    with pytest.raises(StorageUnavailable, match="does not exist"):
        S3Storage(settings).ensure_ready()


def test_ensure_ready_with_an_unreachable_endpoint(s3_settings: S3Settings) -> None:
    # Port 9 (discard) on loopback: nothing listens there, so the connection is refused at once.
    settings = s3_settings.model_copy(update={"endpoint": "127.0.0.1:9"})
    with pytest.raises(StorageUnavailable, match="cannot be reached") as info:
        S3Storage(settings).ensure_ready()
    assert info.value.code == "STORAGE_UNAVAILABLE"


def test_presigned_put_then_stat_and_reads(s3_storage: S3Storage) -> None:
    key = input_key(TASK)
    data = os.urandom(17_000)
    url = s3_storage.presign_upload(key, expires=timedelta(minutes=10), max_size=20_000)
    query = parse_qs(urlsplit(url.url).query)
    assert query["X-Amz-Expires"] == ["600"]
    assert s3_storage.stat(key) is None
    resp = httpx.put(url.url, content=data, headers={"Content-Type": "text/csv"})
    assert resp.status_code == 200, resp.text
    info = s3_storage.stat(key)
    assert info is not None
    assert (info.size, info.content_type) == (17_000, "text/csv")
    assert read(s3_storage, key) == data
    assert read(s3_storage, key, 16_990) == data[16_990:]
    assert read(s3_storage, key, 17_000) == b""
    assert check_uploaded_size(s3_storage, key, 17_000).size == 17_000


def test_an_oversize_presigned_upload_is_found_and_deleted(s3_storage: S3Storage) -> None:
    key = input_key(TASK)
    url = s3_storage.presign_upload(key, expires=timedelta(minutes=10), max_size=10)
    assert httpx.put(url.url, content=b"x" * 11).status_code == 200
    with pytest.raises(PayloadTooLarge):
        check_uploaded_size(s3_storage, key, 10)
    assert s3_storage.stat(key) is None


def test_multipart_write_of_several_parts(s3_storage: S3Storage) -> None:
    key = output_key(TASK, "csv")
    chunk = os.urandom(1024 * 1024)
    total = 2 * MIN_PART_SIZE + 3 * len(chunk)  # two full parts and a short last one
    with s3_storage.open_write(key, content_type="text/csv", metadata={"rows": "42"}) as writer:
        for _ in range(total // len(chunk)):
            writer.write(chunk)
        # Two parts are uploaded, but nothing is visible until the upload completes.
        assert s3_storage.stat(key) is None
        assert writer.bytes_written == total
        parts = writer.parts  # type: ignore[attr-defined]
    assert len(parts) == 3
    info = s3_storage.stat(key)
    assert info is not None
    assert (info.size, info.content_type, info.metadata) == (total, "text/csv", {"rows": "42"})
    with s3_storage.open_read(key, total - 10) as stream:
        assert stream.read() == chunk[-10:]


def test_small_write_is_one_put(s3_storage: S3Storage) -> None:
    key = output_key(TASK, "json")
    with s3_storage.open_write(key, content_type="application/json", metadata={"a": "b"}) as writer:
        writer.write(b"{}")
    info = s3_storage.stat(key)
    assert info is not None
    assert (info.size, info.content_type, info.metadata) == (2, "application/json", {"a": "b"})
    assert read(s3_storage, key) == b"{}"


@pytest.mark.parametrize("size", [100, MIN_PART_SIZE + 100])
def test_an_aborted_write_leaves_nothing(s3_storage: S3Storage, size: int) -> None:
    key = output_key(TASK, "csv")
    with pytest.raises(RuntimeError), s3_storage.open_write(key, content_type="text/csv") as writer:
        writer.write(b"y" * size)
        raise RuntimeError("export failed")
    assert s3_storage.stat(key) is None
    assert list(s3_storage.iter_keys(task_prefix(TASK))) == []
    uploads = s3_storage.client._list_multipart_uploads(s3_storage.bucket)
    assert list(uploads.uploads) == []


def test_presigned_get_with_content_disposition(s3_storage: S3Storage) -> None:
    key = output_key(TASK, "csv")
    with s3_storage.open_write(key, content_type="text/csv") as writer:
        writer.write(b"a,b\n1,2\n")
    url = s3_storage.presign_download(
        key, expires=timedelta(minutes=5), download_name="Résumé.csv", content_type="text/csv; charset=utf-8"
    )
    resp = httpx.get(url.url)
    assert resp.status_code == 200
    assert resp.content == b"a,b\n1,2\n"
    disposition = resp.headers["content-disposition"]
    assert disposition.startswith('attachment; filename="Resume.csv"')
    assert unquote(disposition.split("UTF-8''", 1)[1]) == "Résumé.csv"
    assert resp.headers["content-type"] == "text/csv; charset=utf-8"


def test_public_endpoint_signs_for_the_host_clients_see(s3_settings: S3Settings) -> None:
    settings = s3_settings.model_copy(update={"public_endpoint": "https://files.example.com"})
    # No request is made: presigning is offline with a fixed region.
    url = S3Storage(settings).presign_download(input_key(TASK), expires=timedelta(minutes=1))
    parts = urlsplit(url.url)
    assert (parts.scheme, parts.netloc) == ("https", "files.example.com")
    assert parts.path.startswith(f"/{s3_settings.bucket}/{TASK}/input/")


def test_missing_objects(s3_storage: S3Storage) -> None:
    key = input_key(TASK)
    assert s3_storage.stat(key) is None
    with pytest.raises(ObjectNotFound):
        read(s3_storage, key)


def test_delete_prefix(s3_storage: S3Storage) -> None:
    other = "4d0f2b63-6c8e-4031-9b72-8f9a0b1c2d3e"
    keys = [input_key(TASK), output_key(TASK, "csv"), output_key(TASK, "xlsx")]
    for key in [*keys, input_key(other)]:
        with s3_storage.open_write(key, content_type="text/plain") as writer:
            writer.write(b"x")
    assert sorted(s3_storage.iter_keys(task_prefix(TASK))) == sorted(keys)
    assert s3_storage.delete_prefix(task_prefix(TASK)) == 3
    assert list(s3_storage.iter_keys(task_prefix(TASK))) == []
    assert len(list(s3_storage.iter_keys(task_prefix(other)))) == 1
    assert s3_storage.delete_prefix(task_prefix(TASK)) == 0
    with pytest.raises(InvalidKey):
        s3_storage.delete_prefix("")


def test_a_part_size_below_s3s_minimum_is_refused(s3_settings: S3Settings) -> None:
    with pytest.raises(ValueError):
        S3Storage(s3_settings, part_size=1024)
