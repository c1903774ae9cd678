"""Links into the Temporal Web UI: every task's ``workflowUrl``.

The link is the task's workflow page, ``<temporal.ui_base_url>/namespaces/<namespace>/workflows/
task-<id>``; without a run id the Web UI opens the latest run (a retry or a continue-as-new moves
on, the link stays). The base URL is a setting of the process (``temporal.ui_base_url``; ``run``
uses its embedded UI), applied once by :func:`configure` when the runtime opens, so every transport
(REST, gRPC, the event stream, the console) shows the same link without threading it through.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from urllib.parse import quote

from common_operations.domain.workflow_types import workflow_id_for


@dataclass(frozen=True, slots=True)
class WorkflowLinks:
    """Where the Temporal Web UI of the service's namespace lives (None: no UI, no links)."""

    base_url: str | None = None
    namespace: str = "default"

    def workflow_url(self, task_id: uuid.UUID | str) -> str | None:
        """The Web UI page of the task's workflow, or None when no UI base URL is configured."""
        if not self.base_url:
            return None
        # Each path segment percent-encoded as the Web UI encodes them (encodeURIComponent).
        namespace = quote(self.namespace, safe="")
        workflow_id = quote(workflow_id_for(str(task_id)), safe="")
        return f"{self.base_url.rstrip('/')}/namespaces/{namespace}/workflows/{workflow_id}"


_links = WorkflowLinks()


def configure(base_url: str | None, namespace: str) -> WorkflowLinks:
    """Set the process's Web UI base URL and namespace (called by ``bootstrap.open_runtime``).

    Returns:
        The links now in use.
    """
    global _links  # one process serves one namespace with one UI
    _links = WorkflowLinks(base_url or None, namespace)
    return _links


def workflow_url(task_id: uuid.UUID | str) -> str | None:
    """The task's ``workflowUrl`` with the process's configuration (None: no UI base URL)."""
    return _links.workflow_url(task_id)
