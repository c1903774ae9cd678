"""The authorization table, pure: every role × action × whose task, against the decided rules."""

from __future__ import annotations

import uuid

import pytest

from common_operations.domain.authorization import (
    RULES,
    Action,
    ListScope,
    authorize,
    authorize_create,
    can_see,
    effective_roles,
    may_read_settings,
    reportable_types,
    visibility,
)
from common_operations.domain.errors import PermissionDenied, TaskNotFound, Unauthenticated
from common_operations.domain.principal import ANONYMOUS, Principal
from common_operations.domain.status import TaskStatus
from common_operations.domain.task import Task

ME = "me"
REPORTED_TYPE = "reported"  # reporters: ["me"]
OPEN_TYPE = "open"  # reporters: ["*"]
CLOSED_TYPE = "closed"  # reporters: []
REPORTERS = {REPORTED_TYPE: [ME], OPEN_TYPE: ["*"], CLOSED_TYPE: []}

ROLES = ("admin", "operator", "service", "viewer", "user")
OK, HIDDEN, DENIED = "ok", "404", "403"

# Whose task: requested by me, created by me for someone else, someone else's of a type I report
# on, someone else's of a type I do not report on.
OWN, CREATED, OTHERS_REPORTED, OTHERS = "own", "created", "others-reported", "others"

# The decided rules, written out independently of RULES: role → action → outcome per whose task.
EXPECTED: dict[str, dict[Action, dict[str, str]]] = {
    "admin": {
        a: {OWN: OK, CREATED: OK, OTHERS_REPORTED: OK, OTHERS: OK} for a in Action if a is not Action.CREATE
    },
    "operator": {
        Action.READ: {OWN: OK, CREATED: OK, OTHERS_REPORTED: OK, OTHERS: OK},
        Action.CANCEL: {OWN: OK, CREATED: OK, OTHERS_REPORTED: OK, OTHERS: OK},
        Action.RETRY: {OWN: OK, CREATED: OK, OTHERS_REPORTED: OK, OTHERS: OK},
        Action.RETRY_FAILED_ROWS: {OWN: OK, CREATED: OK, OTHERS_REPORTED: OK, OTHERS: OK},
        Action.DELETE: {OWN: OK, CREATED: OK, OTHERS_REPORTED: DENIED, OTHERS: DENIED},
        Action.REPORT_PROGRESS: {OWN: DENIED, CREATED: DENIED, OTHERS_REPORTED: DENIED, OTHERS: DENIED},
    },
    "service": {
        Action.READ: {OWN: OK, CREATED: OK, OTHERS_REPORTED: OK, OTHERS: HIDDEN},
        Action.CANCEL: {OWN: OK, CREATED: OK, OTHERS_REPORTED: DENIED, OTHERS: HIDDEN},
        Action.RETRY: {OWN: OK, CREATED: OK, OTHERS_REPORTED: DENIED, OTHERS: HIDDEN},
        Action.RETRY_FAILED_ROWS: {OWN: OK, CREATED: OK, OTHERS_REPORTED: DENIED, OTHERS: HIDDEN},
        Action.DELETE: {OWN: OK, CREATED: OK, OTHERS_REPORTED: DENIED, OTHERS: HIDDEN},
        # Own tasks are of the closed type (see _task): being the owner does not make a reporter.
        Action.REPORT_PROGRESS: {OWN: DENIED, CREATED: DENIED, OTHERS_REPORTED: OK, OTHERS: HIDDEN},
    },
    "viewer": {
        Action.READ: {OWN: OK, CREATED: OK, OTHERS_REPORTED: HIDDEN, OTHERS: HIDDEN},
        **{
            a: {OWN: DENIED, CREATED: DENIED, OTHERS_REPORTED: HIDDEN, OTHERS: HIDDEN}
            for a in (
                Action.CANCEL,
                Action.RETRY,
                Action.RETRY_FAILED_ROWS,
                Action.DELETE,
                Action.REPORT_PROGRESS,
            )
        },
    },
    "user": {
        **{
            a: {OWN: OK, CREATED: OK, OTHERS_REPORTED: HIDDEN, OTHERS: HIDDEN}
            for a in (Action.READ, Action.CANCEL, Action.RETRY, Action.RETRY_FAILED_ROWS, Action.DELETE)
        },
        Action.REPORT_PROGRESS: {OWN: DENIED, CREATED: DENIED, OTHERS_REPORTED: HIDDEN, OTHERS: HIDDEN},
    },
}


def principal(role: str, subject: str = ME) -> Principal:
    """``subject`` with ``role`` (a plain user holds no role at all)."""
    return Principal(subject, frozenset() if role == "user" else frozenset({role}), via="jwt")


def _task(whose: str) -> Task:
    requested_by, created_by, task_type = {
        OWN: (ME, ME, CLOSED_TYPE),
        CREATED: ("someone", ME, CLOSED_TYPE),
        OTHERS_REPORTED: ("someone", "someone", REPORTED_TYPE),
        OTHERS: ("someone", "someone", CLOSED_TYPE),
    }[whose]
    return Task(
        id=uuid.uuid4(),
        task_type=task_type,
        entity_type="product",
        status=TaskStatus.PROCESSING,
        requested_by=requested_by,
        created_by=created_by,
    )


def outcome(who: Principal, action: Action, task: Task) -> str:
    """What :func:`authorize` answers, as ok / 404 / 403."""
    try:
        authorize(who, action, task, reporters=REPORTERS[task.task_type])
    except TaskNotFound:
        return HIDDEN
    except PermissionDenied:
        return DENIED
    return OK


CASES = [
    (role, action, whose)
    for role in ROLES
    for action in Action
    if action is not Action.CREATE
    for whose in (OWN, CREATED, OTHERS_REPORTED, OTHERS)
]


@pytest.mark.parametrize(("role", "action", "whose"), CASES, ids=["-".join(map(str, c)) for c in CASES])
def test_the_table(role: str, action: Action, whose: str) -> None:
    """Each role × action × whose task gives the decided outcome."""
    assert outcome(principal(role), action, _task(whose)) == EXPECTED[role][action][whose]


def test_every_role_and_action_is_in_the_rules() -> None:
    """RULES covers every action for every role (a new action cannot slip through unruled)."""
    for role in ROLES:
        assert set(RULES[role]) == set(Action), role


@pytest.mark.parametrize(
    ("role", "requested_by", "expected"),
    [
        ("admin", None, OK),
        ("admin", "someone", OK),
        ("operator", None, OK),
        ("operator", ME, OK),
        ("operator", "someone", DENIED),
        ("service", None, OK),
        ("service", "someone", OK),
        ("viewer", None, DENIED),
        ("viewer", ME, DENIED),
        ("user", None, OK),
        ("user", ME, OK),
        ("user", "someone", DENIED),
    ],
)
def test_create(role: str, requested_by: str | None, expected: str) -> None:
    """Only admins and services name another requester; viewers create nothing."""
    try:
        creation = authorize_create(principal(role), requested_by)
    except PermissionDenied:
        assert expected == DENIED
        return
    assert expected == OK
    assert creation.created_by == ME
    assert creation.requested_by == (requested_by or ME)
    assert creation.on_behalf == (requested_by not in (None, ME))


def test_a_user_naming_someone_else_is_told_why() -> None:
    """The refusal names the field and the rule."""
    with pytest.raises(PermissionDenied) as info:
        authorize_create(principal("user"), "someone")
    assert info.value.details["field"] == "requestedBy"
    assert "only a service acting for a user" in info.value.message


def test_an_end_user_report_is_refused_with_the_reason() -> None:
    """A user's report on its own task is 403, saying that end users never report."""
    with pytest.raises(PermissionDenied) as info:
        authorize(principal("user"), Action.REPORT_PROGRESS, _task(OWN), reporters=["*"])
    assert "an end user can never complete a task with a report" in info.value.message


def test_a_service_reports_only_where_named() -> None:
    """A service is a reporter of a type that names it or says '*', not of one naming another."""
    svc = principal("service")
    for task_type, allowed in ((REPORTED_TYPE, True), (OPEN_TYPE, True), (CLOSED_TYPE, False)):
        task = _task(OTHERS)
        task.task_type = task_type
        assert can_see(svc, task, REPORTERS[task_type]) is allowed
    other = principal("service", "other-service")
    task = _task(OTHERS)
    task.task_type = REPORTED_TYPE
    assert outcome(other, Action.REPORT_PROGRESS, task) == HIDDEN


def test_roles_add_up() -> None:
    """A principal holding several roles gets the union of their rights."""
    both = Principal(ME, frozenset({"viewer", "service"}))
    assert outcome(both, Action.REPORT_PROGRESS, _task(OTHERS_REPORTED)) == OK
    assert outcome(both, Action.CANCEL, _task(OWN)) == OK
    ops_svc = Principal(ME, frozenset({"operator", "service"}))
    assert outcome(ops_svc, Action.REPORT_PROGRESS, _task(OTHERS_REPORTED)) == OK
    assert outcome(ops_svc, Action.DELETE, _task(OTHERS)) == DENIED


def test_unknown_roles_make_a_plain_user() -> None:
    """Roles outside the table (e.g. a token's 'customer') give a plain user's rights."""
    who = Principal(ME, frozenset({"customer"}))
    assert effective_roles(who) == frozenset({"user"})
    assert outcome(who, Action.CANCEL, _task(OWN)) == OK
    assert outcome(who, Action.READ, _task(OTHERS)) == HIDDEN


def test_the_anonymous_caller_may_do_nothing() -> None:
    """A public route's anonymous caller never reaches a task."""
    with pytest.raises(Unauthenticated):
        authorize(ANONYMOUS, Action.READ, _task(OTHERS))
    with pytest.raises(Unauthenticated):
        authorize_create(ANONYMOUS, None)
    assert visibility(ANONYMOUS) == ListScope(everything=False, subject="")


def test_a_hidden_task_is_exactly_a_missing_one() -> None:
    """The 404 of a hidden task has the message and details of any missing task's."""
    task = _task(OTHERS)
    with pytest.raises(TaskNotFound) as info:
        authorize(principal("user"), Action.READ, task)
    assert info.value.message == f"task {task.id} not found"
    assert info.value.details == {"id": str(task.id)}


@pytest.mark.parametrize(
    ("role", "expected"),
    [
        ("admin", ListScope(everything=True)),
        ("operator", ListScope(everything=True)),
        (
            "service",
            ListScope(everything=False, subject=ME, task_types=frozenset({REPORTED_TYPE, OPEN_TYPE})),
        ),
        ("viewer", ListScope(everything=False, subject=ME)),
        ("user", ListScope(everything=False, subject=ME)),
    ],
)
def test_visibility(role: str, expected: ListScope) -> None:
    """List shows what get shows: all for admins and operators, own (+ reported types) otherwise."""
    who = principal(role)
    assert visibility(who, reportable_types(who, REPORTERS)) == expected


def test_settings_reads() -> None:
    """Admins and operators read whole settings groups; nobody else."""
    assert [may_read_settings(principal(r)) for r in ROLES] == [True, True, False, False, False]


@pytest.mark.parametrize("role", ROLES)
def test_only_admins_create_admin_only_types(role: str) -> None:
    """A retention task deletes everyone's old tasks: only an admin creates one."""
    if role == "admin":
        assert authorize_create(principal(role), None, admin_only=True).created_by == ME
    else:
        with pytest.raises(PermissionDenied, match="admin"):
            authorize_create(principal(role), None, admin_only=True)
