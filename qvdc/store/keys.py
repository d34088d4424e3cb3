"""The etcd key layout (relative to the configured prefix, default ``/quantix/``).

=================================  ==========================================  ===================
key                                value                                       writer
=================================  ==========================================  ===================
``pools/<pool_id>``                StoragePool (protobuf JSON, no status)      API
``poolnames/<name>``               pool id (uniqueness; same txn as the pool)  API
``assignments/<node_id>/<pool>``   empty (index; same txn as the pool)         API
``hoststatus/<pool_id>/<node>``    last material per-host report               heartbeat intake
``poolstatus/<pool_id>``           aggregate status                            aggregator (leader)
``nodes/<node_id>``                Node (protobuf JSON, no status)             API (register, admin)
``nodenames/<hostname>``           node id                                     API (register)
``nodestatus/<node_id>``           phase, liveness, conditions, owner          liveness monitor
``replicas/<replica_id>``          presence, on that replica's lease           each replica
``election/aggregator``            leader id, on the leader's lease            election
=================================  ==========================================  ===================

Ids and names never contain ``/`` (validated at the API), so a key splits
unambiguously.

The event history is not in this keyspace: it lives under a sibling prefix
(``/quantix-events/``), laid out in ``qvdc.engines.eventstore``, so the view never
lists or watches it.
"""

from __future__ import annotations

POOLS = "pools/"
POOL_NAMES = "poolnames/"
ASSIGNMENTS = "assignments/"
HOST_STATUS = "hoststatus/"
POOL_STATUS = "poolstatus/"
NODES = "nodes/"
NODE_NAMES = "nodenames/"
NODE_STATUS = "nodestatus/"
REPLICAS = "replicas/"
ELECTION_AGGREGATOR = "election/aggregator"


def pool(pool_id: str) -> str:
    return POOLS + pool_id


def pool_name(name: str) -> str:
    return POOL_NAMES + name


def assignment(node_id: str, pool_id: str) -> str:
    return f"{ASSIGNMENTS}{node_id}/{pool_id}"


def assignments_of(node_id: str) -> str:
    return f"{ASSIGNMENTS}{node_id}/"


def host_status(pool_id: str, node_id: str) -> str:
    return f"{HOST_STATUS}{pool_id}/{node_id}"


def host_statuses_of(pool_id: str) -> str:
    return f"{HOST_STATUS}{pool_id}/"


def pool_status(pool_id: str) -> str:
    return POOL_STATUS + pool_id


def node(node_id: str) -> str:
    return NODES + node_id


def node_name(hostname: str) -> str:
    return NODE_NAMES + hostname


def node_status(node_id: str) -> str:
    return NODE_STATUS + node_id


def replica(replica_id: str) -> str:
    return REPLICAS + replica_id


def split(key: str) -> tuple[str, ...]:
    """``"hoststatus/p1/n1"`` -> ``("hoststatus", "p1", "n1")``."""
    return tuple(key.split("/"))
