"""What verifying a caller costs per request: ``Authenticator.authenticate`` in-process.

Baseline: dev mode without credentials (no verification at all). Measured in the same run:
``required`` mode with one HS256 token repeated (a client reusing its token: the remembered-token
path) and with a fresh token per request (every request decodes and checks a signature). No server,
no network: the figure is CPU per request of the identity step alone.

    .venv/bin/python -m bench.authn [--requests 20000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid

import jwt

from bench.auth import BENCH_JWT_SECRET
from common_operations.config import AuthSettings
from common_operations.services.identity import Authenticator


def _token(subject: str, jti: str) -> str:
    now = int(time.time())
    claims = {"sub": subject, "roles": ["operator"], "iat": now, "exp": now + 3600, "jti": jti}
    return jwt.encode(claims, BENCH_JWT_SECRET, algorithm="HS256")


async def _per_request_us(auth: Authenticator, headers: list[dict[str, str]]) -> float:
    started = time.perf_counter()
    for h in headers:
        await auth.authenticate(h)
    return (time.perf_counter() - started) / len(headers) * 1e6


async def main(args: argparse.Namespace) -> None:
    """Measure the three paths ``args.rounds`` times and print medians and ratios."""
    jwt_settings = {"secret": BENCH_JWT_SECRET, "algorithms": ["HS256"]}
    dev = Authenticator(AuthSettings(mode="dev", jwt=jwt_settings))
    n = args.requests
    repeated = [{"authorization": f"Bearer {_token('bench', 'one')}"}] * n
    results: dict[str, list[float]] = {
        "baseline (dev, no credentials)": [],
        "repeated token": [],
        "fresh tokens": [],
    }
    for _ in range(args.rounds):
        # A new authenticator per round: the repeated token's first use is verified in full.
        required = Authenticator(AuthSettings(mode="required", jwt=jwt_settings))
        fresh = [{"authorization": f"Bearer {_token('bench', uuid.uuid4().hex)}"} for _ in range(n)]
        results["baseline (dev, no credentials)"].append(await _per_request_us(dev, [{}] * n))
        results["repeated token"].append(await _per_request_us(required, repeated))
        results["fresh tokens"].append(await _per_request_us(required, fresh))
    base = statistics.median(results["baseline (dev, no credentials)"])
    print(f"{n} authentications per path, median of {args.rounds} rounds (warm, in-process)")
    for name, runs in results.items():
        med = statistics.median(runs)
        print(f"  {name:32s} {med:8.2f} µs/request   x{med / base:,.0f} of the baseline")


def parse_args() -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
