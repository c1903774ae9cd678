"""gRPC over TLS and mTLS (certificates from a throwaway CA, trustme), and the reflection toggle.

With mTLS the verified client certificate's common name is the caller: a task it creates is
requested by that name. A client without a certificate, or with one another CA signed, does not get
past the handshake.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from common_operations.bootstrap import Runtime
from common_operations.config import GrpcSettings, Settings
from common_operations.grpc.server import build_server
from common_operations.grpc.v1 import operations_pb2 as pb
from common_operations.grpc.v1 import operations_pb2_grpc
from common_operations.infra.tls import TlsConfigError, grpc_server_credentials
from tests.auth_support import auth_settings

SERVICE_CN = "catalog-service"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    """The CA of the server's and the clients' certificates."""
    return trustme.CA()


@pytest.fixture(scope="module")
def pki(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The server certificate and key, and the CA certificate, as files (what the settings name)."""
    directory = tmp_path_factory.mktemp("grpc-pki")
    server = ca.issue_cert("127.0.0.1", "localhost")
    files = {"cert": directory / "server.pem", "key": directory / "server.key", "ca": directory / "ca.pem"}
    server.cert_chain_pems[0].write_to_path(str(files["cert"]))
    server.private_key_pem.write_to_path(str(files["key"]))
    ca.cert_pem.write_to_path(str(files["ca"]))
    return files


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Required auth mode: only a certificate (or a token) makes a caller."""
    settings.auth = settings.auth.model_validate(
        {**auth_settings("required"), "mtls_roles": {SERVICE_CN: ["service"]}}
    )
    return settings


Serve = Callable[..., Any]


@pytest.fixture
def serve(runtime: Runtime) -> Serve:
    """Start the server with these ``grpc`` settings; yields its ``127.0.0.1:port``."""

    @asynccontextmanager
    async def start(**grpc_settings: Any) -> AsyncIterator[str]:
        runtime.settings.grpc = GrpcSettings(**grpc_settings)
        server, port = await build_server(runtime, "127.0.0.1", 0)
        await server.start()
        try:
            yield f"127.0.0.1:{port}"
        finally:
            await server.stop(grace=None)

    return start


def _client_credentials(ca: trustme.CA, client: trustme.LeafCert | None = None) -> grpc.ChannelCredentials:
    if client is None:
        return grpc.ssl_channel_credentials(root_certificates=ca.cert_pem.bytes())
    return grpc.ssl_channel_credentials(
        root_certificates=ca.cert_pem.bytes(),
        private_key=client.private_key_pem.bytes(),
        certificate_chain=client.cert_chain_pems[0].bytes(),
    )


async def _health(
    address: str, credentials: grpc.ChannelCredentials | None
) -> health_pb2.HealthCheckResponse:
    channel = (
        grpc.aio.secure_channel(address, credentials) if credentials else grpc.aio.insecure_channel(address)
    )
    async with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)


async def test_tls_listener(serve: Serve, pki: dict[str, Path], ca: trustme.CA) -> None:
    async with serve(tls_cert_file=pki["cert"], tls_key_file=pki["key"]) as address:
        answer = await _health(address, _client_credentials(ca))
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        # Plaintext to a TLS port does not get an answer.
        with pytest.raises(grpc.aio.AioRpcError) as plain:
            await _health(address, None)
        assert plain.value.code() is grpc.StatusCode.UNAVAILABLE
        # Nor does a client that does not trust the server's CA.
        with pytest.raises(grpc.aio.AioRpcError) as untrusted:
            await _health(address, _client_credentials(trustme.CA()))
        assert untrusted.value.code() is grpc.StatusCode.UNAVAILABLE
        # Without a client CA the token is the credential, as on a plaintext listener.
        async with grpc.aio.secure_channel(address, _client_credentials(ca)) as channel:
            stub = operations_pb2_grpc.OperationsServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as anonymous:
                await stub.ListTasks(pb.ListTasksRequest(), timeout=5)
            assert anonymous.value.code() is grpc.StatusCode.UNAUTHENTICATED


async def test_mtls_certificate_subject_is_the_caller(
    serve: Serve, pki: dict[str, Path], ca: trustme.CA
) -> None:
    mtls = {
        "tls_cert_file": pki["cert"],
        "tls_key_file": pki["key"],
        "tls_client_ca_file": pki["ca"],
        "require_client_cert": True,
    }
    async with serve(**mtls) as address:
        client = ca.issue_cert(SERVICE_CN, common_name=SERVICE_CN)
        async with grpc.aio.secure_channel(address, _client_credentials(ca, client)) as channel:
            stub = operations_pb2_grpc.OperationsServiceStub(channel)
            created = await stub.CreateTask(pb.CreateTaskRequest(task_type="process", entity_type="product"))
            assert created.task.requested_by == SERVICE_CN
            got = await stub.GetTask(pb.GetTaskRequest(id=created.task.id))
            assert got.task.requested_by == SERVICE_CN

        # No client certificate: the handshake fails before any RPC.
        with pytest.raises(grpc.aio.AioRpcError) as without:
            await _health(address, _client_credentials(ca))
        assert without.value.code() is grpc.StatusCode.UNAVAILABLE

        # A certificate of another CA, even with the same name: refused too.
        stranger = trustme.CA().issue_cert(SERVICE_CN, common_name=SERVICE_CN)
        with pytest.raises(grpc.aio.AioRpcError) as foreign:
            await _health(address, _client_credentials(ca, stranger))
        assert foreign.value.code() is grpc.StatusCode.UNAVAILABLE


async def _reflection_services(address: str) -> list[str]:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        names: list[str] = []
        async for answer in stub.ServerReflectionInfo(iter([request]), timeout=5):
            names += [service.name for service in answer.list_services_response.service]
        return names


async def test_reflection_can_be_turned_off(serve: Serve) -> None:
    async with serve() as address:
        assert "api.operations.v1.OperationsService" in await _reflection_services(address)
    async with serve(reflection=False) as address:
        with pytest.raises(grpc.aio.AioRpcError) as off:
            await _reflection_services(address)
        assert off.value.code() is grpc.StatusCode.UNIMPLEMENTED
        # The service itself is still there (answers, if only to say who is missing).
        assert (await _health(address, None)).status == health_pb2.HealthCheckResponse.SERVING


def test_tls_settings_are_checked_when_loaded(pki: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="both tls_cert_file and tls_key_file"):
        GrpcSettings(tls_cert_file=pki["cert"])
    with pytest.raises(ValueError, match="go together"):
        GrpcSettings(tls_cert_file=pki["cert"], tls_key_file=pki["key"], tls_client_ca_file=pki["ca"])
    with pytest.raises(TlsConfigError, match="cannot read the gRPC TLS key"):
        grpc_server_credentials(
            GrpcSettings(tls_cert_file=pki["cert"], tls_key_file=pki["cert"].parent / "no.key")
        )
