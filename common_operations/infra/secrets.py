"""Secrets from files (``<NAME>_FILE``) and keeping secrets out of text the service shows.

Every secret the service takes from an environment variable can come from a file instead, named by
the same variable with ``_FILE`` appended: ``JWT_SECRET_FILE=/run/secrets/jwt_secret``. That is the
convention of Docker and Kubernetes secrets (and of the official Postgres image), so a deployment
mounts the secret and no value sits in the environment, the image or committed configuration.
Setting both ``NAME`` and ``NAME_FILE`` is refused: which one wins would be a guess.

:func:`scrub` removes what an error text must not show a client: URLs and DSNs (which can carry a
password), and host:port addresses of internal servers.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

# NAME (read as NAME_FILE) → where the value goes in the settings, as a key path. Top-level names are
# the settings' own aliases (they are folded into their sections after validation).
SECRET_FILE_VARIABLES: Final[Mapping[str, tuple[str, ...]]] = {
    "DATABASE_URL": ("DATABASE_URL",),
    "REDIS_URL": ("REDIS_URL",),
    "JWT_SECRET": ("JWT_SECRET",),
    "WEBHOOK_SECRET": ("WEBHOOK_SECRET",),
    "DAPR_API_TOKEN": ("DAPR_API_TOKEN",),
    "CO_STORAGE__SIGNING_SECRET": ("storage", "signing_secret"),
    "CO_STORAGE__S3__ACCESS_KEY": ("storage", "s3", "access_key"),
    "CO_STORAGE__S3__SECRET_KEY": ("storage", "s3", "secret_key"),
}

FILE_SUFFIX: Final = "_FILE"


class SecretFileError(ValueError):
    """A ``*_FILE`` variable that cannot be used (unreadable file, or set beside its variable)."""


def read_secret_file(path: str | Path) -> str:
    """The secret in ``path``, without the trailing newline editors and ``echo`` add.

    Raises:
        SecretFileError: the file cannot be read (the message names the path, never its content).
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise SecretFileError(f"cannot read the secret file {path}: {type(err).__name__}") from None
    return text.rstrip("\r\n")


def secrets_from_files(environ: Mapping[str, str]) -> dict[str, Any]:
    """The settings given by ``<NAME>_FILE`` variables of ``environ``, as a nested mapping.

    Raises:
        SecretFileError: a file cannot be read, or both ``NAME`` and ``NAME_FILE`` are set.
    """
    found: dict[str, Any] = {}
    for name, key_path in SECRET_FILE_VARIABLES.items():
        path = environ.get(name + FILE_SUFFIX)
        if not path:
            continue
        if environ.get(name):
            raise SecretFileError(f"both {name} and {name}{FILE_SUFFIX} are set; set one of them")
        node = found
        for key in key_path[:-1]:
            node = node.setdefault(key, {})
        node[key_path[-1]] = read_secret_file(path)
    return found


class SecretFilesSource(PydanticBaseSettingsSource):
    """A pydantic-settings source of the ``<NAME>_FILE`` variables of the process environment."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str] | None = None) -> None:
        """Read ``environ`` (default: ``os.environ`` when called)."""
        super().__init__(settings_cls)
        self._environ = environ

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        """Unused: :meth:`__call__` returns every value at once."""
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        """The settings read from secret files."""
        return secrets_from_files(os.environ if self._environ is None else self._environ)


# scheme://anything up to whitespace or a quote: URLs and DSNs, whose user info may be a password.
_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>]+")
# host:port and ('host', port) as socket errors print them; IPv4, bracketed IPv6 and DNS names.
_ADDRESS = re.compile(
    r"\(\s*'[^']+'\s*(?:,\s*\d+\s*)+\)"
    r"|\[[0-9a-fA-F:.]+\]:\d+"
    r"|\b(?:\d{1,3}\.){3}\d{1,3}(?::\d+)?\b"
    r"|\b[a-zA-Z][a-zA-Z0-9-]*(?:\.[a-zA-Z0-9-]+)*:\d{2,5}\b"
)


def scrub(text: str) -> str:
    """``text`` without URLs, DSNs and network addresses (for messages clients or probes show)."""
    return _ADDRESS.sub("<address>", _URL.sub("<url>", text))
