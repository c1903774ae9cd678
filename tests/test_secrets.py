"""Secrets come from the environment or from files, and never show up in reprs, logs or answers.

Also checks what is committed for docker-compose: the container config requires credentials and
holds no secret, and compose publishes only the API ports and the Temporal Web UI, on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
import yaml
from temporalio.testing import WorkflowEnvironment

from common_operations.config import Settings
from common_operations.infra.secrets import SecretFileError, scrub, secrets_from_files
from tests.auth_support import TEST_AUDIENCE, TEST_ISSUER
from tests.stack import free_port

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DOCKER_CONFIG = PROJECT_ROOT / "configs" / "config-docker.yaml"
COMPOSE_FILE = PROJECT_ROOT / "docker-compose.yml"

DB_PASSWORD = "Pw-db-s3cr3t-4f1e"
JWT_SECRET = "jwt-s3cr3t-from-a-file-0123456789abcdef"
S3_SECRET = "s3-s3cr3t-key-9a8b"
WEBHOOK_SECRET = "webhook-s3cr3t-77"
SECRETS = (DB_PASSWORD, JWT_SECRET, S3_SECRET, WEBHOOK_SECRET)


def _write(directory: Path, name: str, value: str) -> str:
    path = directory / name
    path.write_text(value + "\n", encoding="utf-8")  # as `echo` writes it: the newline is dropped
    return str(path)


def _with_password(url: str, password: str) -> str:
    parts = urlsplit(url)
    user = parts.username or "postgres"
    # Whatever follows the credentials stays: host:port, or nothing when the host is a unix socket
    # in the query (embedded Postgres: postgresql://postgres@/db?host=/tmp/...).
    location = parts.netloc.rpartition("@")[2]
    netloc = f"{user}:{password}@{location}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def test_settings_read_secrets_from_files_and_never_print_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"postgresql://operations:{DB_PASSWORD}@db.internal:5432/operations"
    for name in ("DATABASE_URL", "JWT_SECRET", "WEBHOOK_SECRET", "CO_STORAGE__S3__SECRET_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATABASE_URL_FILE", _write(tmp_path, "db", url))
    monkeypatch.setenv("JWT_SECRET_FILE", _write(tmp_path, "jwt", JWT_SECRET))
    monkeypatch.setenv("WEBHOOK_SECRET_FILE", _write(tmp_path, "hook", WEBHOOK_SECRET))
    monkeypatch.setenv("CO_STORAGE__S3__SECRET_KEY_FILE", _write(tmp_path, "s3", S3_SECRET))

    settings = Settings()

    assert settings.database.url == url
    assert settings.auth.jwt.secret is not None and settings.auth.jwt.secret.get_secret_value() == JWT_SECRET
    assert settings.webhooks.secret == WEBHOOK_SECRET
    assert settings.storage.s3.secret_key == S3_SECRET
    for text in (repr(settings), str(settings), repr(settings.database), repr(settings.storage)):
        for secret in SECRETS:
            assert secret not in text


def test_a_secret_and_its_file_together_are_refused(tmp_path: Path) -> None:
    environ = {"JWT_SECRET": "a", "JWT_SECRET_FILE": _write(tmp_path, "jwt", "b")}
    with pytest.raises(SecretFileError, match="both JWT_SECRET and JWT_SECRET_FILE"):
        secrets_from_files(environ)


def test_an_unreadable_secret_file_is_named_not_shown(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(SecretFileError, match="cannot read the secret file") as caught:
        secrets_from_files({"CO_STORAGE__SIGNING_SECRET_FILE": str(missing)})
    assert str(missing) in str(caught.value)


def test_secret_files_land_in_their_sections(tmp_path: Path) -> None:
    environ = {
        "CO_STORAGE__S3__ACCESS_KEY_FILE": _write(tmp_path, "ak", "AK"),
        "CO_STORAGE__SIGNING_SECRET_FILE": _write(tmp_path, "sig", "SIG"),
        "REDIS_URL_FILE": _write(tmp_path, "redis", "redis://:pw@cache:6379/0"),
    }
    assert secrets_from_files(environ) == {
        "storage": {"s3": {"access_key": "AK"}, "signing_secret": "SIG"},
        "REDIS_URL": "redis://:pw@cache:6379/0",
    }


@pytest.mark.parametrize(
    "text",
    [
        "Connect call failed ('127.0.0.1', 5432)",
        "Cannot assign requested address ('::1', 5432, 0, 0)",
        "cannot reach Temporal at temporal:7233: refused",
        "bad dsn postgresql://svc:pw@db.internal:5432/ops",
        "listening on [::1]:9000",
    ],
)
def test_scrub_removes_addresses_and_urls(text: str) -> None:
    cleaned = scrub(text)
    for leak in ("127.0.0.1", "::1", "7233", "5432", "postgresql://", "pw@", "9000"):
        assert leak not in cleaned


def test_scrub_keeps_plain_text_and_instants() -> None:
    text = "no pass since 2026-11-30T12:30:45+00:00; 3 tasks stuck"
    assert scrub(text) == text


# ---- committed deployment files ------------------------------------------------------------------


def test_docker_config_requires_credentials_and_holds_no_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = yaml.safe_load(DOCKER_CONFIG.read_text(encoding="utf-8"))
    for name in list(os.environ):
        if name.startswith("CO_") or name in ("DATABASE_URL", "JWT_SECRET", "REDIS_URL"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("CONFIG_FILE", str(DOCKER_CONFIG))
    settings = Settings()

    assert settings.auth.mode == "required"
    assert settings.auth.jwt.secret is None  # from JWT_SECRET / JWT_SECRET_FILE at run time only
    # Secrets come from the environment (docker-compose) or files, never from this file.
    assert raw.get("database", {}).get("url") is None
    assert "jwt_secret" not in raw and "secret" not in raw.get("auth", {}).get("jwt", {})
    s3 = raw.get("storage", {}).get("s3", {})
    assert "access_key" not in s3 and "secret_key" not in s3
    assert "signing_secret" not in raw.get("storage", {})
    assert not raw.get("webhooks", {}).get("secret")
    # Inside its container the API listens on every interface: fine, since credentials are required.
    assert settings.http.host == "0.0.0.0" and settings.grpc.host == "0.0.0.0"


def test_compose_publishes_only_the_apis_and_temporal_ui_on_loopback() -> None:
    compose = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    published = {name: service.get("ports", []) for name, service in compose["services"].items()}
    for name, ports in published.items():
        for port in ports:
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond this machine"
    # The observability profile (Prometheus, Grafana) is not started by default.
    optional = {
        name
        for name, service in compose["services"].items()
        if "observability" in service.get("profiles", [])
    }
    assert {"prometheus", "grafana"} <= optional, optional
    exposed = {name for name, ports in published.items() if ports} - optional
    # MinIO's S3 API: clients PUT and GET the presigned URLs there.
    assert exposed == {"api", "temporal-ui", "minio"}, exposed
    assert {str(p) for p in published["api"]} == {"127.0.0.1:8000:8000", "127.0.0.1:9000:9000"}
    assert all(str(p).endswith(":9000") for p in published["minio"])  # its S3 API, not its console
    env = compose["x-app"]["environment"]
    assert env["JWT_SECRET"].startswith("${JWT_SECRET:?"), "compose requires a JWT secret from the host"
    for value in env.values():
        assert "minioadmin" not in str(value) and "operations:operations@" not in str(value)


# ---- a real start: nothing secret in the log or in the answers -----------------------------------


@pytest.fixture
def api_process_env(tmp_path: Path, database_url: str, temporal_env: WorkflowEnvironment) -> dict[str, str]:
    """Environment of a `common-operations api` whose secrets all come from files."""
    address = temporal_env.client.service_client.config.target_host
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CO_")}
    for name in ("DATABASE_URL", "JWT_SECRET", "REDIS_URL", "WEBHOOK_SECRET"):
        environ.pop(name, None)
    environ.update(
        CONFIG_FILE=str(PROJECT_ROOT / "configs" / "config.yaml"),
        # The test Postgres trusts local connections: the password is carried, not checked.
        DATABASE_URL_FILE=_write(tmp_path, "db", _with_password(database_url, DB_PASSWORD)),
        JWT_SECRET_FILE=_write(tmp_path, "jwt", JWT_SECRET),
        WEBHOOK_SECRET_FILE=_write(tmp_path, "hook", WEBHOOK_SECRET),
        TEMPORAL_ADDRESS=address,
        CO_DATA_DIR=str(tmp_path / "data"),
        CO_LOG_LEVEL="DEBUG",
        CO_AUTH__MODE="required",
        CO_AUTH__JWT__ALGORITHMS='["HS256"]',
        CO_AUTH__JWT__ISSUER=TEST_ISSUER,
        CO_AUTH__JWT__AUDIENCE=TEST_AUDIENCE,
        CO_HTTP__PORT=str(free_port()),
        CO_GRPC__PORT=str(free_port()),
        CO_TEMPORAL__TASK_QUEUE=f"co-secrets-{os.getpid()}",
    )
    return environ


@pytest.mark.timeout(120)
async def test_a_started_api_logs_and_shows_no_secret(api_process_env: dict[str, str]) -> None:
    import jwt

    port = api_process_env["CO_HTTP__PORT"]
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "common_operations.cli",
        "api",
        env=api_process_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    bodies: list[str] = []
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as api:
            for _ in range(300):
                try:
                    if (await api.get("/health/live")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert process.returncode is None, "the API exited while starting"
                await asyncio.sleep(0.1)
            now = int(time.time())
            claims = {"sub": "ops", "roles": ["admin"], "iss": TEST_ISSUER, "aud": TEST_AUDIENCE}
            admin = jwt.encode(
                {**claims, "iat": now, "nbf": now, "exp": now + 300},
                JWT_SECRET,
                algorithm="HS256",
            )
            detailed = await api.get("/health/detailed", headers={"authorization": f"Bearer {admin}"})
            # Verified with the secret read from JWT_SECRET_FILE.
            assert detailed.status_code in (200, 503), detailed.text
            assert detailed.json()["components"]["database"] == "up"
            bodies.append(detailed.text)
            refused = await api.get("/api/v1/operations/tasks")
            assert refused.status_code == 401
            bodies.append(refused.text)
            bodies.append((await api.get("/metrics", headers={"authorization": f"Bearer {admin}"})).text)
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        assert process.stdout is not None
        output = (await asyncio.wait_for(process.stdout.read(), timeout=60)).decode("utf-8", "replace")
        await process.wait()
    assert "debug" in output.lower() or "info" in output.lower(), output  # the log was captured
    for text in (output, *bodies):
        for secret in SECRETS:
            assert secret not in text, f"{secret!r} leaked:\n{text[:3000]}"
