"""REST over HTTPS (``http.tls_cert_file`` / ``tls_key_file``), served by the service's own uvicorn setup."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trustme

from common_operations.bootstrap import Runtime
from common_operations.web.security import HSTS
from common_operations.web.server import serve_http
from tests.auth_support import bearer
from tests.stack import free_port
from tests.web.support import TASKS


@pytest.fixture
async def https(runtime: Runtime, tmp_path: Path) -> AsyncIterator[tuple[str, trustme.CA]]:
    """``serve_http`` with a certificate for 127.0.0.1 from a throwaway CA: its base URL and the CA."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_file, key_file = tmp_path / "server.pem", tmp_path / "server.key"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    runtime.settings.http = runtime.settings.http.model_copy(
        update={"tls_cert_file": cert_file, "tls_key_file": key_file}
    )
    port = free_port()
    serving = asyncio.create_task(serve_http(runtime, "127.0.0.1", port))
    try:
        for _ in range(200):
            if serving.done():
                serving.result()
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            break
        yield f"127.0.0.1:{port}", ca
    finally:
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await serving


async def test_https_with_the_ca_and_nothing_else(https: tuple[str, trustme.CA]) -> None:
    address, ca = https
    trusted = ssl.create_default_context(cadata=ca.cert_pem.bytes().decode())
    async with httpx.AsyncClient(base_url=f"https://{address}", verify=trusted, timeout=10) as api:
        live = await api.get("/health/live")
        assert live.status_code == 200
        # Over TLS, browsers are told to stay on TLS.
        assert live.headers["strict-transport-security"] == HSTS
        listed = await api.get(TASKS, headers=bearer("tls-admin", ["admin"]))
        assert listed.status_code == 200, listed.text

    # Plain HTTP to the TLS port gets no HTTP answer.
    async with httpx.AsyncClient(base_url=f"http://{address}", timeout=10) as plain:
        with pytest.raises(httpx.TransportError):
            await plain.get("/health/live")

    # A client that does not trust the CA refuses the server.
    async with httpx.AsyncClient(base_url=f"https://{address}", timeout=10) as untrusting:
        with pytest.raises(httpx.ConnectError):
            await untrusting.get("/health/live")
