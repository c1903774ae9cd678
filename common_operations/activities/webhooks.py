"""Webhook activities: one signed POST of a task's snapshot per attempt; Temporal retries them.

Each attempt is recorded in the task's events (``webhook.attempt``) and logs; the outcome too
(``webhook.delivered``, or ``webhook.failed`` after a refusal or the last attempt). A network error,
a timeout, 408, 425, 429 and 5xx answers are retried with the configured backoff; other answers
(3xx: redirects are not followed, 4xx) and an address that has become forbidden are final.
"""

from __future__ import annotations

import logging
import time
import uuid
from datetime import UTC, datetime

from temporalio import activity
from temporalio.exceptions import ApplicationError

from common_operations.config import WebhookSettings
from common_operations.db.repository import TaskRepository
from common_operations.db.webhook_repository import WebhookRepository
from common_operations.domain.errors import ValidationFailed
from common_operations.domain.webhooks import (
    SEND_WEBHOOK_ACTIVITY,
    WEBHOOK_POLICY_ACTIVITY,
    WEBHOOK_REJECTED_ERROR,
    WebhookDelivery,
    WebhookPolicy,
    parse_callback_url,
    signed_headers,
    webhook_body,
)
from common_operations.domain.workflow_types import RetrySpec
from common_operations.infra import webhooks as http
from common_operations.infra.webhooks import CallbackHostUnresolvable, SendResult

log = logging.getLogger(__name__)

_RETRYABLE_STATUS = frozenset({408, 425, 429})


def is_retryable_status(status_code: int) -> bool:
    """Whether an answer may succeed if sent again (overload, timeouts, server errors)."""
    return status_code in _RETRYABLE_STATUS or status_code >= 500


class WebhookActivities:
    """Activities bound to the task mirror and the worker's webhook settings."""

    def __init__(self, tasks: TaskRepository, records: WebhookRepository, settings: WebhookSettings) -> None:
        """Read tasks through ``tasks``, record attempts through ``records``."""
        self._tasks = tasks
        self._records = records
        self._settings = settings

    @activity.defn(name=WEBHOOK_POLICY_ACTIVITY)
    async def webhook_policy(self) -> WebhookPolicy:
        """The retry policy and timeout of this worker's configuration (``webhooks``)."""
        retry = self._settings.retry
        return WebhookPolicy(
            retry=RetrySpec(
                maximum_attempts=retry.maximum_attempts,
                initial_interval_seconds=retry.initial_interval,
                backoff_coefficient=retry.backoff_coefficient,
                maximum_interval_seconds=retry.maximum_interval,
            ),
            timeout_seconds=self._settings.timeout,
        )

    @activity.defn(name=SEND_WEBHOOK_ACTIVITY)
    async def send_webhook(self, delivery: WebhookDelivery) -> str:
        """POST the task's current snapshot, signed, to its callback URL; record the attempt.

        Returns:
            How it ended (``delivered: HTTP 204``, or why there was nothing to send).

        Raises:
            ApplicationError: retryable for a network error or a retryable status; non-retryable
                (type ``WEBHOOK_REJECTED``) for any other answer or a forbidden address.
        """
        attempt = activity.info().attempt
        task_id = uuid.UUID(delivery.task_id)
        task = await self._tasks.get(task_id)
        if task is None:
            return "task deleted; nothing sent"
        if not task.callback_url:
            return "task has no callback URL; nothing sent"
        secret = self._settings.secret
        host = _host_of(task.callback_url)
        if not secret:
            await self._outcome(
                delivery, "webhook.failed", "webhooks are not configured on this worker", host
            )
            raise ApplicationError(
                "webhooks are not configured (webhooks.secret)",
                type=WEBHOOK_REJECTED_ERROR,
                non_retryable=True,
            )
        now = datetime.now(UTC)
        body = webhook_body(delivery, task, now)
        headers = signed_headers(secret, delivery, body, int(now.timestamp()))
        started = time.monotonic()
        try:
            result = await http.send(task.callback_url, body, headers, self._settings)
        except CallbackHostUnresolvable as err:
            result = SendResult(status_code=None, error=err.message, address="")
        except ValidationFailed as err:
            # The address checked at creation is forbidden now (rebinding, or the configuration
            # changed): refused before any connection, and no retry will change that.
            await self._attempt(delivery, attempt, host, None, f"refused: {err.message}", started)
            await self._outcome(delivery, "webhook.failed", f"refused: {err.message}", host)
            raise ApplicationError(err.message, type=WEBHOOK_REJECTED_ERROR, non_retryable=True) from err
        outcome = f"HTTP {result.status_code}" if result.status_code is not None else str(result.error)
        await self._attempt(delivery, attempt, host, result.status_code, result.error, started)
        if result.status_code is not None and 200 <= result.status_code < 300:
            await self._outcome(delivery, "webhook.delivered", f"delivered: {outcome}", host, attempt=attempt)
            return f"delivered: {outcome}"
        retryable = result.status_code is None or is_retryable_status(result.status_code)
        last = delivery.max_attempts > 0 and attempt >= delivery.max_attempts
        if not retryable or last:
            why = "gave up after" if retryable else "rejected at"
            await self._outcome(
                delivery, "webhook.failed", f"{why} attempt {attempt}: {outcome}", host, attempt=attempt
            )
        raise ApplicationError(
            f"webhook to {host} failed: {outcome}",
            type=WEBHOOK_REJECTED_ERROR if not retryable else "WEBHOOK_ATTEMPT_FAILED",
            non_retryable=not retryable,
        )

    async def _attempt(
        self,
        delivery: WebhookDelivery,
        attempt: int,
        host: str,
        status_code: int | None,
        error: str | None,
        started: float,
    ) -> None:
        result = f"HTTP {status_code}" if status_code is not None else f"error: {error}"
        level = "info" if status_code is not None and 200 <= status_code < 300 else "warning"
        message = f"webhook {delivery.event} attempt {attempt} to {host}: {result}"
        log.info("task %s: %s", delivery.task_id, message)
        await self._records.record(
            uuid.UUID(delivery.task_id),
            delivery.seq,
            delivery.status,
            "webhook.attempt",
            message,
            level=level,
            deliveryId=delivery.delivery_id,
            event=delivery.event,
            attempt=attempt,
            host=host,
            statusCode=status_code,
            error=error,
            durationMs=round((time.monotonic() - started) * 1000),
        )

    async def _outcome(
        self,
        delivery: WebhookDelivery,
        event_type: str,
        message: str,
        host: str,
        *,
        attempt: int | None = None,
    ) -> None:
        level = "info" if event_type == "webhook.delivered" else "error"
        text = f"webhook {delivery.event} to {host} {message}"
        log.log(logging.INFO if level == "info" else logging.WARNING, "task %s: %s", delivery.task_id, text)
        await self._records.record(
            uuid.UUID(delivery.task_id),
            delivery.seq,
            delivery.status,
            event_type,
            text,
            level=level,
            deliveryId=delivery.delivery_id,
            event=delivery.event,
            host=host,
            attempts=attempt,
        )


def _host_of(url: str) -> str:
    """The URL's host for the records (never its path or query, which may carry tokens)."""
    try:
        return parse_callback_url(url).host
    except ValidationFailed:
        return "?"
