"""Hypothesis over every OperationsService request message: no input gets INTERNAL or UNKNOWN.

The strategies are built from the service's descriptors, so a new RPC or field is fuzzed without a
change here: every field gets values of its wire type, with the edges weighted in (the int32/int64
limits, negative numbers, empty and over-long text, NUL, text around the column lengths,
Timestamps beyond protobuf's years 1 to 9999, Structs with NaN or nested past any limit, JSON text
that is malformed, too deep or not an object). Id fields are often the ids of real tasks in each
state, and task types often configured ones, so requests get past "not found" and "unknown type"
into the service, Temporal and Postgres.

The real server runs in the test's event loop (tests/grpc_api/conftest.py) with the service's
worker; Hypothesis drives a blocking channel from a worker thread (``asyncio.to_thread``), so the
loop stays free to serve. Each RPC gets fresh tasks (the previous RPC may have cancelled them).
Each answer must be a response or an error status other than INTERNAL, UNKNOWN and
DEADLINE_EXCEEDED, carrying the ``error-code`` trailing metadata.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2, timestamp_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy

from common_operations.domain.status import TaskStatus
from common_operations.grpc.v1 import operations_pb2 as pb
from tests.auth_support import token
from tests.grpc_api.support import ALICE, WORKER, create, get, report
from tests.helpers import assert_eventually

EXAMPLES_PER_RPC = 60
# How long a fuzzed watch waits for its first message.
STREAM_WAIT = 1.0
CALL_TIMEOUT = 30.0
SERVICE = pb.DESCRIPTOR.services_by_name["OperationsService"]
NOT_ALLOWED = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED}

pytestmark = pytest.mark.timeout(300)

F = FieldDescriptor
INT_RANGES: dict[int, tuple[int, int]] = {
    F.TYPE_INT32: (-(2**31), 2**31 - 1),
    F.TYPE_SINT32: (-(2**31), 2**31 - 1),
    F.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    F.TYPE_INT64: (-(2**63), 2**63 - 1),
    F.TYPE_SINT64: (-(2**63), 2**63 - 1),
    F.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    F.TYPE_UINT32: (0, 2**32 - 1),
    F.TYPE_FIXED32: (0, 2**32 - 1),
    F.TYPE_UINT64: (0, 2**64 - 1),
    F.TYPE_FIXED64: (0, 2**64 - 1),
}
# Protobuf's Timestamp range, and the edges just outside it.
TS_MIN, TS_MAX = -62135596800, 253402300799
# The column lengths and the limits around them.
EDGE_LENGTHS = (100, 101, 200, 201, 255, 256, 1000, 1001, 1024, 1025, 4000, 4001)
PRINTABLE = st.characters(min_codepoint=0x20, max_codepoint=0x7E)


@dataclass(frozen=True)
class World:
    """What the strategies aim at: ids of real tasks and the configured task types."""

    task_ids: tuple[str, ...]
    task_types: tuple[str, ...] = ("process", "data_sync", "delegated_echo")


def ints(lo: int, hi: int) -> SearchStrategy[int]:
    """Any value of the type, weighted towards small numbers and the edges."""
    edges = [
        v
        for v in (lo, hi, lo + 1, hi - 1, 0, -1, 1, 2**31 - 1, 2**31, 2**53 + 1, 1000, 1001)
        if lo <= v <= hi
    ]
    return st.one_of(st.integers(max(lo, -3), min(hi, 1100)), st.sampled_from(edges), st.integers(lo, hi))


def texts() -> SearchStrategy[str]:
    """Unicode (no surrogates: protobuf strings are UTF-8), NUL, blanks, and text around the limits."""
    return st.one_of(
        st.text(max_size=24),
        st.sampled_from(["", " ", "\x00", "a\x00b", "%_\\", "' OR 1=1 --", "\u202e\u200b", "😀" * 50]),
        st.sampled_from(EDGE_LENGTHS).flatmap(
            lambda n: st.sampled_from(["x" * n, "é" * n, " " + "y" * n + " "])
        ),
    )


def json_values(max_leaves: int = 12) -> SearchStrategy[Any]:
    """JSON-like values, including floats Postgres' jsonb refuses (NaN, infinity)."""
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=12),
    )
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
        ),
        max_leaves=max_leaves,
    )


def nested_json_text(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


def json_texts() -> SearchStrategy[str]:
    """``params`` as JSON text: objects, malformed, too deep, not objects, non-finite numbers."""
    return st.one_of(
        st.dictionaries(st.text(max_size=8), json_values(), max_size=5).map(
            lambda d: json.dumps(d, allow_nan=True)
        ),
        st.sampled_from(
            [
                "",
                "{",
                "[]",
                "null",
                "1",
                '"x"',
                '{"a": NaN}',
                '{"a": Infinity}',
                '{"a": 1e400}',
                '{"a": ' + "9" * 400 + "}",
                '{"a": ' + "9" * 5000 + "}",
                '{"a": "\\u0000"}',
                '{"a": "\\ud800"}',
                '{"\\u0000": 1}',
                nested_json_text(32),
                nested_json_text(33),
                '{"a":' + "[" * 5000 + "]" * 5000 + "}",
                json.dumps({"blob": "x" * 70_000}),
            ]
        ),
        texts(),
    )


def _struct(value: dict[str, Any]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(value)
    return s


def structs() -> SearchStrategy[struct_pb2.Struct]:
    """Structs of JSON-like values, NaN included, and Structs nested past the params depth limit."""

    def nested(depth: int) -> struct_pb2.Struct:
        root = struct_pb2.Struct()
        level = root
        for _ in range(depth):
            level = level.fields["a"].struct_value
        return root

    return st.one_of(
        st.dictionaries(st.text(max_size=8), json_values(), max_size=5).map(_struct),
        st.sampled_from([31, 32, 33, 60, 95]).map(nested),
    )


def timestamps() -> SearchStrategy[timestamp_pb2.Timestamp]:
    """Valid instants (some around now, so scheduled tasks happen) and out-of-range seconds/nanos."""
    now = int(datetime.now(UTC).timestamp())
    seconds = st.one_of(
        st.integers(now - 86_400, now + 86_400 * 30),
        st.integers(TS_MIN, TS_MAX),
        st.sampled_from([TS_MIN, TS_MAX, TS_MIN - 1, TS_MAX + 1, -(2**63), 2**63 - 1, 0]),
        st.integers(-(2**63), 2**63 - 1),
    )
    nanos = st.one_of(st.integers(0, 999_999_999), st.sampled_from([-1, 10**9, -(2**31), 2**31 - 1]))
    return st.builds(timestamp_pb2.Timestamp, seconds=seconds, nanos=nanos)


def tame_scalar_strategy(fd: FieldDescriptor, world: World) -> SearchStrategy[Any] | None:
    """Plausible values, so that some requests are valid and reach Temporal and Postgres."""
    name = fd.name
    if fd.type == F.TYPE_STRING:
        if name == "id" or (name.endswith("_id") and name != "report_id"):
            return st.sampled_from(world.task_ids)
        if name in ("params", "params_json"):
            return st.dictionaries(st.text(PRINTABLE, max_size=6), st.integers(0, 9), max_size=3).map(
                json.dumps
            )
        if name == "task_type":
            return st.sampled_from(world.task_types)
        if name == "status":
            return st.sampled_from([s.value for s in TaskStatus])
        return st.text(PRINTABLE, max_size=16)
    if fd.type in INT_RANGES:
        return st.integers(0, 50)
    if fd.type == F.TYPE_MESSAGE and fd.message_type.full_name == "google.protobuf.Timestamp":
        now = int(datetime.now(UTC).timestamp())
        return st.builds(timestamp_pb2.Timestamp, seconds=st.integers(now - 3600, now + 3600))
    if fd.type == F.TYPE_MESSAGE and fd.message_type.full_name == "google.protobuf.Struct":
        return st.dictionaries(st.text(PRINTABLE, max_size=6), st.integers(0, 9), max_size=3).map(_struct)
    return None


def scalar_strategy(fd: FieldDescriptor, world: World, *, tame: bool = False) -> SearchStrategy[Any]:
    """Values for one field by wire type, aimed by the field's name where that helps."""
    if tame and (strategy := tame_scalar_strategy(fd, world)) is not None:
        return strategy
    name = fd.name
    if fd.type == F.TYPE_STRING:
        if name == "id" or (name.endswith("_id") and name != "report_id"):
            return st.one_of(st.sampled_from(world.task_ids), st.uuids().map(str), texts())
        if name in ("params", "params_json"):
            return json_texts()
        if name == "task_type":
            return st.one_of(st.sampled_from(world.task_types), texts())
        if name == "status":
            return st.one_of(st.sampled_from([s.value.upper() for s in TaskStatus]), texts())
        return texts()
    if fd.type in INT_RANGES:
        return ints(*INT_RANGES[fd.type])
    if fd.type == F.TYPE_BOOL:
        return st.booleans()
    if fd.type in (F.TYPE_DOUBLE, F.TYPE_FLOAT):
        return st.floats(allow_nan=True, allow_infinity=True, width=64 if fd.type == F.TYPE_DOUBLE else 32)
    if fd.type == F.TYPE_ENUM:
        return st.sampled_from([v.number for v in fd.enum_type.values] + [999])
    if fd.type == F.TYPE_BYTES:
        return st.binary(max_size=64)
    if fd.type == F.TYPE_MESSAGE:
        return message_strategy(fd.message_type, world)
    raise NotImplementedError(f"no strategy for {fd.full_name} (type {fd.type})")


def message_strategy(desc: Descriptor, world: World) -> SearchStrategy[Any]:
    """Messages of type ``desc`` with any subset of fields set (at most one member per oneof).

    Half of them wild (every value of the wire type, edges weighted in), half tame (plausible
    values), so that both the refusals and the paths behind validation are exercised.
    """
    if desc.full_name == "google.protobuf.Timestamp":
        return timestamps()
    if desc.full_name == "google.protobuf.Struct":
        return structs()
    message_class = pb.DESCRIPTOR.pool.FindMessageTypeByName(desc.full_name)._concrete_class

    def values(tame: bool) -> dict[str, SearchStrategy[Any]]:
        return {
            fd.name: st.deferred(lambda fd=fd: scalar_strategy(fd, world, tame=tame)) for fd in desc.fields
        }

    wild, tame = values(False), values(True)

    @st.composite
    def build(draw: Callable[[SearchStrategy[Any]], Any]) -> Message:
        fields = tame if draw(st.booleans()) else wild
        message = message_class()
        chosen = {o.name: draw(st.sampled_from([None, *(f.name for f in o.fields)])) for o in desc.oneofs}
        for fd in desc.fields:
            if fd.containing_oneof is not None:
                if chosen[fd.containing_oneof.name] != fd.name:
                    continue
            elif not draw(st.booleans()):
                continue
            if fd.is_repeated:
                values = draw(st.lists(fields[fd.name], max_size=3))
                container = getattr(message, fd.name)
                for value in values:
                    if fd.type == F.TYPE_MESSAGE:
                        container.add().CopyFrom(value)
                    else:
                        container.append(value)
            elif fd.type == F.TYPE_MESSAGE:
                getattr(message, fd.name).CopyFrom(draw(fields[fd.name]))
            else:
                setattr(message, fd.name, draw(fields[fd.name]))
        return message

    return build()


# Credentials: valid ones, none (the dev mode's local admin), and every kind of bad one, each of
# which must be UNAUTHENTICATED (never INTERNAL) whatever the request. Valid ones are drawn twice as
# often, so that most requests still get past authentication into the service.
GOOD_METADATA = st.sampled_from([ALICE, WORKER, ()])
BAD_METADATA = st.sampled_from(
    [
        (("authorization", "Bearer not-a-jwt"),),
        (("authorization", "Bearer "),),
        (("authorization", "Basic dXNlcjpwYXNz"),),
        (("authorization", f"Bearer {token('u' * 300)}"),),
        (("authorization", f"Bearer {token('expired', ttl=-3600)}"),),
        (("authorization", f"Bearer {token(' ', roles=['admin'])}"),),
        (("x-api-key", "co_000000000000_" + "A" * 43),),
        (("x-api-key", "garbage"),),
        (ALICE[0], ("x-api-key", "co_000000000000_" + "A" * 43)),
        # Not a credential any more: the dev mode's local admin, whatever it says.
        (("x-user-id", "u" * 300),),
    ]
)
METADATA = st.one_of(GOOD_METADATA, GOOD_METADATA, BAD_METADATA)


@dataclass
class Tally:
    """What the run saw, for the report and the assertions."""

    calls: int = 0
    codes: Counter[str] = field(default_factory=Counter)
    findings: list[str] = field(default_factory=list)


def fuzz_rpc(channel: grpc.Channel, method: Any, world: World, tally: Tally) -> None:
    """Bounded, derandomized examples of one RPC; the first bad answer becomes a finding."""
    request_class = pb.DESCRIPTOR.pool.FindMessageTypeByName(method.input_type.full_name)._concrete_class
    response_class = pb.DESCRIPTOR.pool.FindMessageTypeByName(method.output_type.full_name)._concrete_class
    path = f"/{SERVICE.full_name}/{method.name}"
    serializers = {
        "request_serializer": request_class.SerializeToString,
        "response_deserializer": response_class.FromString,
    }
    if method.server_streaming:
        # A watch of a live task streams until it ends: its first message (or its error) is the
        # answer to judge; the stream is then cancelled.
        stream = channel.unary_stream(path, **serializers)

        def call(request: Message, *, metadata: Any, timeout: float) -> None:
            # A watch resumed at the task's current seq rightly sends nothing until the task
            # changes: its deadline passing is no error; any other status is judged as usual.
            responses = stream(request, metadata=metadata, timeout=STREAM_WAIT)
            try:
                next(responses, None)
            except grpc.RpcError as err:
                if err.code() is not grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise
            finally:
                responses.cancel()
    else:
        call = channel.unary_unary(path, **serializers)

    @settings(
        max_examples=EXAMPLES_PER_RPC,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )
    @given(request=message_strategy(method.input_type, world), metadata=METADATA)
    def check(request: Message, metadata: tuple[tuple[str, str], ...]) -> None:
        tally.calls += 1
        try:
            call(request, metadata=metadata, timeout=CALL_TIMEOUT)
        except grpc.RpcError as err:
            code = err.code()
            tally.codes[f"{method.name}:{code.name}"] += 1
            trailing = dict(err.trailing_metadata() or ())
            assert code not in NOT_ALLOWED, f"{code.name}: {err.details()}"
            assert "error-code" in trailing, f"{code.name} without error-code: {err.details()}"
        else:
            tally.codes[f"{method.name}:OK"] += 1

    try:
        check()
    except Exception as exc:
        tally.findings.append(f"{method.name}: {str(exc)[:3000]}")


async def tasks_in_every_state(stub: Any) -> tuple[str, ...]:
    """Two pending, a processing, a failed and a completed task."""
    who = f"fuzz-{uuid.uuid4().hex[:10]}"
    pending = await create(stub, requested_by=who)
    other_pending = await create(stub, requested_by=who)
    processing = await create(stub, requested_by=who)
    await report(stub, processing.id, total_records=10, processed_records=1)
    failed = await create(stub, requested_by=who)
    await report(stub, failed.id, error_message="boom", is_completed=True)
    completed = await create(stub, requested_by=who)
    await report(stub, completed.id, total_records=1, processed_records=1, is_completed=True)
    for task_id, status in ((failed.id, "failed"), (completed.id, "completed")):
        await assert_eventually(lambda t=task_id: get(stub, t), lambda t, s=status: t.status == s)
    return (pending.id, other_pending.id, processing.id, failed.id, completed.id)


async def test_no_request_message_gets_internal_or_unknown(grpc_address: str, stub: Any) -> None:
    tally = Tally()
    started = time.monotonic()
    with grpc.insecure_channel(grpc_address) as channel:
        for method in SERVICE.methods:
            # Fresh tasks for each RPC: the previous one may have cancelled or deleted them.
            world = World(task_ids=await tasks_in_every_state(stub))
            await asyncio.to_thread(fuzz_rpc, channel, method, world, tally)
    elapsed = time.monotonic() - started
    print(f"gRPC fuzz: {tally.calls} calls in {elapsed:.1f}s; {sorted(tally.codes.items())}")

    assert not tally.findings, "\n\n".join(tally.findings)
    # Requests got past decoding into the service: tasks were created, listed and reported on.
    for rpc in ("CreateTask", "ListTasks", "UpdateTaskProgress", "CancelTask"):
        assert tally.codes[f"{rpc}:OK"] > 0, tally.codes
