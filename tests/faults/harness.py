"""The fault rig: real etcd, real ``python -m qvdc`` replicas, real ``python -m node``
daemons and simulated hosts, all on loopback, and the observers the fault tests judge by.

- :class:`EtcdMember` is one etcd process (one member of a 1- or 3-member
  cluster), started with the controller's own flags (``embedded.etcd_command``)
  and an ``--initial-cluster`` naming every member; it can be SIGSTOPped,
  SIGKILLed and restarted on its ports and data.
- :class:`Rig` starts replicas and node daemons as ``benchmarks.heartbeat.procs.Child``
  processes and the simulated fleet through the heartbeat benchmark's load
  generator (``benchmarks.heartbeat.loadgen`` in a spawned process): hosts are
  registered and NFS pools created through the public API, then every host
  holds one ``StreamHeartbeat`` and is paced at the controller's interval.
  A phase returns the generator's tally: heartbeats sent, acknowledged, failed,
  and every material report change that was acknowledged.
- :class:`OfflineWatch` watches ``nodestatus/`` from a revision on (re-watching
  across etcd outages) and records every write that shows a node OFFLINE or not
  live: in these tests every node keeps heartbeating, so each one is a false OFFLINE.
- :func:`lost_reports` compares the last acknowledged report of every simulated
  (pool, host) with ``hoststatus/`` in etcd: what the controller acknowledged
  and did not store is lost.
- :func:`record` prints a test's one-line figure and merges it into
  ``.run/faults/results.json``, which docs/reliability.md quotes.

Timings are the shortest the settings allow for a quick suite: nodes heartbeat
every second and the grace is a few seconds, so every fault is many intervals
long without the suite taking long.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import grpclib.client

from benchmarks.heartbeat import fleet, loadgen, procs, provisioning
from benchmarks.heartbeat.generators import GeneratorPool
from benchmarks.heartbeat.progress import Progress
from protos.limiquantix.compute import v1 as compute
from protos.limiquantix.storage import v1 as storage
from qvdc.domain.model import NodePhase, NodeState
from qvdc.settings import EtcdSettings
from qvdc.store import codec, embedded, keys
from qvdc.store.etcd import EtcdStore, StoreError
from tests.fixtures import etcd as etcd_fixture
from tests.fixtures import procs as fault_procs

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / ".run" / "faults" / "results.json"
PREFIX = "/quantix/"
RPC_TIMEOUT = 5.0


# ---------------------------------------------------------------- etcd


@dataclasses.dataclass
class EtcdMember:
    """One etcd process; ``cluster`` is the ``--initial-cluster`` of every member."""

    name: str
    data_dir: Path
    client_port: int
    peer_port: int
    cluster: str
    process: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"{HOST}:{self.client_port}"

    @property
    def pid(self) -> int:
        assert self.process is not None, f"etcd {self.name} is not running"
        return self.process.pid

    def spawn(self) -> None:
        """Start the process (without waiting: members of a new cluster start together)."""
        assert self.process is None, f"etcd {self.name} already running"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        argv = embedded.etcd_command(
            binary=embedded.find_etcd(),
            data_dir=self.data_dir,
            client_port=self.client_port,
            peer_port=self.peer_port,
            settings=etcd_fixture.TEST_ETCD_SETTINGS,
            name=self.name,
        )
        argv = [a for a in argv if not a.startswith("--initial-cluster=")]
        argv.append(f"--initial-cluster={self.cluster}")
        self._log = (self.data_dir.parent / f"{self.name}.log").open("ab")
        self.process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log,
            start_new_session=True,
        )  # fmt: skip

    def wait_healthy(self, *, timeout: float = etcd_fixture.STARTUP_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not etcd_fixture._healthy(self.endpoint, timeout=1.0):
            assert self.process is not None and self.process.poll() is None, (
                f"etcd {self.name} exited"
            )
            assert time.monotonic() < deadline, f"etcd {self.name} not healthy in {timeout} s"
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: the member dies with whatever it had not written."""
        process, self.process = self.process, None
        if process is not None:
            process.kill()
            process.wait(timeout=etcd_fixture.STOP_TIMEOUT)
        if self._log is not None:
            self._log.close()
            self._log = None

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGCONT)
            process.terminate()
            try:
                process.wait(timeout=etcd_fixture.STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=etcd_fixture.STOP_TIMEOUT)
        if self._log is not None:
            self._log.close()
            self._log = None


def etcd_cluster(workdir: Path, *, members: int) -> list[EtcdMember]:
    """``members`` etcd processes on free loopback ports forming one new cluster."""
    ports = embedded.pick_free_ports(2 * members)
    names = [f"etcd{i}" for i in range(members)]
    cluster = ",".join(f"{n}=http://{HOST}:{ports[2 * i + 1]}" for i, n in enumerate(names))
    out = [
        EtcdMember(
            name=n,
            data_dir=workdir / n,
            client_port=ports[2 * i],
            peer_port=ports[2 * i + 1],
            cluster=cluster,
        )
        for i, n in enumerate(names)
    ]
    for member in out:
        member.spawn()
    for member in out:
        member.wait_healthy()
    return out


# ---------------------------------------------------------------- processes

CONTROLLER_ENV = {"QVDC_TLS_MODE": "off"}
NODE_ENV = {"QVDC_NODE_INSECURE": "true"}
"""Plain-text gRPC on loopback: the faults are about liveness, not transport security
(``qvdc`` and ``qvdc-node`` refuse to start without an explicit TLS choice)."""

_ENV_LOCK = threading.Lock()


@contextlib.contextmanager
def _environment(extra: dict[str, str]) -> Iterator[None]:
    """``extra`` in os.environ while a child is spawned (it inherits the environment),
    restored afterwards so no later child of another test sees it."""
    with _ENV_LOCK:
        saved = {k: os.environ.get(k) for k in extra}
        os.environ.update(extra)
        try:
            yield
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


@dataclasses.dataclass(frozen=True, slots=True)
class Timing:
    """The controller's interval and grace (told to nodes) for a test."""

    interval: float = 1.0
    grace: float = 5.0


@dataclasses.dataclass(slots=True)
class Fleet:
    """Simulated hosts heartbeating to one replica: their generator process and plans."""

    gens: GeneratorPool
    target: tuple[str, int]
    plans: list[loadgen.HostPlan]

    @property
    def node_ids(self) -> list[str]:
        return [p.node_id for p in self.plans]


class Rig:
    """Replicas, node daemons and the simulated fleet of one test; see the module docstring."""

    def __init__(self, *, workdir: Path, etcd: list[EtcdMember], timing: Timing) -> None:
        self.workdir = workdir
        self.etcd = etcd
        self.timing = timing
        self.replicas: dict[str, procs.Child] = {}
        self.nodes: dict[str, procs.Child] = {}
        self.fleets: dict[str, Fleet] = {}
        self.log_level = "INFO"
        self.store: EtcdStore | None = None
        self._ports: dict[str, int] = {}

    # -- controller replicas

    def start_replica(self, name: str) -> procs.Child:
        """``python -m qvdc`` against every etcd member; the same port on a restart."""
        port = self._ports.setdefault(name, procs.free_port())
        args = [
            *(a for m in self.etcd for a in ("--etcd", m.endpoint)),
            "--etcd-prefix", PREFIX,
            "--listen", f"{HOST}:{port}",
            "--heartbeat-interval", f"{self.timing.interval:g}",
            "--grace", f"{self.timing.grace:g}",
            "--state-dir", str(self.workdir / name),
            "--replica-id", name,
            "--log-level", self.log_level,
        ]  # fmt: skip
        with _environment(CONTROLLER_ENV):
            child = procs.Child(
                name=name, module="qvdc", args=args, log_path=self.workdir / f"{name}.log",
                port=port,
            )  # fmt: skip
        self.replicas[name] = child
        try:
            procs.wait_listening(HOST, port, timeout=60, proc=child.proc)
        except (RuntimeError, TimeoutError) as exc:
            raise AssertionError(f"{name} did not start: {exc}\n{child.log_tail()}") from exc
        return child

    def endpoint(self, replica: str) -> str:
        return f"{HOST}:{self.replicas[replica].port}"

    # -- node daemons

    def start_node(self, hostname: str, *, controllers: Iterable[str]) -> procs.Child:
        """``python -m node`` with the replicas in order (it fails over between them)."""
        home = self.workdir / hostname
        home.mkdir(exist_ok=True)
        args = [
            *(a for c in controllers for a in ("--controller", self.endpoint(c))),
            "--hostname", hostname,
            "--management-ip", HOST,
            "--state-dir", str(home / "state"),
            "--pools-root", str(home / "pools"),
            "--heartbeat-interval", f"{self.timing.interval:g}",
            "--libvirt-uri", "test:///default",  # libvirt's test driver: no libvirtd
            "--log-level", "INFO",
        ]  # fmt: skip
        with _environment(NODE_ENV):
            child = procs.Child(
                name=hostname, module="node", args=args, log_path=home / "node.log", port=0
            )
        self.nodes[hostname] = child
        return child

    # -- simulated hosts

    async def start_fleet(self, *, hosts: int, replica: str, pools_per_host: int = 2) -> Fleet:
        """Register ``hosts`` simulated hosts through ``replica``, create their NFS pools
        (named after the replica, ten hosts a pool), and open one heartbeat stream each
        (first heartbeat full). One fleet per replica."""
        assert replica not in self.fleets, f"{replica} has a fleet already"
        gens = GeneratorPool(1, seed=16 + len(self.fleets))
        f = Fleet(gens=gens, target=(HOST, self.replicas[replica].port), plans=[])
        self.fleets[replica] = f
        offset = 100_000 * len(self.fleets)  # hostnames distinct across fleets
        [answer] = await gens.call(
            "register",
            [{"target": f.target, "hosts": [offset + i for i in range(hosts)],
              "concurrency": 24, "timeout": 300.0}],
            timeout=300,
        )  # fmt: skip
        node_ids: list[str] = answer["node_ids"]
        shape = fleet.FleetShape(hosts=hosts, pools_per_host=pools_per_host, hosts_per_pool=10)
        pools = [
            (f"{replica}-c{c}-p{j}", [node_ids[h] for h in shape.hosts_of(c)])
            for c in range(shape.clusters)
            for j in range(pools_per_host)
        ]
        [answer] = await gens.call(
            "create_pools",
            [{"target": f.target, "pools": pools, "concurrency": 16, "timeout": 300.0}],
            timeout=300,
        )
        pool_ids: list[str] = answer["pool_ids"]
        f.plans = [
            loadgen.HostPlan(
                index=h,
                node_id=node_ids[h],
                pool_ids=tuple(
                    pool_ids[shape.cluster_of(h) * pools_per_host + j]
                    for j in range(pools_per_host)
                ),
            )
            for h in range(hosts)
        ]
        await provisioning.attach_and_open(
            gens, Progress(quiet=True), plans=f.plans, target=f.target, label=""
        )
        return f

    async def open_fleet(self, *, replica: str) -> None:
        """Reconnect every simulated host of ``replica``'s fleet (after a restart), one
        full heartbeat each, as a node does after a lost stream. The hosts keep their
        report state (``attach`` would start them afresh), so what they re-send is what
        they last reported, drifted by less than the material threshold."""
        f = self.fleets[replica]
        f.target = (HOST, self.replicas[replica].port)
        answers = await f.gens.call(
            "open",
            [{"target": f.target, "mode": "stream", "concurrency": 64, "timeout": 300.0}],
            timeout=300,
        )
        errors = sum(a["errors"] for a in answers)
        assert errors == 0, f"{errors} hosts failed to reconnect: {answers[0]['first_error']}"

    async def run_fleet(self, *, replica: str, seconds: float, change_fraction: float) -> Tally:
        """Heartbeat every simulated host of ``replica`` each interval for ``seconds``."""
        f = self.fleets[replica]
        now = time.monotonic()
        spec = loadgen.PhaseSpec(
            workload="steady",
            mode="stream",
            start_at=now,
            measure_from=now,
            stop_at=now + seconds,
            interval=self.timing.interval,
            concurrency=min(256, max(1, len(f.plans))),
            change_fraction=change_fraction,
            track_changes=change_fraction > 0,
            max_heartbeats=10**9,
        )
        [answer] = await f.gens.call(
            "run", [{"spec": spec}], timeout=seconds + loadgen.RPC_TIMEOUT + 30
        )
        return Tally.of(answer)

    # -- etcd, as a client of the test

    async def connect_store(self) -> EtcdStore:
        self.store = await EtcdStore.connect(
            settings=EtcdSettings(
                endpoints=tuple(m.endpoint for m in self.etcd), prefix=PREFIX, timeout=5.0
            )
        )
        return self.store

    # -- teardown

    async def close(self) -> None:
        for f in self.fleets.values():
            with contextlib.suppress(Exception):
                await f.gens.call("close", [{}], timeout=30)
            await asyncio.to_thread(f.gens.stop)
        if self.store is not None:
            await self.store.close()
        children = [*self.nodes.values(), *self.replicas.values()]
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGCONT)
        await asyncio.gather(*(asyncio.to_thread(c.stop) for c in children))
        for member in self.etcd:
            await asyncio.to_thread(member.stop)


@contextlib.asynccontextmanager
async def rig(
    workdir: Path, *, timing: Timing = Timing(), etcd_members: int = 1
) -> AsyncIterator[Rig]:
    members = await asyncio.to_thread(etcd_cluster, workdir, members=etcd_members)
    r = Rig(workdir=workdir, etcd=members, timing=timing)
    try:
        await r.connect_store()
        yield r
    finally:
        await r.close()


def sigstop(child: procs.Child | EtcdMember) -> None:
    fault_procs.sigstop(child.pid)


def sigcont(child: procs.Child | EtcdMember) -> None:
    os.kill(child.pid, signal.SIGCONT)


def sigkill(child: procs.Child) -> None:
    child.proc.kill()
    child.proc.wait(timeout=10)


# ---------------------------------------------------------------- observers


@dataclasses.dataclass(frozen=True, slots=True)
class Tally:
    """What the simulated hosts saw in one phase."""

    sent: int
    acked: int
    errors: int
    first_error: str
    max_ack_s: float
    changes: list[tuple[str, str, int, int, float]]

    @classmethod
    def of(cls, answer: dict[str, Any]) -> Tally:
        latencies = array.array("d")
        latencies.frombytes(answer["latencies"])
        return cls(
            sent=answer["sent"],
            acked=answer["acked"],
            errors=answer["errors"],
            first_error=answer["first_error"],
            max_ack_s=max(latencies, default=0.0),
            changes=[(p, n, h, u, t) for p, n, h, u, t in answer["changes"]],
        )


class OfflineWatch:
    """Every ``nodestatus/`` write showing a node OFFLINE or not live, from now on."""

    def __init__(self, store: EtcdStore) -> None:
        self._store = store
        self.offline: list[tuple[str, str]] = []  # (node id, owner replica)
        self.writes = 0
        self._task: asyncio.Task[None] | None = None
        self._started = asyncio.Event()

    async def __aenter__(self) -> OfflineWatch:
        revision = await self._store.revision()
        self._task = asyncio.create_task(self._run(revision + 1), name="offline-watch")
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    def offline_nodes(self, node_ids: Iterable[str]) -> list[tuple[str, str]]:
        wanted = set(node_ids)
        return [o for o in self.offline if o[0] in wanted]

    async def _run(self, start: int) -> None:
        while True:
            try:
                events = self._store.watch_prefix(keys.NODE_STATUS, start_revision=start)
                async with contextlib.aclosing(events):
                    async for event in events:
                        start = event.mod_revision + 1
                        if event.kind != "put":
                            continue
                        self.writes += 1
                        node_id = event.key[len(keys.NODE_STATUS) :]
                        state = codec.decode_node_state(node_id, event.value)
                        if state.phase == NodePhase.OFFLINE or not state.live:
                            self.offline.append((node_id, state.owner_replica))
            except StoreError:
                await asyncio.sleep(0.2)  # etcd away: watch again from the next revision


async def lost_reports(store: EtcdStore, changes: list[tuple[str, str, int, int, float]]) -> int:
    """Acknowledged material reports whose last value is not in ``hoststatus/``.

    Stored matches acknowledged when the health is the same and the used bytes are
    within the material threshold (``fleet.THRESHOLD``): a host re-sending its full
    report after a reconnect sends the value drifted, not materially changed, and the
    controller stores that one. A lost change is a health flip or a jump of twice the
    threshold, so it still counts.
    """
    last: dict[tuple[str, str], tuple[int, int]] = {}
    for pool_id, node_id, health, used, _sent_at in changes:
        last[(pool_id, node_id)] = (health, used)
    kvs, _ = await store.get_prefix(keys.HOST_STATUS)
    stored: dict[tuple[str, str], tuple[int, int]] = {}
    for kv in kvs:
        _, pool_id, node_id = keys.split(kv.key)
        status = codec.decode_host_status(pool_id, node_id, kv.value)
        stored[(pool_id, node_id)] = (int(status.report.health), status.report.used_bytes)
    lost = 0
    for key, (health, used) in last.items():
        found = stored.get(key)
        if found is None or found[0] != health or abs(found[1] - used) >= fleet.THRESHOLD:
            lost += 1
    return lost


async def until(
    probe: Any, *, timeout: float, what: str, interval: float = 0.1
) -> tuple[Any, float]:
    """Await ``probe()`` until it returns a truthy value; (value, seconds taken)."""
    started = time.monotonic()
    last: Any = None
    while time.monotonic() - started < timeout:
        with contextlib.suppress(
            StoreError,
            grpclib.exceptions.GRPCError,
            grpclib.exceptions.StreamTerminatedError,
            OSError,
        ):
            last = await probe()
            if last:
                return last, time.monotonic() - started
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}; last: {last!r}")


# ---------------------------------------------------------------- the API, as an operator


class Api:
    """A grpclib channel to one replica with the calls the tests need."""

    def __init__(self, endpoint: str) -> None:
        host, _, port = endpoint.rpartition(":")
        self.channel = grpclib.client.Channel(host, int(port))
        self.nodes = compute.NodeServiceStub(self.channel)
        self.pools = storage.StoragePoolServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    async def node_ids(self) -> dict[str, str]:
        listed = await self.nodes.list_nodes(compute.ListNodesRequest(), timeout=RPC_TIMEOUT)
        return {n.hostname: n.id for n in listed.nodes}

    async def local_pool(self, name: str, node_ids: list[str]) -> storage.StoragePool:
        return await self.pools.create_pool(
            storage.CreatePoolRequest(
                name=name,
                spec=storage.StoragePoolSpec(
                    backend=storage.StorageBackend(
                        type=storage.StorageBackendBackendType.LOCAL_DIR,
                        local_dir=storage.LocalDirConfig(),
                    ),
                    assigned_node_ids=node_ids,
                ),
            ),
            timeout=RPC_TIMEOUT,
        )

    async def pool(self, pool_id: str) -> storage.StoragePool:
        return await self.pools.get_pool(storage.GetPoolRequest(id=pool_id), timeout=RPC_TIMEOUT)

    async def all_pools(self) -> list[storage.StoragePool]:
        listed = await self.pools.list_pools(storage.ListPoolsRequest(), timeout=RPC_TIMEOUT)
        return list(listed.pools)


# ---------------------------------------------------------------- results


def record(test: str, **figures: Any) -> None:
    """Print ``test``'s one-line figure and merge it into ``.run/faults/results.json``."""
    line = " ".join(
        f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items()
    )
    print(f"\nFAULT {test}: {line}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    try:
        data = json.loads(RESULTS.read_text())
    except (OSError, ValueError):
        data = {}
    data[test] = {"measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **figures}
    tmp = RESULTS.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(RESULTS)


# ---------------------------------------------------------------- the usual set-up


@dataclasses.dataclass(frozen=True, slots=True)
class Setup:
    """What :func:`setup` started: node ids by hostname and the local pool they share."""

    node_ids: dict[str, str]
    pool_id: str


async def setup(
    r: Rig,
    *,
    replicas: list[str],
    nodes: int,
    fleets: dict[str, int],
    pools_per_host: int = 2,
) -> Setup:
    """Start ``replicas``, ``nodes`` node daemons (each told every replica, in order),
    a local pool on those daemons (READY with every row HEALTHY), and for each
    ``replica: hosts`` in ``fleets`` that many simulated hosts registered through and
    heartbeating to that replica."""
    for name in replicas:
        await asyncio.to_thread(r.start_replica, name)
    hostnames = [f"node-{i}" for i in range(nodes)]
    for hostname in hostnames:
        r.start_node(hostname, controllers=replicas)
    api = Api(r.endpoint(replicas[-1]))
    try:
        ids, _ = await until(
            lambda: _registered(api, hostnames), timeout=60, what="node daemons registered"
        )
        pool = await api.local_pool("faults-local", list(ids.values()))
        await until(
            lambda: _pool_ready(api, pool.id, rows=nodes), timeout=60, what="local pool READY"
        )
    except AssertionError as exc:
        tails = "\n".join(
            f"--- {c.name}:\n{c.log_tail(5)}" for c in [*r.replicas.values(), *r.nodes.values()]
        )
        raise AssertionError(f"{exc}\n{tails}") from None
    finally:
        api.close()
    for replica, hosts in fleets.items():
        await r.start_fleet(hosts=hosts, replica=replica, pools_per_host=pools_per_host)
    return Setup(node_ids=ids, pool_id=pool.id)


async def _registered(api: Api, hostnames: list[str]) -> dict[str, str] | None:
    ids = await api.node_ids()
    return {h: ids[h] for h in hostnames} if set(hostnames) <= set(ids) else None


async def _pool_ready(api: Api, pool_id: str, *, rows: int) -> storage.StoragePool | None:
    pool = await api.pool(pool_id)
    healthy = [
        h
        for h in pool.status.host_statuses
        if h.health == storage.PoolHostStatusHealth.HEALTHY and not h.stale
    ]
    ready = pool.status.phase == storage.StoragePoolStatusPhase.READY and len(healthy) == rows
    return pool if ready else None


async def pool_ready(api: Api, pool_id: str, *, rows: int) -> storage.StoragePool | None:
    """The pool if it is READY with ``rows`` fresh HEALTHY host rows, else None."""
    return await _pool_ready(api, pool_id, rows=rows)


async def owners(store: EtcdStore, node_ids: Iterable[str]) -> dict[str, str]:
    """The owning replica of each node, from ``nodestatus/`` ('' if none yet)."""
    out = {}
    for node_id in node_ids:
        kv = await store.get(keys.node_status(node_id))
        out[node_id] = (
            "" if kv is None else codec.decode_node_state(node_id, kv.value).owner_replica
        )
    return out


async def node_state(store: EtcdStore, node_id: str) -> NodeState | None:
    """The node's ``nodestatus/`` record, if any."""
    kv = await store.get(keys.node_status(node_id))
    return None if kv is None else codec.decode_node_state(node_id, kv.value)
