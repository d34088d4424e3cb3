"""Domain types shared by every controller layer.

Frozen dataclasses and enums only, standard library only. Enum values equal the
wire enum values (``limiquantix.storage.v1`` / ``limiquantix.compute.v1``), so
conversion at the API edge is a plain ``int`` cast and nothing else.

Times: ``*_at`` fields are wall-clock Unix seconds (float) meant for display and
for etcd; liveness decisions use the controller's monotonic clock and never the
host's timestamps (see ``staleness``).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NewType

NodeId = NewType("NodeId", str)
PoolId = NewType("PoolId", str)


class Health(enum.IntEnum):
    """Health of one pool on one host (``StoragePoolStatusReport.HealthStatus``)."""

    UNKNOWN = 0
    HEALTHY = 1
    DEGRADED = 2
    ERROR = 3
    UNMOUNTED = 4


class PoolPhase(enum.IntEnum):
    """Aggregate phase of a pool (``StoragePoolStatus.Phase``)."""

    UNKNOWN = 0
    PENDING = 1
    READY = 2
    DEGRADED = 3
    ERROR = 4
    DELETING = 5


class NodePhase(enum.IntEnum):
    """Phase of a host (``NodeStatus.Phase``). OFFLINE is upstream's DISCONNECTED."""

    UNKNOWN = 0
    PENDING = 1
    READY = 2
    NOT_READY = 3
    MAINTENANCE = 4
    DRAINING = 5
    OFFLINE = 6


#: Operator-set phases that heartbeats never override.
OPERATOR_PHASES = frozenset({NodePhase.MAINTENANCE, NodePhase.DRAINING})


class BackendType(enum.IntEnum):
    """``StorageBackend.BackendType``. CEPH_RBD is the wire's zero value."""

    CEPH_RBD = 0
    CEPH_CEPHFS = 1
    LOCAL_LVM = 2
    LOCAL_DIR = 3
    NFS = 4
    ISCSI = 5


#: Backends whose hosts all see the same storage: capacity is taken from one
#: host, never summed. (Upstream disagreed with itself about iSCSI; a LUN is
#: one device however many hosts log in, so it is shared.)
SHARED_BACKENDS = frozenset(
    {BackendType.NFS, BackendType.CEPH_RBD, BackendType.CEPH_CEPHFS, BackendType.ISCSI}
)


@dataclass(frozen=True, slots=True)
class Capacity:
    total_bytes: int = 0
    used_bytes: int = 0
    available_bytes: int = 0
    provisioned_bytes: int = 0


@dataclass(frozen=True, slots=True)
class PoolReport:
    """What a host measured for one pool (one ``StoragePoolStatusReport``)."""

    pool_id: PoolId
    health: Health
    total_bytes: int = 0
    used_bytes: int = 0
    available_bytes: int = 0
    mount_path: str = ""
    volume_count: int = 0
    error_message: str = ""


@dataclass(frozen=True, slots=True)
class HostPoolStatus:
    """The controller's record of one host's last material report for one pool.

    Stored at ``hoststatus/<pool_id>/<node_id>``. ``changed_at`` is the
    controller's wall-clock time when the report last changed materially.
    """

    node_id: NodeId
    report: PoolReport
    changed_at: float


@dataclass(frozen=True, slots=True)
class PoolRecord:
    """A pool definition as stored at ``pools/<pool_id>``.

    ``document`` is the full ``StoragePool`` in protobuf JSON mapping (what
    ``etcdctl get`` shows); the typed fields are the parts the controller's
    rules need, kept in sync with it by the API layer.
    """

    id: PoolId
    name: str
    backend: BackendType
    assigned_node_ids: tuple[NodeId, ...]
    deleting: bool = False
    document: Mapping[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True, slots=True)
class NodeCondition:
    type: str
    status: bool
    reason: str
    message: str
    at: float


#: Conditions a node's status keeps, oldest dropped first: the recent transitions an
#: operator reads in ``GetNode``, without the record growing with every flap.
MAX_NODE_CONDITIONS = 10


def append_condition(
    conditions: tuple[NodeCondition, ...], condition: NodeCondition
) -> tuple[NodeCondition, ...]:
    """``conditions`` with ``condition`` appended, keeping the last :data:`MAX_NODE_CONDITIONS`."""
    return (*conditions, condition)[-MAX_NODE_CONDITIONS:]


@dataclass(frozen=True, slots=True)
class NodeRecord:
    """A registered host, stored at ``nodes/<node_id>`` (written by RegisterNode).

    ``document`` is the registration data as a ``Node`` in protobuf JSON mapping.
    """

    id: NodeId
    hostname: str
    management_ip: str
    labels: Mapping[str, str]
    registered_at: float
    document: Mapping[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True, slots=True)
class NodeState:
    """Liveness state of a host, stored at ``nodestatus/<node_id>``.

    Written on transitions only (READY <-> OFFLINE, operator phase changes,
    owning replica changes), never per heartbeat.
    """

    node_id: NodeId
    phase: NodePhase
    last_heartbeat_at: float
    #: Heartbeats arrive within the grace. Separate from the phase because an
    #: operator phase (MAINTENANCE, DRAINING) is kept while the node is silent,
    #: and a silent node's reports are stale whatever its phase.
    live: bool = True
    owner_replica: str = ""
    conditions: tuple[NodeCondition, ...] = ()
    #: Operator phase to return to when an operator state is cleared.
    maintenance_reason: str = ""


@dataclass(frozen=True, slots=True)
class HostRow:
    """One row of a pool's per-host table, as aggregation computed it."""

    node_id: NodeId
    report: PoolReport
    changed_at: float
    assigned: bool
    stale: bool
    #: Assigned, not yet reported, and still within its first interval: counts neither way.
    pending: bool = False


@dataclass(frozen=True, slots=True)
class PoolAggregate:
    """A pool's aggregate status, stored at ``poolstatus/<pool_id>``."""

    pool_id: PoolId
    phase: PoolPhase
    capacity: Capacity
    volume_count: int
    error_message: str
    rows: tuple[HostRow, ...]
    healthy_node_ids: tuple[NodeId, ...]
    unhealthy_node_ids: tuple[NodeId, ...]
