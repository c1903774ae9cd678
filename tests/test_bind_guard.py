"""Dev auth mode stays on loopback: refused (before anything starts) on any other address, loud otherwise."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from common_operations.config import Settings
from common_operations.infra.exposure import dev_mode_exposure, dev_mode_warning, is_loopback

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.10.0.3", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("0.0.0.0", False),
        ("", False),
        ("::", False),
        ("10.0.0.5", False),
        ("192.168.1.1", False),
        ("api.example.com", False),
        ("128.0.0.1", False),
    ],
)
def test_loopback_addresses(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def _settings(mode: str, http_host: str = "127.0.0.1", grpc_host: str = "127.0.0.1") -> Settings:
    return Settings(auth={"mode": mode}, http={"host": http_host}, grpc={"host": grpc_host})


def test_dev_mode_on_loopback_starts_with_a_warning() -> None:
    settings = _settings("dev")
    assert dev_mode_exposure(settings) is None
    warning = dev_mode_warning(settings)
    assert warning is not None
    assert "AUTH MODE dev" in warning and "'local-admin'" in warning and "Never expose" in warning


@pytest.mark.parametrize(
    ("http_host", "grpc_host"), [("0.0.0.0", "127.0.0.1"), ("127.0.0.1", "::"), ("", "")]
)
def test_dev_mode_on_another_address_is_refused(http_host: str, grpc_host: str) -> None:
    problem = dev_mode_exposure(_settings("dev", http_host, grpc_host))
    assert problem is not None
    assert "loopback only" in problem and "CO_AUTH__MODE=required" in problem


def test_required_mode_may_bind_anywhere_and_says_nothing() -> None:
    settings = _settings("required", "0.0.0.0", "0.0.0.0")
    assert dev_mode_exposure(settings) is None
    assert dev_mode_warning(settings) is None


def _cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    # Nothing to connect to: a refused configuration must stop before touching any server, and a
    # DATABASE_URL / TEMPORAL_ADDRESS at closed ports would only fail (slowly) if it did not.
    environ = {
        **os.environ,
        "CONFIG_FILE": str(PROJECT_ROOT / "configs" / "config.yaml"),
        "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none",
        "TEMPORAL_ADDRESS": "127.0.0.1:1",
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "common_operations.cli", *args],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("command", ["api", "run"])
def test_cli_refuses_dev_mode_on_all_interfaces(command: str, tmp_path: Path) -> None:
    done = _cli(command, CO_AUTH__MODE="dev", CO_HTTP__HOST="0.0.0.0", CO_DATA_DIR=str(tmp_path))
    assert done.returncode == 2, done.stderr
    assert "auth mode dev" in done.stderr and "REST on 0.0.0.0" in done.stderr
    # Refused before anything started: no embedded server, no data directory content, no banner.
    assert "starting" not in done.stdout and list(tmp_path.iterdir()) == []


def test_cli_refuses_dev_mode_on_a_grpc_wildcard() -> None:
    done = _cli("api", CO_AUTH__MODE="dev", CO_GRPC__HOST="::")
    assert done.returncode == 2, done.stderr
    assert "gRPC on ::" in done.stderr
