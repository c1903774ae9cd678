"""``TaskWebhook``: delivers one webhook of a task, retried by Temporal with exponential backoff.

A task's workflow starts it as an abandoned child when the task reaches a final transition (see
``TaskWorkflow._send_webhook``), so a slow or unreachable receiver never holds the task's run open:
a failed task can be retried, and a cancelled run ends, while its webhook is still being retried.
The retry policy is the delivering worker's ``webhooks.retry``, read once by a local activity and
kept in this workflow's history.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from common_operations.domain.webhooks import (
        SEND_WEBHOOK_ACTIVITY,
        WEBHOOK_POLICY_ACTIVITY,
        WEBHOOK_REJECTED_ERROR,
        WEBHOOK_WORKFLOW_TYPE,
        WebhookDelivery,
        WebhookPolicy,
    )

# Beyond the HTTP timeout: name resolution and the two records of an attempt.
_ATTEMPT_MARGIN = timedelta(seconds=15)


@workflow.defn(name=WEBHOOK_WORKFLOW_TYPE)
class TaskWebhookWorkflow:
    """Sends one webhook until it is delivered, refused, or out of attempts."""

    @workflow.run
    async def run(self, delivery: WebhookDelivery) -> str:
        """Deliver ``delivery``; fail (visibly, in the Web UI) if it could not be delivered."""
        policy = await workflow.execute_local_activity(
            WEBHOOK_POLICY_ACTIVITY,
            start_to_close_timeout=timedelta(seconds=10),
            result_type=WebhookPolicy,
        )
        retry = policy.retry
        try:
            outcome: str = await workflow.execute_activity(
                SEND_WEBHOOK_ACTIVITY,
                replace(delivery, max_attempts=retry.maximum_attempts),
                start_to_close_timeout=timedelta(seconds=policy.timeout_seconds) + _ATTEMPT_MARGIN,
                retry_policy=RetryPolicy(
                    initial_interval=timedelta(seconds=retry.initial_interval_seconds),
                    backoff_coefficient=retry.backoff_coefficient,
                    maximum_interval=timedelta(seconds=retry.maximum_interval_seconds),
                    maximum_attempts=retry.maximum_attempts,
                    non_retryable_error_types=[WEBHOOK_REJECTED_ERROR],
                ),
                result_type=str,
            )
        except ActivityError as err:
            cause = err.cause or err
            raise ApplicationError(
                f"webhook {delivery.delivery_id} not delivered: {cause}", non_retryable=True
            ) from err
        return outcome
