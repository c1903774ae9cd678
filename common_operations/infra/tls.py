"""TLS of the gRPC listener: server credentials, and client certificates for mTLS.

With a client CA configured (``grpc.tls_client_ca_file`` with ``grpc.require_client_cert``), every
client must present a certificate that CA signed, or the handshake fails; the verified certificate's
common name is then the caller (``grpc.servicer.peer_subject``), its roles those of
``auth.mtls_roles``. Optional client certificates are not offered: gRPC Python either requires and
verifies one or does not ask for one at all (its ``require_client_auth=False`` does not request a
certificate), so the configuration pairs the two settings (``config.GrpcSettings``).
"""

from __future__ import annotations

from pathlib import Path

import grpc

from common_operations.config import GrpcSettings


class TlsConfigError(ValueError):
    """A TLS file that cannot be read (the message names the file, never its content)."""


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise TlsConfigError(f"cannot read the {what} {path}: {err.strerror or type(err).__name__}") from None


def grpc_server_credentials(settings: GrpcSettings) -> grpc.ServerCredentials | None:
    """The listener's TLS credentials, or None for a plaintext listener (no certificate configured).

    Raises:
        TlsConfigError: a configured certificate, key or CA file cannot be read.
    """
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    key = _read(settings.tls_key_file, "gRPC TLS key")
    chain = _read(settings.tls_cert_file, "gRPC TLS certificate")
    client_ca = (
        _read(settings.tls_client_ca_file, "gRPC client CA")
        if settings.tls_client_ca_file is not None
        else None
    )
    return grpc.ssl_server_credentials(
        [(key, chain)],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )
