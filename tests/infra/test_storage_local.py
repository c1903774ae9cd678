"""The local storage backend: files under a root, written atomically, and its signed URLs."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest

from common_operations.config import Settings
from common_operations.domain.errors import PayloadTooLarge
from common_operations.domain.files import InvalidKey, input_key, output_key, task_prefix
from common_operations.infra.storage import (
    LocalStorage,
    ObjectNotFound,
    build_storage,
    check_uploaded_size,
    signing_secret,
)
from common_operations.infra.storage.local import EmptyBody, store_stream
from common_operations.infra.storage.signing import InvalidSignature, UrlExpired, UrlSigner

TASK = "7d0c5e8e-1d7f-4b38-9c4e-2f3a4b5c6d7e"
SECRET = b"s" * 32


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    store = LocalStorage(tmp_path / "root", "http://files.example:8000/", SECRET)
    store.ensure_ready()
    return store


def write(storage: LocalStorage, key: str, data: bytes, content_type: str = "text/csv") -> None:
    with storage.open_write(key, content_type=content_type, metadata={"origin": "test"}) as writer:
        for start in range(0, len(data), 7):
            writer.write(data[start : start + 7])
        assert writer.bytes_written == len(data)


def read(storage: LocalStorage, key: str, offset: int = 0) -> bytes:
    with storage.open_read(key, offset) as stream:
        return stream.read()


def test_round_trip_with_metadata(storage: LocalStorage) -> None:
    key = output_key(TASK, "csv")
    assert storage.stat(key) is None
    write(storage, key, b"id,name\n1,alpha\n")
    info = storage.stat(key)
    assert info is not None
    assert (info.key, info.size, info.content_type, info.metadata) == (
        key,
        16,
        "text/csv",
        {"origin": "test"},
    )
    assert read(storage, key) == b"id,name\n1,alpha\n"
    # A second write replaces the first.
    write(storage, key, b"new")
    assert read(storage, key) == b"new"
    assert list(storage.iter_keys(task_prefix(TASK))) == [key]


def test_offset_reads(storage: LocalStorage) -> None:
    key = input_key(TASK)
    write(storage, key, bytes(range(256)))
    assert read(storage, key, 250) == bytes(range(250, 256))
    assert read(storage, key, 256) == b""
    with pytest.raises(ValueError):
        read(storage, key, -1)


def test_missing_object(storage: LocalStorage) -> None:
    with pytest.raises(ObjectNotFound) as info:
        read(storage, input_key(TASK))
    assert info.value.code == "NOT_FOUND"


def test_a_failed_write_leaves_nothing(storage: LocalStorage) -> None:
    key = input_key(TASK)
    with pytest.raises(RuntimeError), storage.open_write(key, content_type="text/csv") as writer:
        writer.write(b"partial")
        # Not visible while it is written.
        assert storage.stat(key) is None
        raise RuntimeError("client went away")
    assert storage.stat(key) is None
    assert list(storage.iter_keys("")) == []
    # No temporary or side file is left behind either.
    assert [p for p in storage.root.rglob("*") if p.is_file()] == []


def test_a_failed_rewrite_keeps_the_earlier_object(storage: LocalStorage) -> None:
    key = input_key(TASK)
    write(storage, key, b"first")
    with pytest.raises(RuntimeError), storage.open_write(key, content_type="text/plain") as writer:
        writer.write(b"second")
        raise RuntimeError("boom")
    assert read(storage, key) == b"first"


def test_delete_prefix(storage: LocalStorage) -> None:
    other = "8e1d6f9f-2e80-4c49-8d5f-3a4b5c6d7e8f"
    keys = [input_key(TASK), output_key(TASK, "csv"), output_key(TASK, "json")]
    for key in [*keys, input_key(other)]:
        write(storage, key, b"x")
    assert storage.delete_prefix(task_prefix(TASK)) == 3
    assert all(storage.stat(key) is None for key in keys)
    assert not (storage.root / TASK).exists()
    assert len(list(storage.iter_keys(task_prefix(other)))) == 1
    assert storage.delete_prefix(task_prefix(TASK)) == 0
    with pytest.raises(InvalidKey):
        storage.delete_prefix("")


@pytest.mark.parametrize("key", ["../escape", "/abs/path", "a/../../b", "a//b", "a\\..\\b", "a/b\x00"])
def test_traversal_keys_are_refused(storage: LocalStorage, key: str) -> None:
    with pytest.raises(InvalidKey):
        storage.stat(key)
    with pytest.raises(InvalidKey), storage.open_write(key, content_type="text/plain"):
        pass
    with pytest.raises(InvalidKey):
        storage.presign_download(key, expires=timedelta(minutes=1))
    assert not (storage.root.parent / "escape").exists()


def test_a_symlink_out_of_the_root_is_refused(storage: LocalStorage, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (storage.root / TASK).symlink_to(outside)
    with pytest.raises(InvalidKey):
        storage.stat(f"{TASK}/input/x")


def query_of(url: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(url).query))


def test_presigned_urls_verify_for_their_operation_and_key(storage: LocalStorage) -> None:
    key = input_key(TASK)
    upload = storage.presign_upload(key, expires=timedelta(minutes=5), max_size=1000, content_type="text/csv")
    parts = urlsplit(upload.url)
    assert f"{parts.scheme}://{parts.netloc}" == "http://files.example:8000"
    assert parts.path == f"/api/v1/files/{key}"
    grant = storage.verify("put", key, query_of(upload.url))
    assert (grant.op, grant.key, grant.max_size, grant.content_type) == ("put", key, 1000, "text/csv")
    assert abs(grant.expires_at - upload.expires_at.timestamp()) < 1

    download = storage.presign_download(key, expires=timedelta(minutes=5), download_name="Report é.csv")
    grant = storage.verify("get", key, query_of(download.url))
    assert grant.download_name == "Report é.csv"
    assert grant.max_size is None


def test_tampered_urls_are_refused(storage: LocalStorage) -> None:
    key = input_key(TASK)
    query = query_of(storage.presign_upload(key, expires=timedelta(minutes=5), max_size=1000).url)
    tampered = [
        {**query, "max": "1000000"},
        {**query, "expires": str(int(query["expires"]) + 3600)},
        {**query, "signature": query["signature"][:-2] + "AA"},
        {**query, "type": "text/html"},
        {k: v for k, v in query.items() if k != "signature"},
        {k: v for k, v in query.items() if k != "max"},
        {**query, "expires": "soon"},
    ]
    for bad in tampered:
        with pytest.raises(InvalidSignature) as info:
            storage.verify("put", key, bad)
        assert info.value.code == "INVALID_SIGNATURE"
        assert info.value.kind.value == "forbidden"
    # Another operation, another key, another secret.
    with pytest.raises(InvalidSignature):
        storage.verify("get", key, query)
    with pytest.raises(InvalidSignature):
        storage.verify("put", input_key(TASK), query)
    other = LocalStorage(storage.root, storage.public_base_url, b"o" * 32)
    with pytest.raises(InvalidSignature):
        other.verify("put", key, query)


def test_expired_urls_are_refused() -> None:
    signer = UrlSigner(SECRET)
    query = signer.sign("get", "a/b", 1_000, {"name": "x.csv"})
    assert signer.verify("get", "a/b", query, now=999).download_name == "x.csv"
    with pytest.raises(UrlExpired) as info:
        signer.verify("get", "a/b", query, now=1_000)
    assert info.value.code == "URL_EXPIRED"
    # A URL signed as already expired is refused by the clock too.
    past = signer.sign("get", "a/b", int(time.time()) - 1, {})
    with pytest.raises(UrlExpired):
        signer.verify("get", "a/b", past)


def test_a_short_secret_is_refused() -> None:
    with pytest.raises(ValueError):
        UrlSigner(b"short")


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def test_store_stream_enforces_the_limit_while_streaming(storage: LocalStorage) -> None:
    key = input_key(TASK)
    assert await store_stream(storage, key, _chunks(b"abc", b"def"), max_size=6, content_type="x/y") == 6
    assert read(storage, key) == b"abcdef"

    consumed: list[bytes] = []

    async def endless() -> AsyncIterator[bytes]:
        while True:
            consumed.append(b"z" * 4)
            yield b"z" * 4

    big = input_key(TASK)
    with pytest.raises(PayloadTooLarge):
        await store_stream(storage, big, endless(), max_size=10, content_type="x/y")
    # It stopped at the first chunk past the limit, and stored nothing.
    assert len(consumed) == 3
    assert storage.stat(big) is None
    with pytest.raises(EmptyBody):
        await store_stream(storage, big, _chunks(), max_size=10, content_type="x/y", allow_empty=False)
    assert storage.stat(big) is None
    assert sorted(storage.iter_keys("")) == [key]


def test_check_uploaded_size(storage: LocalStorage) -> None:
    key = input_key(TASK)
    with pytest.raises(ObjectNotFound):
        check_uploaded_size(storage, key, 10)
    write(storage, key, b"0123456789")
    assert check_uploaded_size(storage, key, 10).size == 10
    with pytest.raises(PayloadTooLarge):
        check_uploaded_size(storage, key, 9)
    assert storage.stat(key) is None


def test_build_storage_defaults_and_a_persistent_secret(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, http={"port": 8123})
    first = build_storage(settings)
    assert isinstance(first, LocalStorage)
    assert first.root == (tmp_path / "storage").resolve()
    assert first.public_base_url == "http://127.0.0.1:8123"
    key_file = tmp_path / "storage.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert len(key_file.read_bytes()) == 32
    # The same key after a restart: URLs signed before it still verify.
    url = first.presign_download("a/b", expires=timedelta(minutes=1))
    second = build_storage(settings)
    assert isinstance(second, LocalStorage)
    assert second.verify("get", "a/b", query_of(url.url)).key == "a/b"
    assert signing_secret(tmp_path) == key_file.read_bytes()

    configured = Settings(
        data_dir=tmp_path,
        storage={
            "local_root": str(tmp_path / "elsewhere"),
            "signing_secret": "x" * 32,
            "public_base_url": "https://files.example",
        },
    )
    third = build_storage(configured)
    assert isinstance(third, LocalStorage)
    assert third.root == (tmp_path / "elsewhere").resolve()
    assert third.public_base_url == "https://files.example"
    with pytest.raises(InvalidSignature):
        third.verify("get", "a/b", query_of(url.url))
