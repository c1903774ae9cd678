"""Webhooks to a task's ``callbackUrl``: the URL rules, forbidden addresses, signature and body.

Pure (no I/O): name resolution and sending live in ``infra.webhooks``, the delivery in
``activities.webhooks`` and ``workflows.webhook_workflow``.

Signature recipe (README "Webhooks"): ``X-Webhook-Signature: v1=<hex>`` where ``<hex>`` is
HMAC-SHA256 with the configured secret over ``f"{X-Webhook-Timestamp}.".encode() + body``.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import time
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import SplitResult, urlsplit

from common_operations.domain.errors import ValidationFailed
from common_operations.domain.json_text import json_text
from common_operations.domain.status import TaskStatus
from common_operations.domain.task import Task
from common_operations.domain.task_snapshot import task_snapshot
from common_operations.domain.workflow_types import RetrySpec

MAX_CALLBACK_URL_LENGTH = 2048
FIELD = "callbackUrl"

HEADER_ID = "X-Webhook-Id"
HEADER_EVENT = "X-Webhook-Event"
HEADER_TIMESTAMP = "X-Webhook-Timestamp"
HEADER_SIGNATURE = "X-Webhook-Signature"
SIGNATURE_VERSION = "v1"
# How old a timestamp receivers should accept by default (replayed requests are refused).
DEFAULT_TOLERANCE_SECONDS = 300.0

# The statuses whose transition sends a webhook, and the event each sends.
WEBHOOK_EVENTS: dict[TaskStatus, str] = {
    TaskStatus.COMPLETED: "task.completed",
    TaskStatus.FAILED: "task.failed",
    TaskStatus.CANCELLED: "task.cancelled",
}

WEBHOOK_WORKFLOW_TYPE = "TaskWebhook"
SEND_WEBHOOK_ACTIVITY = "send_webhook"
WEBHOOK_POLICY_ACTIVITY = "webhook_policy"
# ApplicationError type of a delivery no retry can fix (a 4xx answer, a forbidden address, ...).
WEBHOOK_REJECTED_ERROR = "WEBHOOK_REJECTED"

# 100.64.0.0/10 (carrier-grade NAT) is neither private nor global in the ipaddress module.
_SHARED_ADDRESS_SPACE = ipaddress.ip_network("100.64.0.0/10")
# NAT64 (RFC 6052): the last 32 bits are an IPv4 address a NAT64 gateway would connect to.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class CallbackTarget:
    """A callback URL that passed the shape rules."""

    url: str
    scheme: str
    host: str  # lower case; an IPv6 literal without brackets
    port: int
    ip: IPAddress | None  # set when the host is an IP literal


@dataclass(frozen=True, slots=True)
class WebhookDelivery:
    """One webhook: the final transition of a task at mirror sequence ``seq``.

    The task's snapshot is read from Postgres when the webhook is sent; only ids travel here.
    """

    task_id: str
    seq: int
    status: str
    event: str
    # Set by the delivery workflow: the attempt after which a failure is the final outcome.
    max_attempts: int = 0

    @property
    def delivery_id(self) -> str:
        """Deterministic id (``X-Webhook-Id``): the same for every attempt of this delivery."""
        return f"{self.task_id}:{self.seq}"


@dataclass(frozen=True, slots=True)
class WebhookPolicy:
    """How the worker that delivers a webhook retries it (its ``webhooks`` configuration)."""

    retry: RetrySpec = field(default_factory=RetrySpec)
    timeout_seconds: float = 10.0


def parse_callback_url(url: str) -> CallbackTarget:
    """Check the shape of a callback URL: http(s), a host, no credentials, at most 2048 characters.

    Raises:
        ValidationFailed: (field ``callbackUrl``) the URL breaks a rule; the message says which.
    """
    if len(url) > MAX_CALLBACK_URL_LENGTH:
        raise ValidationFailed(
            f"callbackUrl is longer than {MAX_CALLBACK_URL_LENGTH} characters", field=FIELD
        )
    if not url or any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        raise ValidationFailed("callbackUrl must be a URL without spaces or control characters", field=FIELD)
    try:
        parts: SplitResult = urlsplit(url)
        port = parts.port
    except ValueError as err:
        raise ValidationFailed(f"callbackUrl is not a valid URL: {err}", field=FIELD) from err
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise ValidationFailed("callbackUrl must be an http or https URL", field=FIELD, scheme=scheme)
    if "@" in parts.netloc or parts.username is not None or parts.password is not None:
        # Credentials would be sent along and logged; a receiver authenticates by the signature.
        raise ValidationFailed("callbackUrl must not contain credentials (user:password@)", field=FIELD)
    host = (parts.hostname or "").rstrip(".").lower()
    if not host:
        raise ValidationFailed("callbackUrl must name a host", field=FIELD)
    ip = ip_literal(host)
    return CallbackTarget(
        url=url,
        scheme=scheme,
        host=host,
        port=port if port is not None else (443 if scheme == "https" else 80),
        ip=ip,
    )


def ip_literal(host: str) -> IPAddress | None:
    """``host`` as an IP address if it is one written the standard way, else None."""
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None


def is_forbidden_address(ip: IPAddress) -> bool:
    """Whether a webhook must not be sent to ``ip`` (unless configuration allows private addresses).

    Loopback, link-local (which includes the cloud metadata address 169.254.169.254), private,
    unspecified, multicast, reserved, carrier-grade NAT, and anything else not globally routable;
    an IPv6 address that embeds an IPv4 one (mapped, NAT64, 6to4) is judged by that IPv4 address.
    """
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None and is_forbidden_address(embedded):
            return True
    if isinstance(ip, ipaddress.IPv4Address) and ip in _SHARED_ADDRESS_SPACE:
        return True
    if isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local:
        return True
    return (
        ip.is_loopback
        or ip.is_link_local
        or ip.is_private
        or ip.is_unspecified
        or ip.is_multicast
        or ip.is_reserved
        or not ip.is_global
    )


def is_allowed_host(host: str, allowed_hosts: list[str]) -> bool:
    """Whether ``host`` is listed in ``webhooks.allowed_hosts`` (exact name or IP, any case)."""
    wanted = host.rstrip(".").lower()
    return any(wanted == h.strip().strip("[]").rstrip(".").lower() for h in allowed_hosts)


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``X-Webhook-Signature`` value of ``body`` sent at ``timestamp`` (unix seconds)."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"{SIGNATURE_VERSION}={digest}"


def signed_headers(secret: str, delivery: WebhookDelivery, body: bytes, timestamp: int) -> dict[str, str]:
    """Every header of a webhook POST."""
    return {
        "Content-Type": "application/json",
        "User-Agent": "common-operations-webhooks/1",
        HEADER_ID: delivery.delivery_id,
        HEADER_EVENT: delivery.event,
        HEADER_TIMESTAMP: str(timestamp),
        HEADER_SIGNATURE: sign(secret, timestamp, body),
    }


def verify_signature(
    secret: str,
    timestamp: str,
    body: bytes,
    header: str,
    tolerance: float = DEFAULT_TOLERANCE_SECONDS,
    *,
    now: float | None = None,
) -> bool:
    """Check a received webhook (for receivers and tests).

    Args:
        secret: the shared secret.
        timestamp: the ``X-Webhook-Timestamp`` header.
        body: the raw request body, exactly as received.
        header: the ``X-Webhook-Signature`` header; several comma-separated ``v1=`` values are
            accepted (one per secret while a secret is being rotated).
        tolerance: the largest accepted distance between ``timestamp`` and now, in seconds.
        now: the current unix time (default: the clock).

    Returns:
        Whether one of the signatures matches and the timestamp is recent enough.
    """
    try:
        sent_at = int(timestamp)
    except ValueError:
        return False
    current = time.time() if now is None else now
    if abs(current - sent_at) > tolerance:
        return False
    expected = sign(secret, sent_at, body)
    candidates = [part.strip() for part in header.split(",")]
    return any(hmac.compare_digest(expected, candidate) for candidate in candidates)


def webhook_body(delivery: WebhookDelivery, task: Task, delivered_at: datetime) -> bytes:
    """The JSON body of a webhook: what happened, and the task as it stands when it is sent."""
    document = {
        "id": delivery.delivery_id,
        "event": delivery.event,
        "taskId": delivery.task_id,
        "seq": delivery.seq,
        "task": task_snapshot(task),
        "deliveredAt": delivered_at.isoformat(),
    }
    return json_text(document).encode()
