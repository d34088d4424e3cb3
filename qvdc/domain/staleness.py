"""Node liveness on the controller's own monotonic clock (Kubernetes node-lifecycle style).

The replica holding a node's heartbeat stream records, for every *new* heartbeat it sees,
its own ``time.monotonic()`` (``observe_heartbeat``). It never compares the host's reported
timestamps with its clock: host clocks drift and jump, and a liveness rule that depends on
them flaps. A periodic pass (``classify``) then decides which nodes went silent.

Rules (docs/architecture.md, "Liveness and staleness"):

* A node is offline when ``now - last_seen > grace``, **strictly greater**: a node whose
  heartbeat is exactly ``grace`` old is still live (upstream's 90 s rule is also strict).
* **Mass outage.** When more than one node was live and at least ``fraction`` of them
  (default 1.0 = all) go silent in the same pass, the likeliest fault is the controller's
  own connectivity (its network, or etcd), not the fleet. ``classify`` then marks nobody
  offline and reports ``mass_outage=True``; the caller keeps phases frozen and, when
  heartbeats flow again, gives everybody a fresh grace with ``reset_after_outage`` (the
  Kubernetes "full disruption" mode). Nodes lost within the grace before count among the
  live ones: a fleet going silent in waves (some marked, then the rest) is failing node
  by node, and its last wave is judged, not frozen. A *single*-node fleet that goes silent is marked
  offline: one node going silent is no evidence that the controller is at fault, and
  otherwise a one-host install could never show its host as down.
* ``reset_after_outage`` is also what a replica applies to nodes it takes over from a dead
  replica: it has not seen their heartbeats, so each gets a full grace from takeover.
* Operator phases (MAINTENANCE, DRAINING) never change because of heartbeats or silence
  (``next_node_phase``); upstream's Postgres heartbeat forced READY over them
  (defect 13 in docs/upstream.md).

Nothing here reads a clock: ``now`` is always a parameter, so tests use plain numbers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, replace

from qvdc.domain.model import OPERATOR_PHASES, NodeId, NodePhase

#: Default share of live nodes that must go silent in one pass to count as a mass outage.
DEFAULT_MASS_OUTAGE_FRACTION = 1.0

#: Phases that a missed grace turns into OFFLINE.
_GO_OFFLINE_FROM = frozenset(
    {NodePhase.READY, NodePhase.PENDING, NodePhase.UNKNOWN, NodePhase.NOT_READY}
)

#: Phases that a heartbeat turns into READY.
_GO_READY_FROM = frozenset(
    {NodePhase.OFFLINE, NodePhase.PENDING, NodePhase.UNKNOWN, NodePhase.NOT_READY}
)


@dataclass(frozen=True, slots=True)
class Liveness:
    """What the controller knows about one node's heartbeats.

    ``last_seen`` is the controller's monotonic time of the last heartbeat observed (or of
    the last grace reset); ``live`` is False once a pass classified the node offline.
    """

    node_id: NodeId
    last_seen: float
    live: bool


@dataclass(frozen=True, slots=True)
class Classification:
    """Result of one liveness pass.

    ``newly_offline``: live nodes whose grace ran out this pass, to be marked OFFLINE (sorted;
    always empty when ``mass_outage``). ``still_live``: live nodes that stay live (sorted; in
    a mass outage, every live node). ``mass_outage``: the pass found a mass outage and
    marked nobody.
    """

    newly_offline: tuple[NodeId, ...]
    still_live: tuple[NodeId, ...]
    mass_outage: bool


def observe_heartbeat(*, record: Liveness | None, node_id: NodeId, now: float) -> Liveness:
    """Return the node's liveness after a heartbeat seen at controller time ``now``.

    Returns ``Liveness(node_id, last_seen=now, live=True)``: a heartbeat is proof of life and
    restarts the grace, whether the node was unknown, live or offline.

    Cases:

    * no record                          -> live, ``last_seen=now``;
    * a record seen at or before ``now`` -> live, ``last_seen=now``;
    * a record seen after ``now`` (an observation stamped before a grace reset was applied)
      -> live, ``last_seen`` kept: ``last_seen`` never moves backwards.
    """
    last_seen = now if record is None else max(now, record.last_seen)
    return Liveness(node_id=node_id, last_seen=last_seen, live=True)


def is_expired(*, last_seen: float, now: float, grace: float) -> bool:
    """Return True when a heartbeat seen at ``last_seen`` is more than ``grace`` old at ``now``.

    Strictly greater: exactly ``grace`` old is still live.
    """
    return now - last_seen > grace


def detect_mass_outage(
    *, live_before: int, going_offline: int, fraction: float = DEFAULT_MASS_OUTAGE_FRACTION
) -> bool:
    """Return True when a pass looks like the controller's outage rather than the nodes'.

    True when more than one node was live (``live_before > 1``), at least one is going
    offline, and the ones going offline are at least ``fraction`` of the live ones
    (``fraction`` in (0, 1]; 1.0 means all of them). A one-node fleet is never a mass
    outage: its silence is no evidence against the controller.
    """
    if live_before <= 1 or going_offline <= 0:
        return False
    # Compare in whole nodes, with slack for float error: 0.28 * 25 is 7.000000000000001.
    needed = max(1, math.ceil(fraction * live_before - 1e-9))
    return going_offline >= needed


def classify(
    *,
    records: Mapping[NodeId, Liveness],
    now: float,
    grace: float,
    mass_outage_fraction: float = DEFAULT_MASS_OUTAGE_FRACTION,
    graces: Mapping[NodeId, float] | None = None,
    spread: float = 0.0,
) -> Classification:
    """Return which live nodes went offline at ``now`` (see :class:`Classification`).

    ``graces`` holds the nodes whose grace is not ``grace`` (see :func:`node_grace`).
    ``spread`` is how far apart the last heartbeats of nodes that stopped at the same
    moment can be (one heartbeat interval): for the mass-outage rule a live node silent
    for longer than its grace minus ``spread`` is going silent with the expired ones, so a
    fleet that stopped at once is one outage even when its expiries straddle two passes.

    Cases, per record:

    * not live                                   -> ignored (already offline; only a
      heartbeat brings it back);
    * live and ``now - last_seen > grace``       -> going offline;
    * live otherwise                             -> still live.

    Then, for the pass as a whole, counting as "live before" the live nodes plus the
    nodes *recently lost* (offline, last seen at most two graces ago: they went silent
    within a grace before this pass's did):

    * :func:`detect_mass_outage` says so         -> nobody goes offline, every live node is
      reported still live, ``mass_outage=True``;
    * otherwise                                  -> the going-offline nodes are
      ``newly_offline``.
    """
    own = graces or {}
    live = sorted(node_id for node_id, record in records.items() if record.live)
    recently_lost = sum(
        1
        for node_id, record in records.items()
        if not record.live and now - record.last_seen <= 2 * own.get(node_id, grace)
    )
    expired = [
        node_id
        for node_id in live
        if is_expired(last_seen=records[node_id].last_seen, now=now, grace=own.get(node_id, grace))
    ]
    silent_together = (
        sum(
            1
            for node_id in live
            if now - records[node_id].last_seen > own.get(node_id, grace) - spread
        )
        if expired
        else 0
    )
    if detect_mass_outage(
        live_before=len(live) + recently_lost,
        going_offline=silent_together,
        fraction=mass_outage_fraction,
    ):
        return Classification(newly_offline=(), still_live=tuple(live), mass_outage=True)
    expired_set = frozenset(expired)
    return Classification(
        newly_offline=tuple(expired),
        still_live=tuple(node_id for node_id in live if node_id not in expired_set),
        mass_outage=False,
    )


def reset_after_outage(*, records: Mapping[NodeId, Liveness], now: float) -> dict[NodeId, Liveness]:
    """Return a copy of ``records`` with every ``last_seen`` set to ``now`` (``live`` kept).

    Gives every node a full grace from ``now``: after a mass outage ends, or when this
    replica takes nodes over from another. Offline nodes stay offline until they heartbeat.
    """
    return {node_id: replace(record, last_seen=now) for node_id, record in records.items()}


def next_node_phase(*, current: NodePhase, live: bool) -> NodePhase:
    """Return the node phase after a liveness observation (the transition table).

    Cases:

    * MAINTENANCE, DRAINING (operator phases), live or not -> unchanged;
    * READY, PENDING, UNKNOWN, NOT_READY and not live      -> OFFLINE;
    * OFFLINE, PENDING, UNKNOWN, NOT_READY and live        -> READY;
    * otherwise (READY and live, OFFLINE and not live)     -> unchanged.
    """
    if current in OPERATOR_PHASES:
        return current
    if not live and current in _GO_OFFLINE_FROM:
        return NodePhase.OFFLINE
    if live and current in _GO_READY_FROM:
        return NodePhase.READY
    return current


def judge_of(*, owner: str, live_replicas: AbstractSet[str], leader: str | None) -> str | None:
    """Return the replica that judges a node's liveness, or None when none can now.

    ``owner`` is the replica recorded in the node's ``nodestatus`` (the one holding its
    heartbeat stream), ``live_replicas`` the replicas whose presence keys exist (each on
    its lease), ``leader`` the replica leading, if any. Cases:

    * the owner is live                          -> the owner (whatever the leader is);
    * the owner is gone (or none is recorded)    -> the leader, if it is live;
    * otherwise                                  -> None (nobody marks the node now; the
      next leader adopts it with a fresh grace).

    A replica that merely stopped hearing from a node is never its judge unless it is
    the owner: silence seen by anyone else is no evidence, since the node's heartbeats
    may be going to its owner.
    """
    if owner and owner in live_replicas:
        return owner
    if leader is not None and leader in live_replicas:
        return leader
    return None


def judges(*, owner: str, live_replicas: AbstractSet[str], me: str, leader: str | None) -> bool:
    """Return True when replica ``me`` is the one to judge the node (see :func:`judge_of`).

    ``me`` counts only if it is in ``live_replicas``: a replica whose presence key is gone
    (its lease expired during a pause) judges nothing until it is present again.
    """
    return judge_of(owner=owner, live_replicas=live_replicas, leader=leader) == me


def told_interval_secs(*, requested: float, interval: float) -> int:
    """Return the heartbeat interval, in whole seconds, the controller tells a node.

    ``requested`` is the interval the node is configured with (0: it did not say, as an
    upstream node), ``interval`` the controller's. The shorter wins: a node may ask to be
    heard (and judged) more often, never less often than the controller asks of every
    node. The wire carries whole seconds (``heartbeat_interval_secs``), at least 1.
    """
    chosen = requested if 0 < requested < interval else interval
    return max(1, round(chosen))


def node_grace(*, requested: float, interval: float, grace: float, explicit: bool) -> float:
    """Return the grace a node is judged on.

    ``grace`` is the controller's (``monitor.grace``, or 3 x ``interval`` + 10 s), and
    ``explicit`` whether the operator set it. Cases:

    * the grace was set explicitly             -> ``grace``, for every node;
    * the node's own interval does not win     -> ``grace`` (the node heartbeats at the
      controller's interval; see :func:`told_interval_secs`);
    * it wins (``0 < requested < interval``)   -> 3 x the interval the node was told + 10 s
      (the Kubernetes rule on the node's own interval), never longer than ``grace``.
    """
    if explicit or not 0 < requested < interval:
        return grace
    return min(grace, 3.0 * told_interval_secs(requested=requested, interval=interval) + 10.0)
