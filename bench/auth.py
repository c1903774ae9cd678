"""Credentials of the benchmarks: the services run in ``required`` auth mode, as deployed.

Every measured request carries a bearer token that the service verifies (HS256 with a bench-only
secret), so figures include authentication; rate limits are off (a benchmark is a deliberate flood).
"""

from __future__ import annotations

import time
from typing import Any

import jwt

BENCH_JWT_SECRET = "bench-only-hs256-secret-not-for-production-0123456789"
BENCH_SUBJECT = "bench"


def auth_settings() -> dict[str, Any]:
    """The ``auth`` and ``limits`` sections of a benchmarked service's settings."""
    return {
        "auth": {"mode": "required", "jwt": {"secret": BENCH_JWT_SECRET, "algorithms": ["HS256"]}},
        "limits": {"enabled": False, "max_unfinished_tasks": None},
    }


def bench_token() -> str:
    """An admin token for the benchmark's client (admin: it creates for many requesters and reports)."""
    now = int(time.time())
    claims = {"sub": BENCH_SUBJECT, "roles": ["admin"], "iat": now, "nbf": now, "exp": now + 86_400}
    return jwt.encode(claims, BENCH_JWT_SECRET, algorithm="HS256")


def headers() -> dict[str, str]:
    """HTTP headers of an authenticated benchmark request."""
    return {"authorization": f"Bearer {bench_token()}"}


def metadata() -> tuple[tuple[str, str], ...]:
    """gRPC metadata of an authenticated benchmark call."""
    return (("authorization", f"Bearer {bench_token()}"),)
