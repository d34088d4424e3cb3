"""Every RPC of both services (and the heartbeat stream), sent what an attacker would send.

The RPCs are those of the generated service classes' ``__mapping__``: a new RPC fails
:func:`test_every_rpc_has_a_base_request` until it has a base request here, and is
then fuzzed like the others. Every field of every request is reached from the
generated class metadata (``protowire.fields``), so a new field is fuzzed too.

Each case starts from a valid base request (naming the harness's seeds) and breaks one
thing: a string of 1 MiB, 10,000 entries in a repeated field or map, one enormous
entry, an enum value the proto does not define, a field with the wrong wire type or a
group wire type, a length that promises more bytes than follow, a varint over 64 bits,
invalid UTF-8, extreme integers and doubles, random bytes, or nothing at all.
``Outcome.problems`` (conftest) states what a refusal must look like: a client status
naming the field, a small reply, a quiet log, an unchanged etcd, and a well-behaved
call on another connection answered within a second meanwhile.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import struct
from collections.abc import Callable
from typing import Any

import betterproto2
import grpclib.client
import grpclib.exceptions
import pytest
from grpclib.const import Status
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from protos.google import protobuf as pb
from protos.limiquantix.compute import v1 as compute
from protos.limiquantix.storage import v1 as storage
from tests.qvdc.hostile import protowire
from tests.qvdc.hostile.conftest import (
    REFUSALS,
    REPLY_MAX,
    Harness,
    backend,
    names_field,
    register_request,
    report,
)

MiB = 1 << 20
MANY = 10_000

HANDLERS = {
    **compute.NodeServiceBase().__mapping__(),
    **storage.StoragePoolServiceBase().__mapping__(),
}
"""Every RPC path of both services -> grpclib's handler (request type, cardinality)."""

NODE = "/limiquantix.compute.v1.NodeService/"
POOL = "/limiquantix.storage.v1.StoragePoolService/"
LISTS = frozenset(
    {
        NODE + "ListNodes",
        POOL + "ListPools",
        NODE + "ListNodeEvents",
        NODE + "WatchNodes",
        NODE + "StreamEvents",
        POOL + "WatchPools",
    }
)
"""RPCs for which an empty (or randomly decoded) request is a valid one."""
OUT_OF_SCOPE = frozenset({NODE + "SyncNodeVMs", NODE + "NotifyVMChange"})
"""Upstream's VM RPCs: UNIMPLEMENTED whatever is sent (test_out_of_scope_rpcs_say_so)."""

MISSING_NAMES: dict[str, tuple[str, ...]] = {
    POOL + "CreatePool": ("name",),
    POOL + "GetPool": ("id",),
    POOL + "UpdatePool": ("id",),
    POOL + "DeletePool": ("id",),
    POOL + "GetPoolMetrics": ("id",),
    POOL + "AssignPoolToNode": ("pool_id", "node_id"),
    POOL + "UnassignPoolFromNode": ("pool_id", "node_id"),
    NODE + "RegisterNode": ("hostname",),
    NODE + "GetNode": ("id",),
    NODE + "EnableNode": ("id",),
    NODE + "DisableNode": ("id",),
    NODE + "UpdateHeartbeat": ("node_id",),
    NODE + "StreamHeartbeat": ("node_id",),
    NODE + "UpdateNode": ("id",),
    NODE + "DecommissionNode": ("id",),
    NODE + "DrainNode": ("id",),
    NODE + "AddTaint": ("node_id",),
    NODE + "RemoveTaint": ("node_id",),
    NODE + "UpdateLabels": ("node_id",),
    NODE + "SyncFullState": ("node_id",),
    NODE + "NotifyStorageChange": ("node_id",),
    NODE + "GetNodeMetrics": ("id",),
    NODE + "WatchNode": ("node_id",),
    NODE + "StreamNodeMetrics": ("node_id",),
    POOL + "ReconnectPool": ("id",),
    POOL + "ListPoolFiles": ("pool_id",),
}
"""The field an empty request of each non-list RPC must be refused for."""

BACKEND_KINDS = ("ceph", "local_lvm", "local_dir", "nfs", "iscsi")


def _kind_of(path: tuple[str, ...]) -> str:
    """The backend config a base request needs for a field under ``spec.backend``."""
    if "backend" in path:
        after = path[path.index("backend") + 1 :]
        if after and after[0] in BACKEND_KINDS:
            return after[0]
    return "local_dir"


def _base(h: Harness, rpc: str, kind: str) -> betterproto2.Message:
    """A valid request of ``rpc`` naming the seeds (one whose backend config is ``kind``)."""
    s = h.seeds
    name = rpc.rsplit("/", 1)[-1]
    if name == "CreatePool":
        pool_name = h.unique()
        return storage.CreatePoolRequest(
            name=pool_name,
            project_id="proj",
            description="d",
            labels={"tier": "a"},
            spec=storage.StoragePoolSpec(
                backend=backend(kind, pool_name), assigned_node_ids=[s.node]
            ),
        )
    if name == "UpdatePool":
        pool = s.pools.get(kind, s.pools["local_dir"])
        return storage.UpdatePoolRequest(
            id=pool.id,
            spec=storage.StoragePoolSpec(
                backend=backend(kind, pool.name), assigned_node_ids=[s.node]
            ),
            update_mask=pb.FieldMask(paths=["description", "labels", "spec"]),
            labels={"tier": "a"},
            description="d",
        )
    heartbeat = compute.UpdateHeartbeatRequest(
        node_id=s.node,
        cpu_usage_percent=1.0,
        memory_total_mib=1024,
        # Every seed pool, the base one first: a pool left out is 'not reported', pending
        # until a window ends mid-module and the leader rewrites its aggregate on its own.
        storage_pools=[report(s.pool)] + [report(p.id) for p in s.pools.values() if p.id != s.pool],
        state_hash="h",
    )
    builders: dict[str, Callable[[], betterproto2.Message]] = {
        "GetPool": lambda: storage.GetPoolRequest(id=s.pool),
        "ListPools": lambda: storage.ListPoolsRequest(
            project_id="proj", labels={"tier": "a"}, page_size=10
        ),
        "DeletePool": lambda: storage.DeletePoolRequest(id=s.pool),
        "GetPoolMetrics": lambda: storage.GetPoolMetricsRequest(id=s.pool),
        "AssignPoolToNode": lambda: storage.AssignPoolToNodeRequest(
            pool_id=s.pool, node_id=s.spare
        ),
        "UnassignPoolFromNode": lambda: storage.UnassignPoolFromNodeRequest(
            pool_id=s.pool, node_id=s.node
        ),
        "RegisterNode": lambda: register_request(h.unique()),
        "GetNode": lambda: compute.GetNodeRequest(id=s.node),
        "ListNodes": lambda: compute.ListNodesRequest(
            labels={"rack": "r1"}, phases=[compute.NodeStatusPhase.READY], page_size=10
        ),
        "EnableNode": lambda: compute.EnableNodeRequest(id=s.node),
        "DisableNode": lambda: compute.DisableNodeRequest(id=s.node, reason="maintenance"),
        "UpdateHeartbeat": lambda: heartbeat,
        "StreamHeartbeat": lambda: dataclasses.replace(heartbeat, sequence=1),
        # The node admin calls act on the spare (no pools assigned), so a base that is
        # accepted changes nothing the other cases rely on.
        "UpdateNode": lambda: compute.UpdateNodeRequest(
            id=s.spare,
            scheduling=compute.SchedulingConfig(
                schedulable=True,
                taints=[compute.Taint(key="k", value="v", effect=compute.TaintEffect.NO_SCHEDULE)],
            ),
            role=compute.NodeRole(compute=True, storage=True),
            update_mask=pb.FieldMask(paths=["scheduling", "role"]),
        ),
        "DecommissionNode": lambda: compute.DecommissionNodeRequest(id=s.spare),
        "DrainNode": lambda: compute.DrainNodeRequest(id=s.spare, grace_period_sec=1),
        "AddTaint": lambda: compute.AddTaintRequest(
            node_id=s.spare,
            taint=compute.Taint(key="k", value="v", effect=compute.TaintEffect.NO_SCHEDULE),
        ),
        "RemoveTaint": lambda: compute.RemoveTaintRequest(node_id=s.spare, taint_key="k"),
        "UpdateLabels": lambda: compute.UpdateLabelsRequest(
            node_id=s.spare, add_labels={"rack": "r1"}, remove_labels=["gone"]
        ),
        "SyncFullState": lambda: compute.SyncFullStateRequest(
            node_id=s.node,
            host_info=compute.HostInfo(hostname="h", management_ip="127.0.0.1", cpu_cores=1),
            storage_pools=heartbeat.storage_pools,
            state_hash="h",
        ),
        "NotifyStorageChange": lambda: compute.StorageChangeNotification(
            node_id=s.node,
            pool=report(s.pool),
            event_type=compute.StorageChangeEventType.STORAGE_CHANGE_UPDATED,
            timestamp_unix=1,
        ),
        "GetNodeMetrics": lambda: compute.GetNodeMetricsRequest(id=s.node),
        "ListNodeEvents": lambda: compute.ListNodeEventsRequest(
            node_id=s.node, types=[compute.NodeEventEventType.WARNING], limit=10
        ),
        "WatchNode": lambda: compute.WatchNodeRequest(node_id=s.node),
        "WatchNodes": lambda: compute.WatchNodesRequest(labels={"rack": "r1"}),
        "StreamNodeMetrics": lambda: compute.StreamNodeMetricsRequest(
            node_id=s.node, interval_sec=2
        ),
        "StreamEvents": lambda: compute.StreamEventsRequest(
            node_id=s.node, types=[compute.SystemEventEventType.STORAGE_POOL_CREATED]
        ),
        "ReconnectPool": lambda: storage.ReconnectPoolRequest(id=s.pool),
        "ListPoolFiles": lambda: storage.ListPoolFilesRequest(
            pool_id=s.pool, path="", page_size=10
        ),
        "WatchPools": lambda: storage.WatchPoolsRequest(pool_id=s.pool, labels={"tier": "a"}),
    }
    return builders[name]()


BASES = frozenset(MISSING_NAMES) | LISTS
"""The RPCs :func:`_base` builds requests for."""


def _names(field: protowire.Field) -> tuple[str, ...]:
    """What a refusal of ``field`` must name: its leaf; for a FieldMask's paths the mask
    too; under the unservable LOCAL_LVM the type may be what is refused first."""
    names: tuple[str, ...] = (field.leaf,)
    if field.path[-2:] == ("update_mask", "paths"):
        names += ("update_mask",)
    if _kind_of(field.path) == "local_lvm":
        names += ("type",)
    return names


def _filler(cls: type[betterproto2.Message], i: int) -> betterproto2.Message:
    """A small valid entry of a repeated message field, distinct per ``i``."""
    if cls is compute.StoragePoolStatusReport:
        return report(f"p{i}")
    if cls is compute.StorageDevice:
        return compute.StorageDevice(path=f"/dev/d{i}", size_bytes=1 << 30)
    if cls is compute.NetworkDevice:
        return compute.NetworkDevice(name=f"eth{i}")
    return cls()


def _enum_values(field: protowire.Field) -> frozenset[int]:
    return frozenset(int(v) for v in field.python_type)


@dataclasses.dataclass(frozen=True)
class Case:
    """One hostile request: how to build its bytes, and what its refusal must be."""

    rpc: str
    what: str
    build: Callable[[Harness], bytes]
    names: tuple[str, ...] = ()
    statuses: frozenset[Status] = REFUSALS
    may_succeed: bool = False

    async def run(self, h: Harness) -> list[str]:
        cardinality = HANDLERS[self.rpc].cardinality
        outcome = await h.attempt(self.rpc, self.build(h), cardinality=cardinality, what=self.what)
        if outcome.succeeded:  # let the follow-up writes of an accepted call settle
            await h.quiesce(still=0.5)
        return outcome.problems(
            names=self.names, statuses=self.statuses, may_succeed=self.may_succeed
        )


def _set(rpc: str, field: protowire.Field, value: Any, what: str, **expect: Any) -> Case:
    kind = _kind_of(field.path)
    return Case(
        rpc,
        f"{field.dotted} = {what}",
        lambda h: protowire.mutated(_base(h, rpc, kind), field.path, value),
        **expect,
    )


def _appended(
    rpc: str, field: protowire.Field, leaf_bytes: bytes, what: str, **expect: Any
) -> Case:
    """The base request followed by ``leaf_bytes`` nested at ``field``'s place."""
    kind = _kind_of(field.path)
    return Case(
        rpc,
        f"{field.dotted}: {what}",
        lambda h: bytes(_base(h, rpc, kind)) + protowire.wrap(field.numbers, leaf_bytes),
        **expect,
    )


def _request_fields(rpc: str) -> list[protowire.Field]:
    return list(protowire.fields(HANDLERS[rpc].request_type))


# ---------------------------------------------------------------- every field, once each


def size_cases(rpc: str) -> list[Case]:
    """Oversized and unknown values, one case per field and shape."""
    cases = []
    for field in _request_fields(rpc):
        invalid: dict[str, Any] = {
            "names": _names(field),
            "statuses": frozenset({Status.INVALID_ARGUMENT}),
        }
        if field.kind == "string" and not field.repeated:
            cases.append(_set(rpc, field, "x" * MiB, "1 MiB string", **invalid))
        elif field.kind == "string":
            cases.append(
                _set(rpc, field, [f"v{i}" for i in range(MANY)], "10,000 entries", **invalid)
            )
            cases.append(_set(rpc, field, ["x" * MiB], "one 1 MiB entry", **invalid))
        elif field.kind == "map":
            many = {f"k{i}": "v" for i in range(MANY)}
            cases.append(_set(rpc, field, many, "10,000 entries", **invalid))
            cases.append(_set(rpc, field, {"k": "x" * MiB}, "a 1 MiB value", **invalid))
            cases.append(_set(rpc, field, {"x" * MiB: "v"}, "a 1 MiB key", **invalid))
        elif field.kind == "message" and field.repeated:
            entries = [_filler(field.python_type, i) for i in range(MANY)]
            cases.append(_set(rpc, field, entries, "10,000 entries", **invalid))
        elif field.kind == "enum" and field.repeated:
            cases.append(_set(rpc, field, [999], "[999]", **invalid))
            cases.append(_set(rpc, field, [1] * MANY, "10,000 entries", **invalid))
        elif field.kind == "enum":
            cases.append(_set(rpc, field, 999, "999", **invalid))
            cases.append(_set(rpc, field, -1, "-1", **invalid))
    return cases


def test_every_rpc_has_a_base_request() -> None:
    assert set(HANDLERS) - OUT_OF_SCOPE == BASES, (
        "an RPC without a base request here is never fuzzed"
    )


FUZZED = sorted(set(HANDLERS) - OUT_OF_SCOPE)


@pytest.mark.parametrize("rpc", sorted(OUT_OF_SCOPE))
async def test_out_of_scope_rpcs_say_so(hostile: Harness, rpc: str) -> None:
    handler = HANDLERS[rpc]
    request = handler.request_type()
    with pytest.raises(grpclib.exceptions.GRPCError) as caught:
        async with hostile.probe_channel.request(
            rpc, handler.cardinality, handler.request_type, handler.reply_type, timeout=5.0
        ) as stream:
            await stream.send_message(request, end=True)
            await stream.recv_message()
    assert caught.value.status == Status.UNIMPLEMENTED
    assert "out of scope" in (caught.value.message or ""), caught.value.message


@pytest.mark.parametrize("rpc", FUZZED)
async def test_an_empty_request_is_refused_naming_the_missing_field(
    hostile: Harness, rpc: str
) -> None:
    if rpc in LISTS:
        case = Case(rpc, "empty request", lambda h: b"", may_succeed=True)
    else:
        case = Case(
            rpc,
            "empty request",
            lambda h: b"",
            names=MISSING_NAMES[rpc],
            statuses=frozenset({Status.INVALID_ARGUMENT, Status.NOT_FOUND}),
        )
    problems = await case.run(hostile)
    assert not problems, f"{rpc} {case.what}: " + "; ".join(problems)


@pytest.mark.parametrize("rpc", FUZZED)
async def test_every_field_is_bounded_and_every_enum_checked(hostile: Harness, rpc: str) -> None:
    """Each string, repeated field, map and enum of the request, one case each; the
    failures are listed together, so one run shows every unbounded field."""
    failures = []
    for case in size_cases(rpc):
        problems = await case.run(hostile)
        if problems:
            failures.append(f"{case.what}: " + "; ".join(problems))
            if any(p.startswith("no answer") for p in problems):
                failures.append("(stopped: the controller stopped answering)")
                break
    assert not failures, f"{rpc}: {len(failures)} field case(s) failed:\n" + "\n".join(failures)


# ---------------------------------------------------------------- hypothesis: malformed bytes


def _int_bytes(field: protowire.Field, value: int) -> bytes:
    return protowire.tag(field.numbers[-1], protowire.VARINT) + protowire.varint(value % 2**64)


@functools.cache
def recipes(rpc: str) -> st.SearchStrategy[Case]:
    """Malformed and extreme requests of ``rpc``, drawn by Hypothesis."""
    fields = _request_fields(rpc)
    strategies: list[st.SearchStrategy[Case]] = [
        st.binary(min_size=1, max_size=4096).map(
            lambda data: Case(
                rpc, f"random body {data[:16].hex()}…", lambda h: data, may_succeed=rpc in LISTS
            )
        )
    ]
    malformed = {"statuses": frozenset({Status.INVALID_ARGUMENT})}

    def wrong_wire(field: protowire.Field) -> st.SearchStrategy[Case]:
        number = field.numbers[-1]
        payloads = {
            protowire.VARINT: st.integers(0, 2**63).map(protowire.varint),
            protowire.I64: st.binary(min_size=8, max_size=8),
            protowire.I32: st.binary(min_size=4, max_size=4),
            protowire.LEN: st.binary(max_size=64).map(lambda b: protowire.varint(len(b)) + b),
            protowire.SGROUP: st.just(protowire.tag(number, protowire.EGROUP)),
            protowire.EGROUP: st.just(b""),
        }
        choices = sorted(set(payloads) - field.wire_types())
        return st.sampled_from(choices).flatmap(
            lambda wt: payloads[wt].map(
                lambda payload: _appended(
                    rpc,
                    field,
                    protowire.tag(number, wt) + payload,
                    f"wire type {wt}",
                    **malformed,
                )
            )
        )

    def over_declared(field: protowire.Field) -> st.SearchStrategy[Case]:
        return st.tuples(st.sampled_from([2**32 - 1, 2**31, 2**63, 4097]), st.integers(0, 64)).map(
            lambda dp: _appended(
                rpc,
                field,
                protowire.tag(field.numbers[-1], protowire.LEN)
                + protowire.varint(dp[0])
                + b"\x01" * dp[1],
                f"length {dp[0]} declared, {dp[1]} bytes sent",
                **malformed,
            )
        )

    def long_varint(field: protowire.Field) -> st.SearchStrategy[Case]:
        over = b"\xff" * 10 + b"\x01"  # 11 bytes: more than any 64-bit varint
        return st.just(
            _appended(
                rpc,
                field,
                protowire.tag(field.numbers[-1], protowire.VARINT) + over,
                "an 11-byte varint",
                **malformed,
            )
        )

    def bad_utf8(field: protowire.Field) -> st.SearchStrategy[Case]:
        return st.sampled_from([b"\xff", b"\xc3\x28", b"ok\xed\xa0\x80"]).map(
            lambda raw: _appended(
                rpc,
                field,
                protowire.length_delimited(field.numbers[-1], raw),
                f"invalid UTF-8 {raw!r}",
                **malformed,
            )
        )

    def unknown_enum(field: protowire.Field) -> st.SearchStrategy[Case]:
        known = _enum_values(field)
        values = st.one_of(
            st.sampled_from([999, -1, 2**31 - 1, -(2**31)]), st.integers(-(2**31), 2**31 - 1)
        ).filter(lambda v: v not in known)
        return values.map(
            lambda v: _set(
                rpc,
                field,
                [v] if field.repeated else v,
                f"unknown value {v}",
                names=_names(field),
                statuses=frozenset({Status.INVALID_ARGUMENT}),
            )
        )

    def oversized(field: protowire.Field) -> st.SearchStrategy[Case]:
        return st.integers(5000, 2 * MiB).map(
            lambda n: _set(
                rpc,
                field,
                ["y" * n] if field.repeated else "y" * n,
                f"{n}-character string",
                names=_names(field),
                statuses=frozenset({Status.INVALID_ARGUMENT}),
            )
        )

    def extreme_int(field: protowire.Field) -> st.SearchStrategy[Case]:
        edges = [0, 1, 2**31 - 1, 2**32 - 1, 2**32, 2**63 - 1, 2**64 - 1, -1, -(2**31), -(2**63)]
        return st.sampled_from(edges).map(
            lambda v: _appended(rpc, field, _int_bytes(field, v), f"integer {v}", may_succeed=True)
        )

    def extreme_double(field: protowire.Field) -> st.SearchStrategy[Case]:
        values = [float("nan"), float("inf"), float("-inf"), -1.0, 1e308, -0.0]
        return st.sampled_from(values).map(
            lambda v: _appended(
                rpc,
                field,
                protowire.tag(field.numbers[-1], protowire.I64) + struct.pack("<d", v),
                f"double {v}",
                may_succeed=True,
            )
        )

    for field in fields:
        strategies.append(wrong_wire(field))
        if field.kind in ("string", "message", "map"):
            strategies.append(over_declared(field))
        if field.kind == "string":
            strategies.append(bad_utf8(field))
            strategies.append(oversized(field))
        if field.kind == "enum":
            strategies.append(unknown_enum(field))
        if field.kind in ("int32", "int64", "uint32", "uint64"):
            strategies.append(long_varint(field))
            if not field.repeated:
                strategies.append(extreme_int(field))
        if field.kind == "double":
            strategies.append(extreme_double(field))
    return st.one_of(strategies)


@pytest.mark.parametrize("rpc", FUZZED)
@settings(
    max_examples=25,
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.generate],  # no shrinking: a frozen controller is slow to shrink
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
async def test_malformed_and_extreme_requests_are_refused_cleanly(
    hostile: Harness, rpc: str, data: st.DataObject
) -> None:
    case = data.draw(recipes(rpc), label="case")
    problems = await case.run(hostile)
    assert not problems, f"{rpc} {case.what}: " + "; ".join(problems)


# ---------------------------------------------------------------- the connection and the log


async def test_a_refusal_does_not_break_the_callers_other_calls(hostile: Harness) -> None:
    """A 64 KiB id once made a reply header larger than the client accepts: the client's
    connection broke, and with it every other call in flight on it."""
    channel = grpclib.client.Channel("127.0.0.1", hostile.replica.port)
    pools = storage.StoragePoolServiceStub(channel)
    try:
        await pools.list_pools(storage.ListPoolsRequest(page_size=1), timeout=5.0)  # connected
        others = [
            pools.get_pool(storage.GetPoolRequest(id=hostile.seeds.pool), timeout=5.0)
            for _ in range(7)
        ]
        hostile_call = pools.get_pool(storage.GetPoolRequest(id="x" * 65536), timeout=5.0)
        results = await asyncio.gather(hostile_call, *others, return_exceptions=True)
    finally:
        channel.close()
    refusal, *answers = results
    assert isinstance(refusal, grpclib.exceptions.GRPCError), refusal
    assert refusal.status == Status.INVALID_ARGUMENT, refusal
    assert len(refusal.message or "") < REPLY_MAX
    assert names_field("id", refusal.message or ""), refusal.message
    broken = [repr(a)[:200] for a in answers if not isinstance(a, storage.StoragePool)]
    assert not broken, f"{len(broken)} of 7 calls on the same connection failed: {broken[0]}"


async def test_refusals_are_logged_on_one_line_each_rate_limited(hostile: Harness) -> None:
    """200 refused requests in a burst: no traceback, nothing at ERROR, no line that
    grows with the input, and far fewer lines than requests."""
    offset = hostile.replica.log_size()
    method = grpclib.client.UnaryUnaryMethod(hostile.raw, POOL + "GetPool", bytes, bytes)
    body = bytes(storage.GetPoolRequest(id="z" * 100_000))
    results = await asyncio.gather(
        *(method(body, timeout=10.0) for _ in range(200)), return_exceptions=True
    )
    await hostile.pools.list_pools(storage.ListPoolsRequest(page_size=1), timeout=5.0)
    statuses = {getattr(r, "status", type(r).__name__) for r in results}
    assert statuses == {Status.INVALID_ARGUMENT}, statuses
    lines = [line for line in hostile.replica.log_since(offset).splitlines() if line.strip()]
    assert not [line for line in lines if "Traceback" in line or " ERROR " in line], lines[:5]
    assert all(len(line) < 512 for line in lines), max(lines, key=len)[:600]
    assert len(lines) <= 50, f"{len(lines)} log lines for 200 refusals: {lines[:3]}"


@pytest.mark.parametrize(
    "address", ["10.0.0.1:99999", "10.0.0.1:65536", "[fd00::1]:70000", "10.0.0.1:" + "9" * 5000]
)
async def test_a_management_port_out_of_range_is_refused(hostile: Harness, address: str) -> None:
    request = register_request(hostile.unique())
    request.management_ip = address
    outcome = await hostile.attempt(NODE + "RegisterNode", bytes(request), what=address[:40])
    outcome.check(names=("management_ip",), statuses=frozenset({Status.INVALID_ARGUMENT}))
