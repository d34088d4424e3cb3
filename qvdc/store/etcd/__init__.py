"""EtcdStore: the controller's only door to etcd; this package is the only importer of aetcd.

Why aetcd and not etcd3-py: see the README. Every key passed in or returned is
*relative to the configured prefix*; every call is bounded by a timeout and
maps client errors to :class:`StoreError` subclasses where they happen.

The contract::

    store = await EtcdStore.connect(settings=EtcdSettings(...), page_size=10_000)
    kv = await store.get("pools/p1")                       -> KeyValue | None
    kvs, rev = await store.get_prefix("pools/")            -> (list[KeyValue] sorted by key,
                                                               header revision)
    rev = await store.put("k", b"v", lease=None)           -> revision after the put
    existed = await store.delete("k")                      -> bool
    n = await store.delete_prefix("hoststatus/p1/")        -> number deleted
    res = await store.txn(compares=[Compare.absent("poolnames/x"),
                                    Compare.mod_revision("pools/p", 7)],
                          success=[Op.put("pools/p", b"..."), Op.delete("x")], failure=[])
                                                           -> TxnResult(succeeded, revision)
    lease = await store.grant_lease(ttl=10)                -> Lease(id, ttl)
    await store.refresh_lease(lease); await store.revoke_lease(lease)
    async for ev in store.watch_prefix("hoststatus/", start_revision=rev + 1,
                                       idle_timeout=None): WatchEvent
    rev = await store.revision(); await store.compact(rev); await store.close()

- ``get_prefix`` reads in pages of at most ``page_size`` keys sized to about
  ``page_bytes``, all pinned to the first page's revision: one consistent
  snapshot of any size that never hits gRPC's message size limit. If etcd
  compacts that revision mid-listing, the listing restarts (a few times, then
  :class:`StoreUnavailable`).
- ``watch_prefix`` raises :class:`Compacted` if ``start_revision`` was
  compacted, :class:`StoreUnavailable` if the stream ends or breaks (the caller
  re-watches), and :class:`StoreTimeout` after ``idle_timeout`` s of silence
  (progress notifications are requested, so pick more than etcd's
  ``--experimental-watch-progress-notify-interval``).
- :class:`LeaseExpired`: ``refresh_lease`` on a lease etcd no longer has, or a
  put attached to one. ``compact`` of an already compacted revision is no error.

Why the shape: aetcd's ``Client`` owns the channel and its stubs; the store
calls the stubs with requests it builds itself (``messages``), not aetcd's
convenience methods, because those take no per-call deadline, cannot page a
range or pin its revision, drop a transaction's header revision, and multiplex
every watch over one shared stream whose reader task ends *silently* when the
server closes it, leaving every watcher blocked. Here each ``watch_prefix``
owns one gRPC Watch stream, so an end, reset or server cancel surfaces as an
exception, and cancelling it is synchronous.

Timeouts: each call runs under ``asyncio.timeout(t)`` *and* passes ``t`` as the
gRPC deadline (``t``: the call's ``timeout`` or ``settings.timeout``). The wait
for the next watch event is the one await without a default limit (an idle
watch is normal); gRPC keepalive pings (``connections``) still detect a dead
peer. Error mapping: ``errors``; endpoint failover: ``connections``.
"""

from qvdc.store.etcd.store import EtcdStore
from qvdc.store.records import (
    Compacted,
    Compare,
    KeyValue,
    Lease,
    LeaseExpired,
    Op,
    StoreError,
    StoreTimeout,
    StoreUnavailable,
    TxnResult,
    WatchEvent,
)

__all__ = [
    "Compacted",
    "Compare",
    "EtcdStore",
    "KeyValue",
    "Lease",
    "LeaseExpired",
    "Op",
    "StoreError",
    "StoreTimeout",
    "StoreUnavailable",
    "TxnResult",
    "WatchEvent",
]
