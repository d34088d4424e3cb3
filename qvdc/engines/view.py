"""ClusterView: this replica's decoded, watch-fed picture of the keyspace.

Every replica lists the whole prefix once and then follows etcd's watch
(``store.watching.WatchCache``); reads on the hot path (does this node exist?
which pools is it assigned? what did it last report?) never go to etcd.

Decoding JSON on every read would dominate the heartbeat path, so decoded
objects are memoised per key and revision. The families with a row per host
and pool (``hoststatus/``, ``poolstatus/``) and the valueless ``assignments/``
are decoded as they change and the watch cache keeps no raw value for them:
one decoded copy per row, whose ids are interned (a node id or pool id is one
string object however many rows name it). What this replica writes itself is
never decoded: the writer passes the decoded object along (``expect``). Three
indexes that a key layout cannot answer by prefix are kept up to date from the
change feed:

* ``node -> {pool: its hoststatus row}``: where the host-status rows live. A
  heartbeat reads its node's rows with one look-up in a table of nodes and
  then one per report in a table of eight, instead of building a key and
  probing a table of every key per report (cache misses, at 100,000 hosts);
* ``pool -> nodes assigned``;
* the set of registered node ids (``has_node``, asked on every heartbeat).

Listeners (the aggregator, the assignment push) subscribe to raw changes.
"""

from __future__ import annotations

import logging
import sys
from collections import defaultdict
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, TypeVar

from qvdc.domain.model import (
    HostPoolStatus,
    NodeId,
    NodeRecord,
    NodeState,
    PoolAggregate,
    PoolId,
    PoolRecord,
)
from qvdc.kits.nested import discard_nested
from qvdc.store import codec, keys
from qvdc.store.etcd import EtcdStore, KeyValue
from qvdc.store.watching import WatchCache

log = logging.getLogger(__name__)

_T = TypeVar("_T")

Listener = Callable[[str, KeyValue | None, KeyValue | None], None]

_NO_ROWS: Mapping[str, HostPoolStatus | None] = MappingProxyType({})

_DECODED_AS_CHANGED = (keys.HOST_STATUS, keys.POOL_STATUS, keys.ASSIGNMENTS)
"""Key families the cache stores without values; see the module docstring."""


def _keeps_value(key: str) -> bool:
    return not key.startswith(_DECODED_AS_CHANGED)


class ClusterView:
    def __init__(self, *, store: EtcdStore) -> None:
        self.store = store
        self.cache = WatchCache(store, "", on_change=self._on_change, keep_value=_keeps_value)
        self._memo: dict[str, tuple[int, Any]] = {}
        # key -> (bytes being written by this replica, what they decode to); see expect()
        self._expected: dict[str, tuple[bytes, Any]] = {}
        self._listeners: list[Listener] = []
        # node -> {pool: row at hoststatus/<pool>/<node>}; None: the value did not decode
        self._rows_of_node: dict[str, dict[str, HostPoolStatus | None]] = {}
        # pool -> nodes with an assignments/<node>/<pool> key
        self._assigned_to_pool: defaultdict[str, set[str]] = defaultdict(set)
        self._node_ids: set[str] = set()  # every nodes/<id> key

    # --- feed -----------------------------------------------------------------

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def _on_change(self, key: str, old: KeyValue | None, new: KeyValue | None) -> None:
        self._memo.pop(key, None)
        parts = key.split("/")
        kind = parts[0]
        if len(parts) == 3 and kind == "hoststatus":
            pool_id, node_id = sys.intern(parts[1]), sys.intern(parts[2])
            if new is None:
                discard_nested(self._rows_of_node, node_id, pool_id)
                self._expected.pop(key, None)
            else:
                row = self._decode_now(new, lambda v: codec.decode_host_status(pool_id, node_id, v))
                self._rows_of_node.setdefault(node_id, {})[pool_id] = row
        elif len(parts) == 2 and kind == "poolstatus":
            if new is None:
                self._expected.pop(key, None)
            else:
                pool_id = sys.intern(parts[1])
                aggregate = self._decode_now(new, lambda v: codec.decode_pool_status(pool_id, v))
                if aggregate is not None:
                    self._memo[new.key] = (new.mod_revision, aggregate)
        elif len(parts) == 2 and kind == "nodes":
            if new is None:
                self._node_ids.discard(parts[1])
            else:
                self._node_ids.add(sys.intern(parts[1]))
        elif len(parts) == 3 and kind == "assignments":
            node_id, pool_id = sys.intern(parts[1]), sys.intern(parts[2])
            if new is None:
                discard_nested(self._assigned_to_pool, pool_id, node_id)
            else:
                self._assigned_to_pool[pool_id].add(node_id)
        for listener in self._listeners:
            try:
                listener(key, old, new)
            except Exception:
                log.exception("cluster view listener failed on %s", key)

    async def run(self) -> None:
        await self.cache.run()

    async def wait_ready(self, *, timeout: float) -> None:
        await self.cache.wait_ready(timeout=timeout)

    async def wait_for_revision(self, revision: int, *, timeout: float) -> None:
        await self.cache.wait_for_revision(revision, timeout=timeout)

    @property
    def revision(self) -> int:
        return self.cache.revision

    def _decode_now(self, kv: KeyValue, decode: Callable[[bytes], _T]) -> _T | None:
        """The decoded value of a key whose raw value the cache does not keep: what
        this replica said it wrote (``expect``), or decoded; None if it does not decode."""
        expected = self._expected.pop(kv.key, None)
        if expected is not None and expected[0] == kv.value:
            return expected[1]  # type: ignore[no-any-return]
        try:
            return decode(kv.value)
        except codec.CodecError as exc:
            log.error("ignoring undecodable value at %s: %s", kv.key, exc)
            return None

    def expect(self, key: str, value: bytes, decoded: Any) -> None:
        """This replica is writing ``value`` at ``key`` and ``decoded`` is what it decodes
        to: when those bytes come back through the watch, take ``decoded`` instead of
        decoding them again (only for ``hoststatus/`` and ``poolstatus/``)."""
        self._expected[key] = (value, decoded)

    # --- decoded reads ----------------------------------------------------------

    def _decoded(self, key: str, decode: Callable[[KeyValue], _T]) -> _T | None:
        """A key whose value the cache keeps, decoded on first read and memoised."""
        kv = self.cache.get(key)
        if kv is None:
            return None
        memo = self._memo.get(key)
        if memo is not None and memo[0] == kv.mod_revision:
            return memo[1]  # type: ignore[no-any-return]
        try:
            obj = decode(kv)
        except codec.CodecError as exc:
            log.error("ignoring undecodable value at %s: %s", key, exc)
            return None
        self._memo[kv.key] = (kv.mod_revision, obj)  # the cache's key string, not a copy
        return obj

    def mod_revision(self, key: str) -> int:
        kv = self.cache.get(key)
        return kv.mod_revision if kv is not None else 0

    def pool(self, pool_id: str) -> PoolRecord | None:
        return self._decoded(keys.pool(pool_id), lambda kv: codec.decode_pool(kv.value))

    def pool_id_by_name(self, name: str) -> PoolId | None:
        kv = self.cache.get(keys.pool_name(name))
        return PoolId(kv.value.decode()) if kv is not None else None

    def pools(self) -> list[PoolRecord]:
        out = []
        for kv in self.cache.scan(keys.POOLS):
            rec = self.pool(kv.key[len(keys.POOLS) :])
            if rec is not None:
                out.append(rec)
        return out

    def node(self, node_id: str) -> NodeRecord | None:
        return self._decoded(keys.node(node_id), lambda kv: codec.decode_node(kv.value))

    def has_node(self, node_id: str) -> bool:
        """Whether ``nodes/<node_id>`` exists (a set look-up: every heartbeat asks this)."""
        return node_id in self._node_ids

    def node_id_by_hostname(self, hostname: str) -> NodeId | None:
        kv = self.cache.get(keys.node_name(hostname))
        return NodeId(kv.value.decode()) if kv is not None else None

    def nodes(self) -> list[NodeRecord]:
        out = []
        for kv in self.cache.scan(keys.NODES):
            rec = self.node(kv.key[len(keys.NODES) :])
            if rec is not None:
                out.append(rec)
        return out

    def node_state(self, node_id: str) -> NodeState | None:
        return self._decoded(
            keys.node_status(node_id), lambda kv: codec.decode_node_state(node_id, kv.value)
        )

    def node_states(self) -> list[NodeState]:
        out = []
        for kv in self.cache.scan(keys.NODE_STATUS):
            state = self.node_state(kv.key[len(keys.NODE_STATUS) :])
            if state is not None:
                out.append(state)
        return out

    def host_status(self, pool_id: str, node_id: str) -> HostPoolStatus | None:
        """The row at ``hoststatus/<pool>/<node>`` (None: absent, or it did not decode)."""
        rows = self._rows_of_node.get(node_id)
        return rows.get(pool_id) if rows is not None else None

    def host_statuses(self, pool_id: str) -> dict[NodeId, HostPoolStatus]:
        prefix = keys.host_statuses_of(pool_id)
        out: dict[NodeId, HostPoolStatus] = {}
        for kv in self.cache.scan(prefix):
            status = self.host_status(pool_id, kv.key[len(prefix) :])
            if status is not None:
                out[status.node_id] = status
        return out

    def rows_of(self, node_id: str) -> Mapping[str, HostPoolStatus | None]:
        """The node's host-status rows by pool id (a value of None did not decode). The
        view's own table, read-only, changing as the watch does: read it, do not keep it."""
        return self._rows_of_node.get(node_id, _NO_ROWS)

    def pool_status(self, pool_id: str) -> tuple[PoolAggregate, float] | None:
        """The aggregate at ``poolstatus/<pool>`` and its time (None: absent or undecodable)."""
        memo = self._memo.get(keys.pool_status(pool_id))
        return memo[1] if memo is not None else None

    def assigned_pool_ids(self, node_id: str) -> list[PoolId]:
        prefix = keys.assignments_of(node_id)
        return [PoolId(sys.intern(kv.key[len(prefix) :])) for kv in self.cache.scan(prefix)]

    def nodes_assigned_to(self, pool_id: str) -> frozenset[str]:
        return frozenset(self._assigned_to_pool.get(pool_id, ()))
