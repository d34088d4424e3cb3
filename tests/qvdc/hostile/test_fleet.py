"""One host's reports must not hold the fleet, nor put nonsense in the pool view.

- The poison pill: host A sends a report the store cannot take in one piece (a 2 MB
  error message; or a heartbeat whose rows are each within the API's limits but together
  far over etcd's request limit) and host B's material change still lands in etcd
  promptly. A's oversized row is never shown HEALTHY.
- Capacities: 2^64-1 bytes from two hosts on one pool, used above total, available above
  total. What is stored and what GetPool / GetPoolMetrics send must fit uint64 (read
  with a strict varint reader, since betterproto2 would silently truncate an over-long
  one), and an inconsistent report is never a HEALTHY row.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpclib.const
import grpclib.exceptions
import pytest

from protos.limiquantix.compute import v1 as compute
from protos.limiquantix.storage import v1 as storage
from tests.qvdc.hostile import protowire
from tests.qvdc.hostile.conftest import REFUSALS, Harness, backend, register_request, report

T = TypeVar("T")
U64 = protowire.U64_MAX
PROMPT = 2.0
"""Seconds in which host B's change must be in etcd (the commit delay is 5 ms)."""

Health = storage.PoolHostStatusHealth
HEARTBEAT = "/limiquantix.compute.v1.NodeService/UpdateHeartbeat"
GET_POOL = "/limiquantix.storage.v1.StoragePoolService/GetPool"
GET_METRICS = "/limiquantix.storage.v1.StoragePoolService/GetPoolMetrics"


async def until(
    probe: Callable[[], Awaitable[T]], check: Callable[[T], bool], *, timeout: float, what: str
) -> T:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await probe()
        if check(value):
            return value
        if loop.time() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}; last: {str(value)[:300]}")
        await asyncio.sleep(0.05)


async def node(h: Harness) -> str:
    return (await h.nodes.register_node(register_request(h.unique("host")), timeout=5.0)).id


async def pool(h: Harness, *, nodes: list[str]) -> str:
    name = h.unique("fleet")
    created = await h.pools.create_pool(
        storage.CreatePoolRequest(
            name=name,
            spec=storage.StoragePoolSpec(
                backend=backend("local_dir", name), assigned_node_ids=nodes
            ),
        ),
        timeout=5.0,
    )
    return created.id


async def beat(h: Harness, node_id: str, *reports: compute.StoragePoolStatusReport) -> str:
    """One unary heartbeat; returns "" if accepted, else the refusal's status name (a
    client status, never INTERNAL)."""
    try:
        await h.nodes.update_heartbeat(
            compute.UpdateHeartbeatRequest(node_id=node_id, storage_pools=list(reports)),
            timeout=10.0,
        )
    except grpclib.exceptions.GRPCError as exc:
        assert exc.status in REFUSALS, f"{exc.status.name}: {(exc.message or '')[:200]}"
        assert len(exc.message or "") < 1024
        return exc.status.name
    return ""


async def stored_health(h: Harness, pool_id: str, node_id: str) -> str | None:
    kv = await h.store.get(f"hoststatus/{pool_id}/{node_id}", timeout=5.0)
    return None if kv is None else str(json.loads(kv.value).get("health"))


async def row(h: Harness, pool_id: str, node_id: str) -> storage.PoolHostStatus | None:
    got = await h.pools.get_pool(storage.GetPoolRequest(id=pool_id), timeout=5.0)
    return next((r for r in got.status.host_statuses if r.node_id == node_id), None)


# ---------------------------------------------------------------- the poison pill


Poison = Callable[[str, list[str]], list[compute.StoragePoolStatusReport]]
"""Host A's reports, given the shared pool and A's other pools."""


async def b_lands_while_a_poisons(
    h: Harness, poison: Poison, *, pools: int
) -> tuple[str, str, str]:
    """A and B share pool P (A has ``pools - 1`` more); B is HEALTHY on P. A sends
    ``poison(P, others)`` and at once B reports P DEGRADED, which must land promptly.
    Returns A, P and A's refusal ("" if A's heartbeat was accepted)."""
    a, b = await node(h), await node(h)
    shared = await pool(h, nodes=[a, b])
    others = [await pool(h, nodes=[a]) for _ in range(pools - 1)]
    assert await beat(h, b, report(shared)) == ""
    await until(
        lambda: stored_health(h, shared, b), lambda v: v == "HEALTHY", timeout=5.0, what="B stored"
    )
    poisoned = asyncio.create_task(beat(h, a, *poison(shared, others)))
    await asyncio.sleep(0.05)  # A's writes are queued first
    try:
        assert await beat(h, b, report(shared, health=2)) == ""
        await until(
            lambda: stored_health(h, shared, b),
            lambda v: v == "DEGRADED",
            timeout=PROMPT,
            what="host B's DEGRADED in etcd while host A's oversized report is pending",
        )
    finally:
        refusal = await poisoned
        # Unblock a committer that would retry A's write for ever, for the next tests.
        await beat(h, a, *[report(p) for p in [shared, *others]])
    return a, shared, refusal


async def test_one_host_with_a_2_MB_error_message_does_not_hold_the_fleet(
    hostile: Harness,
) -> None:
    a, shared, refusal = await b_lands_while_a_poisons(
        hostile, lambda p, _others: [report(p, error="e" * 2_000_000)], pools=1
    )
    if not refusal:  # accepted: the row must say it could not be stored as sent
        got = await row(hostile, shared, a)
        assert got is not None and got.health != Health.HEALTHY, got
        assert len(got.error_message) < 8192


async def test_one_host_with_50_000_reports_in_one_heartbeat_does_not_hold_the_fleet(
    hostile: Harness,
) -> None:
    """2 MB of reports, within the 4 MiB message bound: refused INVALID_ARGUMENT while B's
    change lands. That the decoder stops at the first report too many instead of decoding
    all 50,000 on the event loop (0.26 s) is pinned in test_heartbeat_codec."""
    _a, _shared, refusal = await b_lands_while_a_poisons(
        hostile, lambda p, _others: [report(p)] * 50_000, pools=1
    )
    assert refusal == "INVALID_ARGUMENT"


async def test_rows_within_the_limits_but_over_etcds_request_limit_together(
    hostile: Harness,
) -> None:
    """100 rows of about 32 KiB each (4,096-character texts of 4-byte characters): each
    row is within the API's limits and the heartbeat under the 4 MiB message limit, but
    one etcd transaction of all of them is over etcd's 1.5 MiB request limit."""
    wide = "\U0001f4a5" * 4096

    def rows(shared: str, others: list[str]) -> list[compute.StoragePoolStatusReport]:
        return [report(pid, error=wide, mount="/" + wide[1:]) for pid in [shared, *others]]

    await b_lands_while_a_poisons(hostile, rows, pools=100)


# ---------------------------------------------------------------- capacities


def capacity_varints(reply: bytes, *path: int) -> dict[int, int]:
    """The varint fields of the message at ``path`` inside ``reply``, read strictly."""
    data = reply
    for number in path:
        values = protowire.scan(data).get(number, [b""])
        assert isinstance(values[-1], bytes)
        data = values[-1]
    fields = protowire.scan(data)
    return {n: int(v[-1]) for n, v in fields.items() if isinstance(v[-1], int)}


def ints_in(doc: object) -> list[int]:
    """Every integer of a JSON document, numeric strings too (protobuf JSON's uint64)."""
    if isinstance(doc, dict):
        return [i for v in doc.values() for i in ints_in(v)]
    if isinstance(doc, list):
        return [i for v in doc for i in ints_in(v)]
    if isinstance(doc, bool):
        return []
    if isinstance(doc, int):
        return [doc]
    if isinstance(doc, str) and doc.isdigit():
        return [int(doc)]
    return []


async def test_two_hosts_of_2_64_bytes_each_sum_within_uint64(hostile: Harness) -> None:
    a, b = await node(hostile), await node(hostile)
    pid = await pool(hostile, nodes=[a, b])
    for host in (a, b):
        full = report(pid, total=U64, used=U64 // 2, available=U64 - U64 // 2)
        assert await beat(hostile, host, full) == ""

    async def raw_pool() -> bytes:
        got = await hostile.attempt(GET_POOL, bytes(storage.GetPoolRequest(id=pid)))
        assert got.succeeded, got.problems(may_succeed=True)
        assert got.reply is not None
        return got.reply

    def row_healths(reply: bytes) -> list[int]:
        status = protowire.scan(reply).get(7, [b""])[-1]
        assert isinstance(status, bytes)
        rows = [r for r in protowire.scan(status).get(50, []) if isinstance(r, bytes)]
        return [int(protowire.scan(r).get(2, [0])[-1]) for r in rows]

    def both_reported(reply: bytes) -> bool:
        capacity_varints(reply, 7, 2)  # strictly, on every poll: an over-long varint fails
        healths = row_healths(reply)
        return len(healths) == 2 and all(
            h not in (Health.UNKNOWN, Health.UNMOUNTED) for h in healths
        )

    reply = await until(raw_pool, both_reported, timeout=5.0, what="both rows aggregated")
    capacity = capacity_varints(reply, 7, 2)  # StoragePool.status.capacity, strictly
    assert all(0 <= v <= U64 for v in capacity.values()), capacity
    if row_healths(reply) == [Health.HEALTHY, Health.HEALTHY]:
        assert capacity.get(1, 0) >= U64 // 2, f"the total wrapped around: {capacity}"
    metrics = await hostile.attempt(GET_METRICS, bytes(storage.GetPoolMetricsRequest(id=pid)))
    assert metrics.succeeded and metrics.reply is not None, metrics.problems(may_succeed=True)
    sums = capacity_varints(metrics.reply)
    assert all(0 <= v <= U64 for v in sums.values()), sums
    kv = await hostile.store.get(f"poolstatus/{pid}", timeout=5.0)
    assert kv is not None
    assert all(v <= U64 for v in ints_in(json.loads(kv.value))), kv.value[:500]


@pytest.mark.parametrize(
    ("total", "used", "available"),
    [
        pytest.param(100 << 30, 200 << 30, 0, id="used-over-total"),
        pytest.param(100 << 30, 10 << 30, 200 << 30, id="available-over-total"),
        pytest.param(100 << 30, U64, U64, id="used-and-available-2-64"),
    ],
)
async def test_an_inconsistent_capacity_is_never_a_healthy_row(
    hostile: Harness, total: int, used: int, available: int
) -> None:
    host = await node(hostile)
    pid = await pool(hostile, nodes=[host])
    refusal = await beat(hostile, host, report(pid, total=total, used=used, available=available))
    got = await until(
        lambda: row(hostile, pid, host),
        # Before the report lands the row is pending (UNKNOWN, waiting for the host's
        # first report) or, once that window has passed, UNMOUNTED "not reported".
        lambda r: (
            r is not None and (bool(refusal) or r.health not in (Health.UNMOUNTED, Health.UNKNOWN))
        ),
        timeout=5.0,
        what="the host's row",
    )
    assert got is not None
    assert got.health != Health.HEALTHY, got
    assert await stored_health(hostile, pid, host) != "HEALTHY"
    if not refusal:
        assert got.health == Health.ERROR and got.error_message, got
    pool_now = await hostile.pools.get_pool(storage.GetPoolRequest(id=pid), timeout=5.0)
    assert pool_now.status.healthy_node_ids == []


async def test_a_report_declaring_4_GiB_with_10_bytes_present_is_refused(
    hostile: Harness,
) -> None:
    """The fast heartbeat codec must not read it as one empty report (which recorded
    every assigned pool of the node UNMOUNTED)."""
    host = await node(hostile)
    for _ in range(2):
        await pool(hostile, nodes=[host])
    await hostile.quiesce()
    body = (
        protowire.length_delimited(1, host.encode())
        + protowire.tag(11, protowire.LEN)
        + protowire.varint(2**32 - 1)
        + b"\x0a\x02p1\x10\x01\x18\x05\x20\x01"
    )
    outcome = await hostile.attempt(HEARTBEAT, body, what="report length 2^32-1, 10 bytes")
    outcome.check(statuses=frozenset({grpclib.const.Status.INVALID_ARGUMENT}))
