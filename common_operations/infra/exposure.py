"""Where the listeners bind, and the rule that keeps ``dev`` auth mode on this machine.

In ``dev`` mode a request without credentials acts as the local admin: fine for ``make run`` on a
laptop, a hole anywhere else. So dev mode refuses to start unless REST and gRPC both listen on a
loopback address, and says loudly what it does when it starts.
"""

from __future__ import annotations

import ipaddress
from typing import Final

from common_operations.config import Settings

LOOPBACK_NAMES: Final = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (127.0.0.0/8, ::1) or the name ``localhost``.

    An empty host or a wildcard (0.0.0.0, ::) is every interface; another host name is not taken on
    trust (it may resolve to anything).
    """
    name = host.strip().strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def dev_mode_exposure(settings: Settings) -> str | None:
    """Why these settings must not start, or None: ``dev`` auth mode on a non-loopback listener."""
    if settings.auth.mode != "dev":
        return None
    listeners = (("REST", settings.http.host), ("gRPC", settings.grpc.host))
    exposed = [f"{name} on {host or '(all interfaces)'}" for name, host in listeners if not is_loopback(host)]
    if not exposed:
        return None
    return (
        f"auth mode dev serves requests without credentials as the local admin, so it listens on "
        f"loopback only, but this configuration listens on {', '.join(exposed)}. Either bind to "
        "127.0.0.1 (CO_HTTP__HOST, CO_GRPC__HOST) or require credentials (CO_AUTH__MODE=required)."
    )


def dev_mode_warning(settings: Settings) -> str | None:
    """The warning printed when the service starts in ``dev`` auth mode, or None in other modes."""
    if settings.auth.mode != "dev":
        return None
    return (
        f"AUTH MODE dev: requests without credentials act as the local admin "
        f"'{settings.auth.dev_subject}' (roles: {', '.join(settings.auth.dev_roles) or 'none'}). "
        "Never expose this service; set auth.mode: required (CO_AUTH__MODE=required) anywhere else."
    )
