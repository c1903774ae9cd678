"""Every committed history still replays with the current workflow code (no server needed).

A history is what a task that is running right now has recorded; a deploy whose code cannot replay
it breaks that task (``NondeterminismError``: the workflow task fails again and again until someone
intervenes). The histories are recorded by ``tests/workflows/histories/record.py`` from the real
service; README "Changing the workflow safely" says when and how to add new ones.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest
from temporalio.worker import Replayer
from temporalio.workflow import NondeterminismError

from common_operations.domain.workflow_types import RECONCILER_WORKFLOW_TYPE, WORKFLOW_TYPE
from common_operations.workflows.reconciler_workflow import ReconcilerWorkflow
from common_operations.workflows.task_workflow import TaskWorkflow
from tests.workflows.altered_task_workflow import PatchedExtraTimerWorkflow, UnpatchedExtraTimerWorkflow
from tests.workflows.histories import SHAPES, history_files, history_path, load, parse_name

HISTORIES = history_files()


def _workflow_type(path: Path) -> str:
    started = load(path).events[0].workflow_execution_started_event_attributes
    return started.workflow_type.name


TASK_HISTORIES = [p for p in HISTORIES if _workflow_type(p) == WORKFLOW_TYPE]


def test_every_shape_has_a_complete_history() -> None:
    """A deleted or half-recorded file fails here, not silently as one replay fewer."""
    runs: dict[tuple[str, str | None], list[int | None]] = defaultdict(list)
    for path in HISTORIES:
        name = parse_name(path)
        assert name.shape in SHAPES, f"{path.name}: unknown shape; list it in histories.SHAPES"
        runs[name.shape, name.tag].append(name.run)
    missing = [shape for shape in SHAPES if not any(recorded == shape for recorded, _ in runs)]
    assert not missing, f"no history of {missing}; record them (README: Changing the workflow safely)"
    for (shape, tag), numbers in runs.items():
        fewest = SHAPES[shape][1]
        set_name = f"{shape} (set {tag or 'first'})"
        if numbers == [None]:
            assert fewest == 1, f"{set_name}: one run recorded, the shape needs at least {fewest}"
            continue
        chain = sorted(n for n in numbers if n is not None)
        assert len(chain) == len(numbers), f"{set_name}: both a single-run file and numbered runs"
        assert chain == list(range(1, len(chain) + 1)), f"{set_name}: runs {chain}"
        assert len(chain) >= fewest, f"{set_name}: {len(chain)} runs, the shape needs at least {fewest}"


def test_histories_cover_both_workflow_types() -> None:
    assert {_workflow_type(p) for p in HISTORIES} == {WORKFLOW_TYPE, RECONCILER_WORKFLOW_TYPE}


@pytest.mark.parametrize("path", HISTORIES, ids=lambda p: p.name)
async def test_history_replays(path: Path) -> None:
    replayer = Replayer(workflows=[TaskWorkflow, ReconcilerWorkflow])
    await replayer.replay_workflow(load(path))


# -- the test has teeth ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "cause"),
    [
        # Its first command is the upsert of its first mirror write; the extra timer comes first.
        ("delegated", "Timer machine does not handle this event"),
        # Its first command is the silence timer, which the extra timer matches (replay compares
        # kinds of commands, not durations); the history's later cancellation of it does not.
        ("external", "No command scheduled for event"),
    ],
)
async def test_an_unpatched_change_fails_replay(shape: str, cause: str) -> None:
    replayer = Replayer(workflows=[UnpatchedExtraTimerWorkflow, ReconcilerWorkflow])
    with pytest.raises(NondeterminismError, match=cause):
        await replayer.replay_workflow(load(history_path(shape)))


@pytest.mark.parametrize("path", TASK_HISTORIES, ids=lambda p: p.name)
async def test_the_same_change_behind_a_patch_replays(path: Path) -> None:
    replayer = Replayer(workflows=[PatchedExtraTimerWorkflow, ReconcilerWorkflow])
    await replayer.replay_workflow(load(path))
