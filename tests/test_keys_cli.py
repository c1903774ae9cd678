"""``common-operations keys create|list|revoke`` against the test database."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from typer.testing import CliRunner, Result

from common_operations import cli
from common_operations.config import AuthSettings, Settings, get_settings
from common_operations.db.api_keys_repository import ApiKeysRepository
from common_operations.domain.errors import Unauthenticated
from common_operations.services.identity import Authenticator
from tests.auth_support import auth_settings


@pytest.fixture
def cli_env(database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The CLI configured for the test database (settings are read afresh)."""
    monkeypatch.setenv("DATABASE_URL", database_url)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


async def invoke(*args: str) -> Result:
    # The commands run their own event loop (asyncio.run), so they run off the test's loop.
    return await asyncio.to_thread(CliRunner().invoke, cli.app, list(args))


def authenticator(pool: asyncpg.Pool) -> Authenticator:
    return Authenticator(AuthSettings(**auth_settings("required")), ApiKeysRepository(pool))


async def test_create_list_revoke(cli_env: None, pool: asyncpg.Pool) -> None:
    result = await invoke(
        "keys", "create", "--principal", "catalog-cli", "--role", "service", "--role", "viewer",
        "--expires-in", "90d", "--description", "made by the CLI test",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    key = next(line.strip() for line in result.output.splitlines() if line.strip().startswith("co_"))
    assert "not shown again" in result.output
    principal = await authenticator(pool).authenticate({"x-api-key": key})
    assert principal.subject == "catalog-cli" and principal.roles == {"service", "viewer"}

    listing = await invoke("keys", "list", "--json")
    assert listing.exit_code == 0, listing.output
    assert key not in listing.output
    entries = [k for k in json.loads(listing.output) if k["principal"] == "catalog-cli"]
    assert entries and entries[0]["roles"] == ["service", "viewer"]
    expires = datetime.fromisoformat(entries[0]["expiresAt"])
    assert timedelta(days=89) < expires - datetime.now(UTC) <= timedelta(days=90)
    assert entries[0]["createdBy"].startswith("cli:")
    table = await invoke("keys", "list")
    assert table.exit_code == 0 and entries[0]["prefix"] in table.output and key not in table.output

    revoked = await invoke("keys", "revoke", entries[0]["prefix"])
    assert revoked.exit_code == 0, revoked.output
    assert "revoked" in revoked.output
    with pytest.raises(Unauthenticated, match="revoked"):
        await authenticator(pool).authenticate({"x-api-key": key})
    # Revoked keys are listed with --all only.
    ids = {k["id"] for k in json.loads((await invoke("keys", "list", "--json")).output)}
    assert entries[0]["id"] not in ids
    ids_all = {k["id"] for k in json.loads((await invoke("keys", "list", "--all", "--json")).output)}
    assert entries[0]["id"] in ids_all
    audit = await pool.fetch(
        "SELECT action, actor FROM admin_audit_log WHERE entity_id = $1 ORDER BY id", entries[0]["id"]
    )
    assert [a["action"] for a in audit] == ["api_key.create", "api_key.revoke"]
    assert all(a["actor"].startswith("cli:") for a in audit)


async def test_json_create_and_expires_at(cli_env: None) -> None:
    when = (datetime.now(UTC) + timedelta(days=7)).replace(microsecond=0)
    result = await invoke(
        "keys", "create", "--principal", "json-cli", "--role", "service", "--json",
        "--expires-at", when.isoformat().replace("+00:00", "Z"),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    created: dict[str, Any] = json.loads(result.output)
    assert created["key"].startswith(f"co_{created['prefix']}_")
    assert datetime.fromisoformat(created["expiresAt"]) == when


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--principal", "svc", "--role", "Bad Role"], "role"),
        (["--principal", "", "--role", "service"], "principal"),
        (["--principal", "svc", "--expires-in", "soon"], "--expires-in"),
        (["--principal", "svc", "--expires-in", "-5d"], "--expires-in"),
        (["--principal", "svc", "--expires-at", "2020-01-01T00:00:00Z"], "future"),
        (["--principal", "svc", "--expires-at", "2030-01-01T00:00:00"], "time zone"),
        (["--principal", "svc", "--expires-in", "1d", "--expires-at", "2030-01-01T00:00:00Z"], "not both"),
    ],
)
async def test_bad_input_is_refused_with_a_message(cli_env: None, args: list[str], message: str) -> None:
    result = await invoke("keys", "create", *args)
    assert result.exit_code != 0
    assert message in result.output, result.output


async def test_revoking_an_unknown_key_fails(cli_env: None) -> None:
    result = await invoke("keys", "revoke", "0123456789ab")
    assert result.exit_code == 1
    assert "no API key" in result.output


def test_without_a_database_it_says_how_to_get_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("CO_DATA_DIR", str(tmp_path))
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(cli.app, ["keys", "list"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 2
    assert "DATABASE_URL" in result.output and "make run" in result.output


def test_the_embedded_postgres_of_a_running_service_is_found(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    assert cli._embedded_database_url(settings) is None
    pg = tmp_path / "pg"
    pg.mkdir()
    lines = ["4242", str(pg), "1767225600", "5432", "/tmp/sockets", "", "0 0", "ready"]
    (pg / "postmaster.pid").write_text("\n".join(lines) + "\n")
    assert (
        cli._embedded_database_url(settings)
        == "postgresql://postgres:@/operations?host=/tmp/sockets&port=5432"
    )
    lines[7] = "starting"
    (pg / "postmaster.pid").write_text("\n".join(lines) + "\n")
    assert cli._embedded_database_url(settings) is None
