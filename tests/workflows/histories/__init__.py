"""Recorded workflow histories that every change of the workflow code must still replay.

Each ``*.json`` file is one run's history as Temporal returns it (``WorkflowHistory.to_json()``,
the same format as ``temporal workflow show -o json``), recorded by ``record.py`` from the real
service against a real dev server. A file is named ``<shape>[.<tag>][.run<N>].json``:

- ``shape``: which path through the workflow it took (see :data:`SHAPES`);
- ``tag``: the set it belongs to (absent for the first set; a date or version for later ones, so a
  new set is added next to the old ones and never replaces them);
- ``runN``: the run's place in a chain of runs of one workflow id (continue-as-new, retries).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

from temporalio.client import WorkflowHistory

HISTORIES_DIR = Path(__file__).parent

# Every path through the workflows that a running task may be on when a new version is deployed,
# with the fewest runs its recording must have.
SHAPES: dict[str, tuple[str, int]] = {
    "external": ("external task: reports, a coalesced progress write, completed by a report", 1),
    "scheduled": ("scheduled a few seconds ahead: durable timer, then pending, reports, completed", 1),
    "delegated": ("delegated to another service's activity (echo_task), completed by its result", 1),
    "delegated_failed": ("delegated activity failing every attempt (flaky_task): task failed", 1),
    "delegated_cancelled": ("delegated activity heartbeating (slow_task), cancelled mid-way", 1),
    "cancelled": ("external task cancelled through the API with a reason", 1),
    "failed_retried": ("external task failed by a report, retried by hand (a new run), completed", 2),
    "auto_retried": ("silent worker fails the task, automatic retry on a timer, then retry-now", 1),
    "continued_as_new": ("more reports than max_reports_per_run: a chain of runs, then completed", 3),
    "terminated": ("external task terminated by an operator (no workflow code runs at the end)", 1),
    "reconciler": ("the TaskReconciler workflow: a few passes, then terminated", 1),
}

_NAME = re.compile(r"^(?P<shape>[a-z_]+)(?:\.(?P<tag>(?!run\d)[A-Za-z0-9_-]+))?(?:\.run(?P<run>\d+))?\.json$")
TAG = re.compile(r"^(?!run\d)[A-Za-z0-9_-]+$")


def history_path(shape: str, *, tag: str | None = None, run: int | None = None) -> Path:
    """Where the history of ``shape`` (run ``run`` of its chain) in set ``tag`` is kept."""
    parts = [shape, *([tag] if tag else []), *([f"run{run}"] if run is not None else [])]
    return HISTORIES_DIR / (".".join(parts) + ".json")


class HistoryName(NamedTuple):
    """What a history file's name says about it."""

    shape: str
    tag: str | None
    run: int | None


def parse_name(path: Path) -> HistoryName:
    """The shape, set and run a history file records.

    Raises:
        ValueError: the file name does not follow ``<shape>[.<tag>][.run<N>].json``.
    """
    match = _NAME.match(path.name)
    if match is None:
        raise ValueError(f"{path.name}: not a history file name (<shape>[.<tag>][.run<N>].json)")
    return HistoryName(match["shape"], match["tag"], int(match["run"]) if match["run"] else None)


def history_files() -> list[Path]:
    """Every committed history, in name order."""
    return sorted(HISTORIES_DIR.glob("*.json"))


def load(path: Path) -> WorkflowHistory:
    """A committed history, ready for ``Replayer.replay_workflow``.

    The file holds no workflow id (``to_json`` leaves it out) and replay does not depend on it.
    """
    return WorkflowHistory.from_json(f"replay-{path.stem}", path.read_text())
