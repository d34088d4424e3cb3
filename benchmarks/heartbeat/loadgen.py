"""Load-generator process: simulates a slice of the fleet against one gRPC server.

The harness starts a few of these with ``multiprocessing`` (spawn) and drives
each through a pipe with commands (:func:`generator_main`): register hosts,
create pools, open one ``StreamHeartbeat`` per host, run a timed phase, close.
Every command is bounded in count and time and answers with a plain dict;
while it runs it may send ``("progress", n)`` messages for the progress bar.

A simulated host is one bidi stream. Streams share a few HTTP/2 connections
(a grpclib server allows 100 concurrent streams per connection, so there are
``ceil(hosts / 100)`` of them, plus a few for unary calls), driven by the lean
client in :mod:`benchmarks.heartbeat.h2client`; set-up calls (RegisterNode,
CreatePool) use grpclib and betterproto2 like any client. A phase runs
``concurrency`` worker coroutines that take hosts round-robin: each sends the
host's next heartbeat and waits for the acknowledgement carrying its sequence
(pushes in between are read and ignored). With ``interval > 0`` a host's
heartbeats are paced (host *i* of *n* is due at ``start + (round + i/n) *
interval``); with ``interval == 0`` they go as fast as the server answers, so
the phase measures capacity with ``concurrency`` heartbeats in flight.

Messages are built from bytes (``benchmarks.heartbeat.wire``), so the
generator spends its CPU on HTTP/2, not on protobuf.
"""

from __future__ import annotations

import array
import asyncio
import collections
import contextlib
import math
import random
import resource
import time
import traceback
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import grpclib.client
import uvloop

from benchmarks.heartbeat import fleet, wire
from benchmarks.heartbeat.h2client import ClientStream, H2ClientConnection
from protos.limiquantix.compute import v1 as compute
from protos.limiquantix.storage import v1 as storage

STREAM_PATH = "/limiquantix.compute.v1.NodeService/StreamHeartbeat"
UNARY_PATH = "/limiquantix.compute.v1.NodeService/UpdateHeartbeat"
STREAMS_PER_CONNECTION = 100
"""grpclib servers advertise HTTP/2 MAX_CONCURRENT_STREAMS = 100 (h2's default)."""

UNARY_CONNECTIONS = 4
"""Connections per generator for UpdateHeartbeat calls (apart from the host streams)."""

RPC_TIMEOUT = 30.0
"""Seconds one heartbeat may wait for its acknowledgement before it counts as failed."""


@contextlib.contextmanager
def _setup_channels(
    target: tuple[str, int], count: int = 4
) -> Iterator[list[grpclib.client.Channel]]:
    """A few channels for the set-up RPCs (RegisterNode, CreatePool), closed afterwards."""
    channels = [grpclib.client.Channel(*target) for _ in range(count)]
    try:
        yield channels
    finally:
        for channel in channels:
            channel.close()


@dataclass(frozen=True, slots=True)
class HostPlan:
    """One simulated host as the harness assigns it to a generator."""

    index: int
    node_id: str
    pool_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PhaseSpec:
    """One timed phase, in ``time.monotonic()`` seconds (the clock is system-wide on Linux)."""

    workload: str  # "steady" (delta), "full" (all reports, delta=False)
    mode: str  # "stream" or "unary"
    start_at: float
    measure_from: float
    stop_at: float
    interval: float
    concurrency: int
    change_fraction: float
    track_changes: bool
    max_heartbeats: int


@dataclass(slots=True)
class _Host:
    plan: HostPlan
    prefix: bytes
    pools: list[fleet.PoolState]
    stream: ClientStream | None = None
    sequence: int = 0
    need_full: bool = True


@dataclass(slots=True)
class _Tally:
    sent: int = 0
    acked: int = 0
    acked_in_window: int = 0
    errors: int = 0
    full_syncs: int = 0
    reports_sent: int = 0
    material: int = 0
    material_in_window: int = 0
    latencies: array.array[float] = field(default_factory=lambda: array.array("d"))
    changes: list[tuple[str, str, int, int, float]] = field(default_factory=list)
    first_error: str = ""


class Generator:
    """The state of one generator process (its hosts, channels and streams)."""

    def __init__(self, *, gen_id: int, seed: int, progress: Callable[[int], None]) -> None:
        self._gen_id = gen_id
        self._rng = random.Random(seed * 1000 + gen_id)
        self._progress = progress
        self._target: tuple[str, int] | None = None
        self._conns: list[H2ClientConnection] = []
        self._unary_conns: list[H2ClientConnection] = []
        self._hosts: list[_Host] = []

    # ------------------------------------------------------------------ plumbing

    async def _bounded(
        self,
        items: list[Any],
        work: Callable[[Any], Coroutine[Any, Any, Any]],
        *,
        concurrency: int,
        deadline: float,
    ) -> list[Any]:
        """Run ``work(item)`` for every item, ``concurrency`` at a time, all within ``deadline``."""
        results: list[Any] = [None] * len(items)
        cursor = 0
        done = 0

        async def worker() -> None:
            nonlocal cursor, done
            while cursor < len(items):
                i = cursor
                cursor += 1
                results[i] = await work(items[i])
                done += 1
                if done % 200 == 0:
                    self._progress(200)

        async with asyncio.timeout(max(1.0, deadline - time.monotonic())):
            await asyncio.gather(*(worker() for _ in range(min(concurrency, len(items)) or 1)))
        self._progress(done % 200)
        return results

    # ------------------------------------------------------------------ set-up

    async def register(
        self, *, target: tuple[str, int], hosts: list[int], concurrency: int, timeout: float
    ) -> dict[str, Any]:
        """RegisterNode for each host index; returns ``{"node_ids": [...]}`` in order."""
        with _setup_channels(target) as channels:

            async def one(index: int) -> str:
                stub = compute.NodeServiceStub(channels[index % len(channels)])
                node = await stub.register_node(
                    compute.RegisterNodeRequest(
                        hostname=fleet.hostname(index),
                        management_ip=fleet.management_ip(index),
                        labels={"bench": "heartbeat"},
                        role=compute.NodeRole(compute=True),
                    ),
                    timeout=RPC_TIMEOUT,
                )
                return node.id

            ids = await self._bounded(
                hosts, one, concurrency=concurrency, deadline=time.monotonic() + timeout
            )
        return {"node_ids": ids}

    async def create_pools(
        self,
        *,
        target: tuple[str, int],
        pools: list[tuple[str, list[str]]],
        concurrency: int,
        timeout: float,
    ) -> dict[str, Any]:
        """CreatePool (NFS, assigned to the given node ids) for each ``(name, node_ids)``."""
        with _setup_channels(target) as channels:

            async def one(item: tuple[str, list[str]]) -> str:
                name, node_ids = item
                stub = storage.StoragePoolServiceStub(channels[hash(name) % len(channels)])
                pool = await stub.create_pool(
                    storage.CreatePoolRequest(
                        name=name,
                        description="heartbeat benchmark pool",
                        spec=storage.StoragePoolSpec(
                            backend=storage.StorageBackend(
                                type=storage.StorageBackendBackendType.NFS,
                                nfs=storage.NfsConfig(
                                    server="nfs.bench.example.com",
                                    export_path=f"/export/{name}",
                                    version="4.1",
                                ),
                            ),
                            assigned_node_ids=node_ids,
                        ),
                    ),
                    timeout=RPC_TIMEOUT,
                )
                return pool.id

            ids = await self._bounded(
                pools, one, concurrency=concurrency, deadline=time.monotonic() + timeout
            )
        return {"pool_ids": ids}

    async def attach(self, *, hosts: list[HostPlan]) -> dict[str, Any]:
        """Take over these simulated hosts (their report state starts fresh)."""
        self._hosts = [
            _Host(
                plan=plan,
                prefix=wire.heartbeat_prefix(node_id=plan.node_id),
                pools=[fleet.PoolState(pool_id=p, rng=self._rng) for p in plan.pool_ids],
            )
            for plan in hosts
        ]
        return {"hosts": len(self._hosts)}

    async def open(
        self, *, target: tuple[str, int], mode: str, concurrency: int, timeout: float
    ) -> dict[str, Any]:
        """Connect; in stream mode open every host's stream and send its first (full) heartbeat.

        In unary mode each host sends one full heartbeat, so both modes start
        from the same stored state. Returns counts and the time it took.
        """
        await self.close()
        self._target = target
        count = max(1, math.ceil(len(self._hosts) / STREAMS_PER_CONNECTION))
        started = time.monotonic()
        self._conns = [await H2ClientConnection.connect(*target) for _ in range(count)]
        self._unary_conns = [
            await H2ClientConnection.connect(*target) for _ in range(UNARY_CONNECTIONS)
        ]
        tally = _Tally()

        async def one(host: _Host) -> None:
            host.need_full = True
            host.sequence = 0
            await self._beat(host, "full", mode, 0.0, tally, 0.0, False)

        by_channel = sorted(self._hosts, key=lambda h: h.plan.index)
        await self._bounded(
            by_channel, one, concurrency=concurrency, deadline=time.monotonic() + timeout
        )
        return {
            "seconds": time.monotonic() - started,
            "acked": tally.acked,
            "errors": tally.errors,
            "first_error": tally.first_error,
            "channels": len(self._conns) + len(self._unary_conns),
        }

    async def close(self) -> dict[str, Any]:
        """End every stream (bounded) and close the channels."""
        streams = [h.stream for h in self._hosts if h.stream is not None]
        for host in self._hosts:
            host.stream = None

        async def end(stream: ClientStream) -> None:
            with contextlib.suppress(Exception):
                await stream.end()
                while await stream.recv() is not None:
                    pass

        if streams:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10):
                    await asyncio.gather(*(end(s) for s in streams))
        for conn in [*self._conns, *self._unary_conns]:
            conn.close()
        self._conns, self._unary_conns = [], []
        return {"closed": len(streams)}

    # ------------------------------------------------------------------ heartbeats

    def _message(
        self, host: _Host, workload: str, change_fraction: float
    ) -> tuple[bytes, list[tuple[str, int, int]], int]:
        """The host's next heartbeat: bytes, material changes, and number of reports.

        Full (``workload == "full"``, or the host owes a full sync): every report, each
        drifting or, with probability ``change_fraction``, changing materially. Delta:
        only the reports that change materially; drift is not sent, as a real node
        does not send it (``node/heartbeat.py``).
        """
        rng = self._rng
        changes: list[tuple[str, int, int]] = []
        reports: list[bytes] = []
        full = workload == "full" or host.need_full
        if full:
            for pool in host.pools:
                change = change_fraction > 0 and rng.random() < change_fraction
                values, material = pool.next_report(change=change)
                reports.append(pool.encoder.encode(values))
                if material:
                    changes.append((pool.pool_id, values.health, values.used_bytes))
        elif change_fraction > 0:
            for pool in host.pools:
                if rng.random() < change_fraction:
                    values, material = pool.next_report(change=True)
                    if material:  # always, by construction of the drift model
                        reports.append(pool.encoder.encode(values))
                        changes.append((pool.pool_id, values.health, values.used_bytes))
        host.sequence += 1
        data = wire.heartbeat(host.prefix, reports, delta=not full, sequence=host.sequence)
        return data, changes, len(reports)

    async def _open_stream(self, host: _Host) -> ClientStream:
        # Long-lived: no deadline on the call; each acknowledgement is bounded in _beat.
        conn = self._conns[host.plan.index % len(self._conns)]
        return await conn.open_stream(STREAM_PATH)

    async def _beat(
        self,
        host: _Host,
        workload: str,
        mode: str,
        change_fraction: float,
        tally: _Tally,
        measure_from: float,
        track: bool,
    ) -> None:
        """Send one heartbeat for ``host`` and wait for its acknowledgement."""
        try:
            data, changes, nreports = self._message(
                host, "full" if mode == "unary" else workload, change_fraction
            )
            sent_at = time.monotonic()
            tally.sent += 1
            if mode == "unary":
                conn = self._unary_conns[host.plan.index % len(self._unary_conns)]
                async with asyncio.timeout(RPC_TIMEOUT):
                    reply = wire.scan_response(await conn.unary(UNARY_PATH, data))
            else:
                if host.stream is None:
                    host.stream = await self._open_stream(host)
                stream = host.stream
                async with asyncio.timeout(RPC_TIMEOUT):
                    await stream.send(data)
                    while True:
                        raw = await stream.recv()
                        if raw is None:
                            raise ConnectionError("server ended the stream")
                        reply = wire.scan_response(raw)
                        if reply.sequence == host.sequence:
                            break
            done_at = time.monotonic()
            host.need_full = False
            if reply.request_full_sync:
                host.need_full = True
                tally.full_syncs += 1
            tally.acked += 1
            tally.reports_sent += nreports
            tally.material += len(changes)
            if sent_at >= measure_from:
                tally.acked_in_window += 1
                tally.material_in_window += len(changes)
                tally.latencies.append(done_at - sent_at)
            if track:
                node = host.plan.node_id
                tally.changes.extend((p, node, h, u, sent_at) for p, h, u in changes)
        except Exception as exc:  # noqa: BLE001 - any failure counts, the phase goes on
            tally.errors += 1
            if not tally.first_error:
                tally.first_error = f"{type(exc).__name__}: {exc}"
            host.stream = None
            host.need_full = True

    async def run(self, *, spec: PhaseSpec) -> dict[str, Any]:
        """Run one phase until ``spec.stop_at`` (or ``max_heartbeats``); return its tally."""
        tally = _Tally()
        hosts = self._hosts
        n = len(hosts)
        # Idle hosts in round-robin order; a worker takes the first, beats, puts it back last.
        idle = collections.deque(hosts)
        due = {id(h): spec.start_at + (i / n) * spec.interval for i, h in enumerate(hosts)}
        usage_before = resource.getrusage(resource.RUSAGE_SELF)
        delay = spec.start_at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)

        async def worker() -> None:
            while tally.sent < spec.max_heartbeats:
                now = time.monotonic()
                if now >= spec.stop_at:
                    return
                if not idle:  # more workers than idle hosts: wait for one to come back
                    await asyncio.sleep(0.001)
                    continue
                host = idle.popleft()
                if spec.interval > 0:
                    when = due[id(host)]
                    due[id(host)] = when + spec.interval
                    if when >= spec.stop_at:
                        idle.append(host)
                        return
                    if when > now:
                        await asyncio.sleep(when - now)
                await self._beat(
                    host,
                    spec.workload,
                    spec.mode,
                    spec.change_fraction,
                    tally,
                    spec.measure_from,
                    spec.track_changes,
                )
                idle.append(host)

        async def ticker() -> None:
            last = 0
            while True:
                await asyncio.sleep(0.25)
                self._progress(tally.acked - last)
                last = tally.acked

        tick = asyncio.create_task(ticker())
        try:
            async with asyncio.timeout(spec.stop_at - time.monotonic() + RPC_TIMEOUT + 5):
                await asyncio.gather(*(worker() for _ in range(min(spec.concurrency, n))))
        finally:
            tick.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await tick
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (usage.ru_utime - usage_before.ru_utime) + (usage.ru_stime - usage_before.ru_stime)
        return {
            "sent": tally.sent,
            "acked": tally.acked,
            "acked_in_window": tally.acked_in_window,
            "errors": tally.errors,
            "first_error": tally.first_error,
            "full_syncs": tally.full_syncs,
            "reports_sent": tally.reports_sent,
            "material": tally.material,
            "material_in_window": tally.material_in_window,
            "latencies": tally.latencies.tobytes(),
            "changes": tally.changes,
            "cpu_s": cpu,
        }


def generator_main(conn: Connection, gen_id: int, seed: int) -> None:
    """Entry point of a generator process: serve commands from ``conn`` until "exit"."""
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)

    def progress(n: int) -> None:
        if n:
            conn.send(("progress", n))

    gen = Generator(gen_id=gen_id, seed=seed, progress=progress)
    try:
        while True:
            try:
                command, kwargs = conn.recv()
            except EOFError:
                return
            if command == "exit":
                return
            try:
                result = loop.run_until_complete(getattr(gen, command)(**kwargs))
            except Exception:  # noqa: BLE001 - reported to the harness, which stops
                conn.send(("error", traceback.format_exc()))
            else:
                conn.send(("ok", result))
    finally:
        with contextlib.suppress(Exception):
            loop.run_until_complete(gen.close())
        loop.close()
