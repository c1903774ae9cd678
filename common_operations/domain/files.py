"""Storage keys of task files and the safe names they are downloaded under (pure, no I/O).

Keys are built here from a task id and a random part, never from a client's file name: the name a
client gave is kept only as a display name, sanitized by :func:`sanitize_file_name`, and sent back in
a ``Content-Disposition`` header built by :func:`content_disposition`.
"""

from __future__ import annotations

import re
import unicodedata
import uuid
from urllib.parse import quote

from common_operations.domain.errors import ValidationFailed

MAX_KEY_LENGTH = 1024  # S3's limit, in UTF-8 bytes (keys are ASCII here)
MAX_FILE_NAME_LENGTH = 200
DEFAULT_FILE_NAME = "file"

_KEY_CHARS = re.compile(r"[A-Za-z0-9._/-]+")
_EXTENSION = re.compile(r"[A-Za-z0-9]{1,16}")
_WINDOWS_RESERVED = frozenset(
    {"CON", "PRN", "AUX", "NUL"} | {f"COM{i}" for i in range(1, 10)} | {f"LPT{i}" for i in range(1, 10)}
)
# RFC 5987 attr-char minus the alphanumerics and "-._~" that quote() always keeps.
_ATTR_SAFE = "!#$&+^`|"
# What the ASCII fallback name keeps; everything else becomes "_" (old clients read it verbatim).
_ASCII_UNSAFE = re.compile(r"[^A-Za-z0-9 !#$&'()+,\-.;=@\[\]^_`{}~]")


class InvalidKey(ValidationFailed):
    """A storage key is not one this service builds (wrong characters, traversal, empty segment)."""

    code = "INVALID_KEY"


def _task_part(task_id: str) -> str:
    validate_key(task_id)
    if "/" in task_id:
        raise InvalidKey(f"task id {task_id!r} is not a single key segment", field="taskId")
    return task_id


def _extension(ext: str) -> str:
    ext = ext.removeprefix(".")
    if not _EXTENSION.fullmatch(ext):
        raise InvalidKey(f"file extension {ext[:20]!r} must be 1 to 16 letters or digits", field="ext")
    return ext.lower()


def task_prefix(task_id: str) -> str:
    """The prefix of every file of a task: ``{taskId}/``."""
    return f"{_task_part(task_id)}/"


def input_key(task_id: str) -> str:
    """A new key for a task's input file: ``{taskId}/input/{uuid4hex}``."""
    return f"{_task_part(task_id)}/input/{uuid.uuid4().hex}"


def output_key(task_id: str, ext: str) -> str:
    """A new key for a task's output file: ``{taskId}/output/{uuid4hex}.{ext}``."""
    return f"{_task_part(task_id)}/output/{uuid.uuid4().hex}.{_extension(ext)}"


def result_key(task_id: str, ext: str) -> str:
    """A new key for a task's result file (a report of rejected rows, …): ``{taskId}/results/…``."""
    return f"{_task_part(task_id)}/results/{uuid.uuid4().hex}.{_extension(ext)}"


def validate_key(key: str) -> str:
    """Check that ``key`` is a safe relative object key and return it.

    Only ``[A-Za-z0-9._/-]``; no leading ``/``, no empty, ``.`` or ``..`` segment. A key that passes
    maps to a path under the local storage root on every platform.

    Raises:
        InvalidKey: the key breaks one of the rules.
    """
    if not key or len(key) > MAX_KEY_LENGTH:
        raise InvalidKey(f"a key has 1 to {MAX_KEY_LENGTH} characters", field="key")
    if not _KEY_CHARS.fullmatch(key):
        raise InvalidKey("a key may contain only letters, digits and . _ / -", field="key")
    if any(segment in ("", ".", "..") for segment in key.split("/")):
        raise InvalidKey(
            "a key may not start or end with /, nor have an empty, '.' or '..' segment", field="key"
        )
    return key


def sanitize_file_name(name: str) -> str:
    """A safe display name for a client's file name.

    Keeps only the last path component (of ``/`` and backslash paths), drops control, format (bidi
    overrides) and quote characters, trims spaces and dots at the ends (Windows drops them), prefixes
    reserved Windows device names with ``_`` and cuts to 200 characters, keeping a short extension.

    Returns:
        The name; ``"file"`` when nothing usable is left.
    """
    name = unicodedata.normalize("NFC", name)
    name = re.split(r"[/\\]", name)[-1]
    name = "".join(
        ch for ch in name if unicodedata.category(ch) not in ("Cc", "Cf", "Zl", "Zp") and ch not in "\"'`"
    )
    name = name.strip(" .")
    if not name:
        return DEFAULT_FILE_NAME
    if name.split(".", 1)[0].rstrip(" ").upper() in _WINDOWS_RESERVED:
        name = "_" + name
    if len(name) > MAX_FILE_NAME_LENGTH:
        stem, dot, ext = name.rpartition(".")
        if dot and stem and 0 < len(ext) <= 16:
            name = stem[: MAX_FILE_NAME_LENGTH - len(ext) - 1].rstrip(" .") + "." + ext
        else:
            name = name[:MAX_FILE_NAME_LENGTH].rstrip(" .")
    return name or DEFAULT_FILE_NAME


def content_disposition(name: str, *, disposition: str = "attachment") -> str:
    """A ``Content-Disposition`` header value (RFC 6266) that downloads under ``name``.

    ``filename`` is an ASCII fallback (for clients that do not read RFC 5987), ``filename*`` the
    exact name, UTF-8 percent-encoded. The name is sanitized first, so neither CR, LF nor a quote can
    reach the header.

    Args:
        name: the display name (sanitized again here).
        disposition: ``attachment`` (download) or ``inline``.
    """
    if disposition not in ("attachment", "inline"):
        raise ValueError(f"unknown disposition {disposition!r}")
    safe = sanitize_file_name(name)
    # Accents fall away ("é" -> "e"); other non-ASCII letters become "_", keeping the name's shape.
    decomposed = unicodedata.normalize("NFKD", safe)
    ascii_name = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    ascii_name = _ASCII_UNSAFE.sub("_", ascii_name).strip(" .") or DEFAULT_FILE_NAME
    encoded = quote(safe, safe=_ATTR_SAFE, encoding="utf-8")
    return f"{disposition}; filename=\"{ascii_name}\"; filename*=UTF-8''{encoded}"
