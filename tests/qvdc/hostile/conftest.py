"""The hostile-input acceptance suite's harness: a controller process, seeds, and one check.

- ``replica`` (module): a controller replica as a child process
  (``tests/qvdc/hostile/replica.py``) on the session etcd, with its own key prefix and
  its log in a file. A test module sets ``IDLE_TIMEOUT`` to get a small
  idle-connection timeout. A replica that died or stopped answering (a hostile
  request froze it) is restarted before the next test, so one failure does not
  take the rest of the module with it.
- ``hostile`` (function): a :class:`Harness` on that replica: a raw-bytes channel for
  the hostile calls, a separate ordinary channel for the probe a well-behaved client
  makes at the same time, a store on the replica's prefix, and seeds (two nodes, one
  pool per servable backend, assigned to the first node) that the base requests name.

:meth:`Harness.attempt` sends one request's bytes and measures everything the issue's
acceptance asks of a refusal; :meth:`Outcome.problems` says what is wrong with it:

- the status is one of :data:`REFUSALS` (never INTERNAL or UNKNOWN, never a broken
  connection, never no answer);
- the message names the field (a snake_case leaf name, as a word) and is under
  :data:`REPLY_MAX` bytes;
- the controller's log grew by at most :data:`LOG_LINES_MAX` lines, with no traceback;
- a GetPool on the other connection, started while the hostile call is in flight,
  answered within :data:`PROBE_TIMEOUT`;
- etcd holds exactly what it held: every key of the replica's prefix with its value
  and mod revision.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import http.client
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpclib.client
import grpclib.const
import grpclib.exceptions
import pytest
from grpclib.const import Status
from grpclib.encoding.base import CodecBase

from protos.limiquantix.compute import v1 as compute
from protos.limiquantix.storage import v1 as storage
from qvdc.settings import EtcdSettings
from qvdc.store.etcd import EtcdStore
from tests.fixtures.etcd import EtcdServer

ROOT = Path(__file__).resolve().parents[3]

REFUSALS = frozenset(
    {
        Status.INVALID_ARGUMENT,
        Status.NOT_FOUND,
        Status.ALREADY_EXISTS,
        Status.FAILED_PRECONDITION,
        Status.RESOURCE_EXHAUSTED,
        Status.OUT_OF_RANGE,
    }
)
"""The statuses a refused client request may get."""

REPLY_MAX = 1024
"""Bytes a refusal's message may take."""

LOG_LINES_MAX = 3
LOG_BYTES_MAX = 2048
"""What one refused request may add to the controller's log."""

PROBE_TIMEOUT = 1.0
"""Seconds a well-behaved call made meanwhile may take."""

CALL_TIMEOUT = 10.0
"""Seconds the hostile call gets before it counts as unanswered (the controller froze)."""

STREAM_QUIET = 2.0
"""Seconds a server stream that sent its headers may stay silent and count as accepted
(a watch whose filter matches nothing yet)."""

SETTLE = 0.02
"""Seconds given to a write the controller might make after answering (group commit)."""

START_TIMEOUT = 30.0

FRESH_PROBE_BELOW = 10.0
"""Idle timeouts (s) under which the probe opens a connection of its own each time."""

Cardinality = grpclib.const.Cardinality


class RawCodec(CodecBase):
    """Bytes in, bytes out: the request is sent exactly as built, the reply kept raw."""

    __content_subtype__ = "proto"

    def encode(self, message: Any, message_type: Any) -> bytes:
        return bytes(message)

    def decode(self, data: bytes, message_type: Any) -> Any:
        return bytes(data)


# ---------------------------------------------------------------- the replica process


@dataclasses.dataclass
class Replica:
    etcd: EtcdServer
    prefix: str
    idle_timeout: float
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0
    seeds: Seeds | None = None
    starts: int = 0

    @property
    def log_path(self) -> Path:
        return self.workdir / f"replica-{self.starts}.log"

    @property
    def etcd_settings(self) -> EtcdSettings:
        return EtcdSettings(endpoints=(self.etcd.endpoint,), prefix=self.prefix, timeout=5.0)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        assert self.proc is None
        self.starts += 1
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.qvdc.hostile.replica",
                    "--etcd",
                    self.etcd.endpoint,
                    "--prefix",
                    self.prefix,
                    "--idle-timeout",
                    str(self.idle_timeout),
                    "--state-dir",
                    str(self.workdir / "state"),
                ],
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            text = self.log_path.read_text(errors="replace")
            found = re.search(r"serving on [^\s:]+:(\d+)", text)
            if found:
                self.port = int(found.group(1))
                return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"the replica did not start; its log:\n{text}")
            time.sleep(0.05)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def kill(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_size(self) -> int:
        return self.log_path.stat().st_size

    def log_since(self, offset: int) -> str:
        with open(self.log_path, "rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace")

    def rss_bytes(self) -> int:
        status = Path(f"/proc/{self.pid}/status").read_text()
        found = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
        assert found, status
        return int(found.group(1)) * 1024

    def delete_prefix(self) -> None:
        """Drop the replica's keys (etcd's JSON gateway, so this stays synchronous)."""
        key = self.prefix.encode()
        range_end = key[:-1] + bytes([key[-1] + 1])
        body = {
            "key": base64.b64encode(key).decode(),
            "range_end": base64.b64encode(range_end).decode(),
        }
        conn = http.client.HTTPConnection("127.0.0.1", self.etcd.client_port, timeout=10)
        try:
            conn.request("POST", "/v3/kv/deleterange", body=json.dumps(body))
            conn.getresponse().read()
        finally:
            conn.close()


@pytest.fixture(scope="module")
def replica(
    etcd_server: EtcdServer,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[Replica]:
    idle_timeout = float(getattr(request.module, "IDLE_TIMEOUT", 120.0))
    proc = Replica(
        etcd=etcd_server,
        prefix=f"/hostile-{secrets.token_hex(6)}/",
        idle_timeout=idle_timeout,
        workdir=tmp_path_factory.mktemp("hostile"),
    )
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()
        proc.delete_prefix()


# ---------------------------------------------------------------- seeds and base requests


@dataclasses.dataclass(frozen=True)
class Seeds:
    """What the base requests name: ``node`` is assigned every pool, ``spare`` none."""

    node: str
    spare: str
    pools: dict[str, storage.StoragePool]
    """Backend config kind (``local_dir``, ``nfs``, ``ceph``, ``iscsi``) -> the pool."""

    @property
    def pool(self) -> str:
        return self.pools["local_dir"].id


def backend(kind: str, name: str) -> storage.StorageBackend:
    """A valid backend of each config kind (``local_lvm`` is valid but not servable)."""
    Type = storage.StorageBackendBackendType
    if kind == "nfs":
        return storage.StorageBackend(
            type=Type.NFS,
            nfs=storage.NfsConfig(server="nas.example.com", export_path=f"/export/{name}"),
        )
    if kind == "ceph":
        return storage.StorageBackend(
            type=Type.CEPH_RBD,
            ceph=storage.CephConfig(pool_name="rbd", monitors=["10.0.0.1:6789", "mon2"]),
        )
    if kind == "iscsi":
        return storage.StorageBackend(
            type=Type.ISCSI,
            iscsi=storage.IscsiConfig(
                portal="10.0.0.5:3260", target="iqn.2024-01.com.example:storage.lun1"
            ),
        )
    if kind == "local_lvm":
        return storage.StorageBackend(
            type=Type.LOCAL_LVM, local_lvm=storage.LocalLvmConfig(volume_group="vg0")
        )
    assert kind == "local_dir", kind
    return storage.StorageBackend(
        type=Type.LOCAL_DIR, local_dir=storage.LocalDirConfig(path=f"/srv/pools/{name}")
    )


SEED_KINDS = ("local_dir", "nfs", "ceph", "iscsi")


def register_request(hostname: str) -> compute.RegisterNodeRequest:
    return compute.RegisterNodeRequest(
        hostname=hostname,
        management_ip="10.1.0.5:9090",
        labels={"rack": "r1"},
        role=compute.NodeRole(compute=True),
        cpu_info=compute.CpuInfo(model="test", sockets=1, cores_per_socket=4, features=["avx"]),
        memory_info=compute.MemoryInfo(total_bytes=8 << 30),
        storage_devices=[compute.StorageDevice(path="/dev/sda", model="disk", size_bytes=1 << 40)],
        network_devices=[compute.NetworkDevice(name="eth0", mac_address="52:54:00:00:00:01")],
    )


def report(
    pool_id: str,
    *,
    health: int = 1,
    total: int = 100 << 30,
    used: int = 10 << 30,
    available: int | None = None,
    error: str = "",
    mount: str = "/srv/pools/x",
) -> compute.StoragePoolStatusReport:
    return compute.StoragePoolStatusReport(
        pool_id=pool_id,
        health=compute.StoragePoolStatusReportHealthStatus(health),
        total_bytes=total,
        used_bytes=used,
        available_bytes=total - used if available is None else available,
        mount_path=mount,
        error_message=error,
    )


# ---------------------------------------------------------------- one hostile call


@dataclasses.dataclass
class Outcome:
    """What one hostile call got, and what it did to the controller."""

    what: str
    status: Status | None = None
    message: str = ""
    reply: bytes | None = None
    failure: str = ""
    """Not an answer: a broken connection, no answer in time."""
    probe: str = ""
    """Empty if the parallel GetPool answered in time, else what happened to it."""
    log: str = ""
    etcd_changes: list[str] = dataclasses.field(default_factory=list)

    @property
    def succeeded(self) -> bool:
        return not self.failure and self.status is None

    def problems(
        self,
        *,
        names: tuple[str, ...] = (),
        statuses: frozenset[Status] = REFUSALS,
        may_succeed: bool = False,
    ) -> list[str]:
        found: list[str] = []
        if self.failure:
            found.append(self.failure)
        elif self.status is None:
            if not may_succeed:
                found.append(f"accepted ({len(self.reply or b'')}-byte reply)")
        else:
            if self.status not in statuses:
                found.append(f"status {self.status.name}: {self.message[:200]!r}")
            size = len(self.message.encode())
            if size > REPLY_MAX:
                found.append(f"a {size}-byte error message")
            if names and not any(names_field(name, self.message) for name in names):
                found.append(
                    f"the message does not name {' or '.join(names)}: {self.message[:200]!r}"
                )
        if self.probe:
            found.append(f"parallel GetPool: {self.probe}")
        lines = [line for line in self.log.splitlines() if line.strip()]
        if "Traceback" in self.log:
            found.append("a traceback in the log: " + _first_lines(self.log))
        if len(lines) > LOG_LINES_MAX or len(self.log) > LOG_BYTES_MAX:
            found.append(f"the log grew by {len(lines)} lines / {len(self.log)} bytes")
        if self.etcd_changes and not (self.succeeded and may_succeed):
            found.append(f"etcd changed: {', '.join(self.etcd_changes[:5])}")
        return found

    def check(self, **expect: Any) -> None:
        problems = self.problems(**expect)
        assert not problems, f"{self.what}: " + "; ".join(problems)


def names_field(name: str, message: str) -> bool:
    """``name`` occurs in ``message`` as a field name (not inside a longer word)."""
    return re.search(rf"(?<![A-Za-z0-9_]){re.escape(name)}(?![A-Za-z0-9_])", message) is not None


def _first_lines(text: str) -> str:
    return " | ".join(text.strip().splitlines()[:3])[:300]


class Harness:
    def __init__(self, *, replica: Replica, store: EtcdStore) -> None:
        self.replica = replica
        self.store = store
        self.raw = grpclib.client.Channel("127.0.0.1", replica.port, codec=RawCodec())
        self.probe_channel = grpclib.client.Channel("127.0.0.1", replica.port)
        self.pools = storage.StoragePoolServiceStub(self.probe_channel)
        self.nodes = compute.NodeServiceStub(self.probe_channel)
        self._counter = 0

    @property
    def seeds(self) -> Seeds:
        assert self.replica.seeds is not None
        return self.replica.seeds

    def unique(self, stem: str = "hx") -> str:
        self._counter += 1
        return f"{stem}-{secrets.token_hex(3)}-{self._counter}"

    def close(self) -> None:
        self.raw.close()
        self.probe_channel.close()

    async def snapshot(self) -> dict[str, tuple[int, bytes]]:
        kvs, _ = await self.store.get_prefix("", timeout=5.0)
        return {kv.key: (kv.mod_revision, kv.value) for kv in kvs}

    async def quiesce(self, *, still: float = 0.6, timeout: float = 15.0) -> None:
        """Wait until nothing in etcd changed for ``still`` seconds (the replica's own
        follow-up writes to the seeds: node status, pool aggregates)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        last = await self.snapshot()
        quiet_since = loop.time()
        while loop.time() - quiet_since < still:
            if loop.time() > deadline:
                raise AssertionError("etcd never settled under the replica")
            await asyncio.sleep(0.1)
            now = await self.snapshot()
            if now != last:
                last, quiet_since = now, loop.time()

    async def probe(self) -> str:
        """A GetPool of a seed, as a well-behaved client makes it; "" if it was answered
        within :data:`PROBE_TIMEOUT`, else what happened.

        Under a short idle timeout the probe connects afresh: a connection left idle for
        about the timeout may be closed by the server just as a call is sent on it (a
        race gRPC clients retry and grpclib does not), which is not what is measured."""
        fresh = self.replica.idle_timeout < FRESH_PROBE_BELOW
        channel = grpclib.client.Channel("127.0.0.1", self.replica.port) if fresh else None
        pools = storage.StoragePoolServiceStub(channel) if channel is not None else self.pools
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            async with asyncio.timeout(PROBE_TIMEOUT):
                await pools.get_pool(storage.GetPoolRequest(id=self.seeds.pool))
        except TimeoutError:
            return f"no answer within {PROBE_TIMEOUT} s"
        except Exception as exc:  # noqa: BLE001 - reported: what the probe got instead
            return f"{type(exc).__name__}: {str(exc)[:200]}"
        finally:
            if channel is not None:
                channel.close()
        elapsed = loop.time() - started
        return "" if elapsed < PROBE_TIMEOUT else f"took {elapsed:.2f} s"

    async def _probe(self) -> str:
        await asyncio.sleep(0.01)  # the hostile call is on its way
        return await self.probe()

    async def _call(
        self, path: str, body: bytes, cardinality: Cardinality, outcome: Outcome
    ) -> None:
        try:
            if cardinality is Cardinality.UNARY_UNARY:
                method = grpclib.client.UnaryUnaryMethod(self.raw, path, bytes, bytes)
                outcome.reply = await method(body, timeout=CALL_TIMEOUT)
            else:
                async with self.raw.request(
                    path, cardinality, bytes, bytes, timeout=CALL_TIMEOUT
                ) as stream:
                    await stream.send_message(body)
                    await stream.recv_initial_metadata()  # a refusal raises here
                    try:
                        # A watch that matches nothing stays open and silent after its
                        # headers: accepted (an empty reply), not "no answer".
                        async with asyncio.timeout(STREAM_QUIET):
                            outcome.reply = await stream.recv_message()
                    except TimeoutError:
                        outcome.reply = b""
                    if outcome.reply is None:  # ended without an answer or a status
                        await stream.recv_trailing_metadata()
                    await stream.cancel()
        except grpclib.exceptions.GRPCError as exc:
            outcome.status, outcome.message = exc.status, exc.message or ""
            if exc.details:
                outcome.message += repr(exc.details)
        except TimeoutError:
            outcome.failure = f"no answer within {CALL_TIMEOUT} s"
        except Exception as exc:  # noqa: BLE001 - reported: a broken connection, a protocol error
            outcome.failure = f"no status: {type(exc).__name__}: {str(exc)[:200]}"

    async def attempt(
        self,
        path: str,
        body: bytes,
        *,
        cardinality: Cardinality = Cardinality.UNARY_UNARY,
        what: str = "",
    ) -> Outcome:
        outcome = Outcome(what=what or f"{path.rsplit('/', 1)[-1]} ({len(body)} bytes)")
        before = await self.snapshot()
        offset = self.replica.log_size()
        _, outcome.probe = await asyncio.gather(
            self._call(path, body, cardinality, outcome), self._probe()
        )
        if outcome.failure.startswith("no answer"):
            return outcome  # frozen: nothing else to learn before it thaws
        with contextlib.suppress(Exception):  # a sync point: the replica handled the call
            await self.pools.list_pools(storage.ListPoolsRequest(page_size=1), timeout=5.0)
        await asyncio.sleep(SETTLE)
        after = await self.snapshot()
        outcome.etcd_changes = sorted(
            key for key in before.keys() | after.keys() if before.get(key) != after.get(key)
        )
        outcome.log = self.replica.log_since(offset)
        return outcome


async def _answers(replica: Replica) -> bool:
    if not replica.alive():
        return False
    channel = grpclib.client.Channel("127.0.0.1", replica.port)
    try:
        await storage.StoragePoolServiceStub(channel).list_pools(
            storage.ListPoolsRequest(page_size=1), timeout=3.0
        )
    except Exception:  # noqa: BLE001 - frozen, dead, or refusing: start a fresh one
        return False
    finally:
        channel.close()
    return True


async def _seed(harness: Harness) -> Seeds:
    node = await harness.nodes.register_node(register_request(harness.unique("seed")), timeout=5.0)
    spare = await harness.nodes.register_node(
        register_request(harness.unique("spare")), timeout=5.0
    )
    pools = {}
    for kind in SEED_KINDS:
        name = harness.unique(f"seed-{kind.replace('_', '-')}")
        pools[kind] = await harness.pools.create_pool(
            storage.CreatePoolRequest(
                name=name,
                description="seed",
                labels={"tier": "a"},
                spec=storage.StoragePoolSpec(
                    backend=backend(kind, name), assigned_node_ids=[node.id]
                ),
            ),
            timeout=5.0,
        )
    # The seed host reports every pool once: an assigned host that never reported is
    # pending, and when its window ends (an interval later, mid-module) the leader
    # rewrites the pool's aggregate on its own, which would read as a hostile call's doing.
    await harness.nodes.update_heartbeat(
        compute.UpdateHeartbeatRequest(
            node_id=node.id,
            storage_pools=[
                compute.StoragePoolStatusReport(
                    pool_id=pool.id,
                    health=compute.StoragePoolStatusReportHealthStatus.HEALTH_HEALTHY,
                    total_bytes=100 << 30,
                    used_bytes=10 << 30,
                    available_bytes=90 << 30,
                    mount_path=f"/srv/pools/{kind}",
                )
                for kind, pool in pools.items()
            ],
        ),
        timeout=5.0,
    )
    return Seeds(node=node.id, spare=spare.id, pools=pools)


async def _seeds_intact(harness: Harness, seeds: Seeds) -> bool:
    try:
        for pool in seeds.pools.values():
            got = await harness.pools.get_pool(storage.GetPoolRequest(id=pool.id), timeout=5.0)
            if got.spec.assigned_node_ids != [seeds.node]:
                return False
        for node_id in (seeds.node, seeds.spare):
            got_node = await harness.nodes.get_node(compute.GetNodeRequest(id=node_id), timeout=5.0)
            if got_node.status.phase != compute.NodeStatusPhase.READY:
                return False
    except grpclib.exceptions.GRPCError:
        return False
    return True


@pytest.fixture
async def hostile(replica: Replica) -> AsyncIterator[Harness]:
    if not await _answers(replica):
        replica.kill()
        await asyncio.to_thread(replica.start)
    store = await EtcdStore.connect(settings=replica.etcd_settings)
    harness = Harness(replica=replica, store=store)
    try:
        if replica.seeds is None or not await _seeds_intact(harness, replica.seeds):
            replica.seeds = await _seed(harness)
            await harness.quiesce()
        yield harness
    finally:
        harness.close()
        await store.close()
