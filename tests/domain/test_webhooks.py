"""Webhook rules: callback URL shape, forbidden addresses, the signature recipe and the body."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import uuid
from datetime import UTC, datetime

import pytest

from common_operations.domain.errors import ValidationFailed
from common_operations.domain.status import TaskStatus
from common_operations.domain.task import RecordCounts, Task
from common_operations.domain.webhooks import (
    HEADER_EVENT,
    HEADER_ID,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    WebhookDelivery,
    is_allowed_host,
    is_forbidden_address,
    parse_callback_url,
    sign,
    signed_headers,
    verify_signature,
    webhook_body,
)

SECRET = "s3cret"
BODY = b'{"event":"task.completed"}'
NOW = 1_800_000_000


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://example.com/x",
        "gopher://example.com/",
        "http://user:pw@example.com/hook",
        "http://user@example.com/hook",
        "http:///no-host",
        "https://",
        "http://example.com:99999/",
        "http://exa mple.com/",
        "http://example.com/\r\nX-Injected: 1",
        "example.com/hook",
        "",
        "https://example.com/" + "a" * 2048,
    ],
)
def test_bad_callback_urls_are_refused_with_the_field(url: str) -> None:
    with pytest.raises(ValidationFailed) as err:
        parse_callback_url(url)
    assert err.value.details["field"] == "callbackUrl"


def test_a_good_callback_url_is_parsed() -> None:
    target = parse_callback_url("HTTPS://Hooks.Example.COM./in?token=1")
    assert (target.scheme, target.host, target.port, target.ip) == ("https", "hooks.example.com", 443, None)
    v6 = parse_callback_url("http://[::1]:8080/x")
    assert (v6.host, v6.port, v6.ip) == ("::1", 8080, ipaddress.ip_address("::1"))
    assert len(parse_callback_url("https://example.com/" + "a" * 2000).url) <= 2048


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.8.9.10",
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "169.254.169.254",  # cloud metadata (link-local)
        "100.64.0.1",  # carrier-grade NAT
        "0.0.0.0",
        "224.0.0.251",  # multicast
        "240.0.0.1",  # reserved
        "255.255.255.255",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "fd12:3456::1",
        "ff02::1",
        "::ffff:127.0.0.1",  # IPv4-mapped loopback
        "::ffff:169.254.169.254",
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
        "2002:a00:1::1",  # 6to4 of 10.0.0.1
    ],
)
def test_internal_addresses_are_forbidden(address: str) -> None:
    assert is_forbidden_address(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "1.1.1.1", "2606:4700:4700::1111"])
def test_public_addresses_are_allowed(address: str) -> None:
    assert not is_forbidden_address(ipaddress.ip_address(address))


def test_allowed_hosts_match_exactly_in_any_case() -> None:
    assert is_allowed_host("hooks.internal", ["Hooks.Internal"])
    assert is_allowed_host("::1", ["[::1]"])
    assert not is_allowed_host("evil-hooks.internal", ["hooks.internal"])
    assert not is_allowed_host("hooks.internal.evil.com", ["hooks.internal"])


def test_the_signature_is_the_documented_recipe() -> None:
    # README: hex HMAC-SHA256(secret, f"{timestamp}." + body), sent as "v1=<hex>".
    expected = hmac.new(SECRET.encode(), f"{NOW}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert sign(SECRET, NOW, BODY) == f"v1={expected}"
    assert verify_signature(SECRET, str(NOW), BODY, f"v1={expected}", now=NOW + 10)


def test_verification_fails_with_a_wrong_secret_a_tampered_body_or_an_old_timestamp() -> None:
    header = sign(SECRET, NOW, BODY)
    assert not verify_signature("other", str(NOW), BODY, header, now=NOW)
    assert not verify_signature(SECRET, str(NOW), BODY + b" ", header, now=NOW)
    assert not verify_signature(SECRET, str(NOW + 1), BODY, header, now=NOW)  # timestamp not signed
    assert not verify_signature(SECRET, str(NOW), BODY, header, tolerance=300, now=NOW + 301)
    assert not verify_signature(SECRET, str(NOW), BODY, header, tolerance=300, now=NOW - 301)
    assert not verify_signature(SECRET, "not-a-number", BODY, header, now=NOW)
    assert not verify_signature(SECRET, str(NOW), BODY, "v1=" + "0" * 64, now=NOW)


def test_verification_accepts_one_of_several_signatures_while_a_secret_rotates() -> None:
    header = f"{sign('old', NOW, BODY)}, {sign(SECRET, NOW, BODY)}"
    assert verify_signature(SECRET, str(NOW), BODY, header, now=NOW)


def test_headers_and_body_of_a_delivery() -> None:
    task_id = uuid.uuid4()
    task = Task(
        id=task_id,
        task_type="process",
        entity_type="product",
        status=TaskStatus.FAILED,
        params={"a": 1},
        counts=RecordCounts(total=4, processed=2, success=1, failed=1),
        error_message="boom",
        next_retry_at=datetime(2030, 1, 1, tzinfo=UTC),
        callback_url="https://example.com/hook",
    )
    delivery = WebhookDelivery(task_id=str(task_id), seq=7, status="failed", event="task.failed")
    body = webhook_body(delivery, task, datetime(2030, 1, 1, tzinfo=UTC))
    headers = signed_headers(SECRET, delivery, body, NOW)
    assert headers[HEADER_ID] == f"{task_id}:7"
    assert headers[HEADER_EVENT] == "task.failed"
    assert headers[HEADER_TIMESTAMP] == str(NOW)
    assert verify_signature(SECRET, headers[HEADER_TIMESTAMP], body, headers[HEADER_SIGNATURE], now=NOW)
    document = json.loads(body)
    assert document["id"] == f"{task_id}:7" and document["event"] == "task.failed"
    assert document["taskId"] == str(task_id) and document["seq"] == 7
    snapshot = document["task"]
    assert snapshot["status"] == "failed" and snapshot["errorMessage"] == "boom"
    assert snapshot["nextRetryAt"] == "2030-01-01T00:00:00+00:00"
    assert snapshot["progressPercentage"] == 50.0 and snapshot["paramsObject"] == {"a": 1}
