"""JSON documents carried as text on the wire (the seed contract's ``params``, ``eventData``)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any


def json_text(value: Mapping[str, Any]) -> str:
    """``value`` as compact JSON text, identical through REST and gRPC.

    Non-ASCII characters stay as they are (the text is UTF-8 on both wires); key order is kept.
    """
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
