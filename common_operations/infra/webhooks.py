"""Name resolution and HTTP for webhooks, with the address checks that keep them off internal networks.

A callback URL is checked when the task is created and again right before every attempt: a name
may resolve to a public address at creation and to ``127.0.0.1`` later (DNS rebinding). The attempt
then connects to exactly the address that was checked (the URL's host is replaced by it; ``Host``
and TLS SNI/certificate checks keep the name), never follows redirects and ignores proxy variables.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass

import httpx

from common_operations.config import WebhookSettings
from common_operations.domain.errors import ValidationFailed
from common_operations.domain.webhooks import (
    FIELD,
    CallbackTarget,
    IPAddress,
    ip_literal,
    is_allowed_host,
    is_forbidden_address,
    parse_callback_url,
)


class CallbackHostUnresolvable(ValidationFailed):
    """The callback URL's host name does not resolve (retryable when a webhook is sent)."""


@dataclass(frozen=True, slots=True)
class SendResult:
    """How one POST ended: an HTTP status, or the error that prevented one."""

    status_code: int | None
    error: str | None
    address: str


async def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to (TCP), in the resolver's order.

    Raises:
        CallbackHostUnresolvable: the name does not resolve.
    """
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as err:
        raise CallbackHostUnresolvable(
            f"callbackUrl host {host!r} could not be resolved ({err})", field=FIELD
        ) from err
    addresses: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        ip = ip_literal(str(sockaddr[0]))
        if ip is not None and ip not in addresses:
            addresses.append(ip)
    if not addresses:
        raise CallbackHostUnresolvable(f"callbackUrl host {host!r} has no address", field=FIELD)
    return addresses


async def permitted_addresses(target: CallbackTarget, settings: WebhookSettings) -> list[IPAddress]:
    """The addresses a webhook to ``target`` may connect to.

    Every address the host resolves to must be public, unless ``allow_private_addresses`` is set or
    the host is listed in ``allowed_hosts``: one forbidden address refuses the host (a resolver may
    answer either, so a mix is no safer than the worst of it).

    Raises:
        ValidationFailed: (field ``callbackUrl``) a forbidden address.
        CallbackHostUnresolvable: the name does not resolve.
    """
    addresses = [target.ip] if target.ip is not None else await resolve(target.host, target.port)
    if settings.allow_private_addresses or is_allowed_host(target.host, settings.allowed_hosts):
        return addresses
    forbidden = [ip for ip in addresses if is_forbidden_address(ip)]
    if forbidden:
        via = "" if target.ip is not None else f" resolves to {forbidden[0]}, which"
        raise ValidationFailed(
            f"callbackUrl host {target.host!r}{via} is a loopback, private, link-local or otherwise "
            "non-public address; webhooks are only sent to public addresses unless "
            "webhooks.allowed_hosts or webhooks.allow_private_addresses permits it",
            field=FIELD,
            host=target.host,
        )
    return addresses


async def check_callback_url(url: str, settings: WebhookSettings) -> CallbackTarget:
    """Validate a task's ``callbackUrl`` when the task is created (shape, configuration, addresses).

    Raises:
        ValidationFailed: (field ``callbackUrl``) webhooks are not configured, the URL breaks a
            rule, its host does not resolve, or it resolves to a forbidden address.
    """
    if not settings.secret:
        raise ValidationFailed(
            "webhooks are not configured (no webhooks.secret / WEBHOOK_SECRET): a task cannot have a "
            "callbackUrl, since nothing unsigned is sent",
            field=FIELD,
        )
    target = parse_callback_url(url)
    await permitted_addresses(target, settings)
    return target


def _pinned_url(target: CallbackTarget, ip: IPAddress) -> httpx.URL:
    return httpx.URL(target.url).copy_with(host=str(ip), port=target.port)


def _host_header(target: CallbackTarget) -> str:
    host = f"[{target.host}]" if target.ip is not None and target.ip.version == 6 else target.host
    default = 443 if target.scheme == "https" else 80
    return host if target.port == default else f"{host}:{target.port}"


async def post(
    target: CallbackTarget, addresses: list[IPAddress], body: bytes, headers: dict[str, str], timeout: float
) -> SendResult:
    """POST ``body`` to ``target`` through the first of the checked ``addresses`` that connects.

    A fresh client per call: a pooled TLS connection opened for one name must never carry a request
    for another name served at the same address.
    """
    error = "no address"
    async with httpx.AsyncClient(timeout=timeout, follow_redirects=False, trust_env=False) as client:
        for ip in addresses:
            extensions = (
                {"sni_hostname": target.host} if target.scheme == "https" and target.ip is None else {}
            )
            try:
                async with client.stream(
                    "POST",
                    _pinned_url(target, ip),
                    content=body,
                    headers={**headers, "Host": _host_header(target)},
                    extensions=extensions,
                ) as response:
                    return SendResult(status_code=response.status_code, error=None, address=str(ip))
            except httpx.ConnectError as err:
                # Not connected: nothing was sent, so the next address may be tried.
                error = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
            except httpx.HTTPError as err:
                text = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
                return SendResult(status_code=None, error=text, address=str(ip))
    return SendResult(status_code=None, error=error, address=str(addresses[-1]) if addresses else "")


async def send(url: str, body: bytes, headers: dict[str, str], settings: WebhookSettings) -> SendResult:
    """Re-check ``url`` now (DNS rebinding) and POST to the address that was checked.

    Raises:
        ValidationFailed: the URL or its current addresses are forbidden (no request is made).
        CallbackHostUnresolvable: the name does not resolve now.
    """
    target = parse_callback_url(url)
    addresses = await permitted_addresses(target, settings)
    return await post(target, addresses, body, headers, settings.timeout)
