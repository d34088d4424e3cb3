"""Wire messages <-> the node daemon's own types. One of two modules importing ``protos``.

Keeping the generated betterproto types at this edge (and in :mod:`node.client`)
means the reconciler, the prober and the heartbeat loop work with plain frozen
dataclasses: :class:`~storage_backends.base.PoolSpec` / ``PoolInfo`` from the
backend library, and the two message views defined here:

* :class:`Heartbeat` - what the node wants to say in one heartbeat;
* :class:`HeartbeatReply` - what the controller said back (or pushed).

Conversions, and the rules they follow:

* ``PoolInfo`` -> ``StoragePoolStatusReport``: field for field; ``PoolHealth``
  values equal the wire's ``HealthStatus`` values by construction; negative
  byte counts (never expected) are clamped to 0 because the wire is unsigned.
* ``StoragePool`` -> ``PoolSpec``: the backend kind comes from
  ``spec.backend.type`` (LOCAL_DIR -> "local_dir", NFS -> "nfs", CEPH_RBD ->
  "ceph_rbd", ISCSI -> "iscsi"; CEPH_CEPHFS and LOCAL_LVM map to names no
  backend claims, so they fail at attach with a reason instead of vanishing);
  ``config`` is the set ``config`` oneof sub-message as a dict with snake_case
  proto field names and default values included, so two definitions compare
  equal exactly when the controller's definitions are equal. A pool with no
  backend, or whose oneof contradicts its type, is not guessed at (upstream
  silently fell back to LOCAL_DIR): it raises :class:`InvalidPoolDefinition`
  and the reconciler reports the pool as ERROR with that reason.
* host facts -> ``RegisterNodeRequest`` and ``Heartbeat`` -> ``UpdateHeartbeatRequest``.
* Free text the node writes itself (a pool's ``error_message``, its ``mount_path``, the
  CPU model, label values) is cut to the controller's default limits
  (docs/configuration.md, "Limits") with a marker, so a long mount error from a backend is
  reported shortened instead of getting the whole heartbeat refused. Ids and the hostname
  are identities and are sent as they are.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import betterproto2

from node import files, hostfacts
from protos.limiquantix.compute import v1 as compute
from protos.limiquantix.storage import v1 as storage
from storage_backends import base

_MIB = 1024 * 1024

#: The controller's default bounds (``qvdc.domain.limits.Limits``) on what the node writes;
#: the node may not import the controller, so a test checks these agree.
MAX_REPORT_MESSAGE_LENGTH = 4096
MAX_PATH_LENGTH = 4096
MAX_TEXT_LENGTH = 1024
_CUT_MARKER = "… (cut)"


def bounded(text: str, limit: int) -> str:
    """``text``, or its head plus a marker, in at most ``limit`` characters."""
    if len(text) <= limit:
        return text
    return text[: limit - len(_CUT_MARKER)] + _CUT_MARKER


KIND_BY_BACKEND_TYPE: Mapping[storage.StorageBackendBackendType, str] = {
    storage.StorageBackendBackendType.LOCAL_DIR: "local_dir",
    storage.StorageBackendBackendType.NFS: "nfs",
    storage.StorageBackendBackendType.CEPH_RBD: "ceph_rbd",
    storage.StorageBackendBackendType.ISCSI: "iscsi",
    storage.StorageBackendBackendType.CEPH_CEPHFS: "ceph_cephfs",
    storage.StorageBackendBackendType.LOCAL_LVM: "local_lvm",
}

#: The oneof member each backend type is configured by.
_ONEOF_BY_BACKEND_TYPE: Mapping[storage.StorageBackendBackendType, str] = {
    storage.StorageBackendBackendType.LOCAL_DIR: "local_dir",
    storage.StorageBackendBackendType.NFS: "nfs",
    storage.StorageBackendBackendType.CEPH_RBD: "ceph",
    storage.StorageBackendBackendType.ISCSI: "iscsi",
    storage.StorageBackendBackendType.CEPH_CEPHFS: "ceph",
    storage.StorageBackendBackendType.LOCAL_LVM: "local_lvm",
}


class InvalidPoolDefinition(ValueError):
    """A pool definition from the controller cannot be turned into a PoolSpec."""


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """One heartbeat as the node composes it (wire-free)."""

    node_id: str
    #: 1, 2, 3 ... per stream; echoed by the controller as the acknowledgement.
    sequence: int
    #: True: ``pools`` holds only the reports that changed since the last
    #: acknowledged heartbeat. False: ``pools`` is the full set.
    delta: bool
    pools: tuple[base.PoolInfo, ...]
    removed_pool_ids: tuple[str, ...] = ()
    facts: hostfacts.HostFacts | None = None
    load: tuple[float, float, float] = (0.0, 0.0, 0.0)


@dataclass(frozen=True, slots=True)
class HeartbeatReply:
    """One response on the heartbeat stream (an answer or an unsolicited push)."""

    #: The acknowledged heartbeat's sequence; 0 on an unsolicited push.
    sequence: int
    acknowledged: bool
    unsolicited: bool
    request_full_sync: bool
    #: The controller's heartbeat interval in seconds; None when it sent none.
    interval: float | None
    #: Full definitions of every pool this host must have, by pool id.
    assigned: Mapping[str, base.PoolSpec] = field(default_factory=dict)
    #: Assigned pools whose definition could not be used, with the reason.
    invalid: Mapping[str, str] = field(default_factory=dict)
    #: The upstream id list (kept for pools sent without a definition).
    assigned_ids: tuple[str, ...] = ()
    #: The controller asks for a directory listing (ListPoolFiles); answered on the stream.
    list_files: FilesQuestion | None = None
    #: Pools to detach and attach again now (ReconnectPool).
    reattach: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class FilesQuestion:
    """``UpdateHeartbeatResponse.list_files``: list ``path`` of pool ``pool_id``."""

    request_id: int
    pool_id: str
    path: str
    #: (is_directory, name) of the last entry already sent; None: from the start.
    after: tuple[bool, str] | None
    limit: int


def pool_info_to_report(info: base.PoolInfo) -> compute.StoragePoolStatusReport:
    """The wire report for one pool measurement."""
    return compute.StoragePoolStatusReport(
        pool_id=info.pool_id,
        health=compute.StoragePoolStatusReportHealthStatus(int(info.health)),
        total_bytes=max(0, info.total_bytes),
        used_bytes=max(0, info.used_bytes),
        available_bytes=max(0, info.available_bytes),
        mount_path=bounded(info.mount_path, MAX_PATH_LENGTH),
        volume_count=max(0, info.volume_count),
        error_message=bounded(info.error_message, MAX_REPORT_MESSAGE_LENGTH),
    )


def storage_pool_to_spec(pool: storage.StoragePool) -> base.PoolSpec:
    """The backend spec for one assigned pool.

    Raises :class:`InvalidPoolDefinition` when the definition has no id, no
    backend, or a config that contradicts its backend type.
    """
    if not pool.id:
        raise InvalidPoolDefinition("pool definition without an id")
    backend = pool.spec.backend if pool.spec is not None else None
    if backend is None:
        raise InvalidPoolDefinition(f"pool {pool.id} has no backend in its definition")
    try:
        backend_type = storage.StorageBackendBackendType(backend.type)
    except ValueError:
        raise InvalidPoolDefinition(
            f"pool {pool.id} has unknown backend type {int(backend.type)}"
        ) from None
    kind = KIND_BY_BACKEND_TYPE[backend_type]
    member, sub = betterproto2.which_one_of(backend, "config")
    config: dict[str, Any] = {}
    if sub is not None:
        expected = _ONEOF_BY_BACKEND_TYPE[backend_type]
        if member != expected:
            raise InvalidPoolDefinition(
                f"pool {pool.id} has backend type {backend_type.name} but a {member} config"
            )
        config = sub.to_dict(
            casing=betterproto2.Casing.SNAKE,
            output_format=betterproto2.OutputFormat.PYTHON,
            include_default_values=True,
        )
        for name in _OUTPUT_ONLY:
            config.pop(name, None)
    return base.PoolSpec(pool_id=pool.id, kind=kind, config=config, name=pool.name)


#: Config fields the controller only ever fills for operators (a write-only secret's
#: "is set" marker): nothing a backend reads.
_OUTPUT_ONLY = frozenset({"chap_password_set", "key_set"})


def reply_from_response(response: compute.UpdateHeartbeatResponse) -> HeartbeatReply:
    """The node's view of one heartbeat response."""
    assigned: dict[str, base.PoolSpec] = {}
    invalid: dict[str, str] = {}
    for pool in response.assigned_pools:
        try:
            spec = storage_pool_to_spec(pool)
        except InvalidPoolDefinition as exc:
            if pool.id:
                invalid[pool.id] = str(exc)
            continue
        assigned[spec.pool_id] = spec
    return HeartbeatReply(
        sequence=response.sequence,
        acknowledged=response.acknowledged,
        unsolicited=response.unsolicited,
        request_full_sync=response.request_full_sync,
        interval=float(response.heartbeat_interval_secs)
        if response.heartbeat_interval_secs
        else None,
        assigned=assigned,
        invalid=invalid,
        assigned_ids=tuple(response.assigned_pool_ids),
        list_files=_files_question(response.list_files),
        reattach=tuple(response.reattach_pool_ids),
    )


def _files_question(ask: compute.ListFilesRequest | None) -> FilesQuestion | None:
    if ask is None:
        return None
    after = (ask.after_is_directory, ask.after_name) if ask.after_name else None
    return FilesQuestion(
        request_id=ask.request_id, pool_id=ask.pool_id, path=ask.path, after=after, limit=ask.limit
    )


def files_answer(
    *,
    node_id: str,
    request_id: int,
    listing: files.Listing | None = None,
    error: files.ListingError | None = None,
) -> compute.UpdateHeartbeatRequest:
    """The stream message answering a :class:`FilesQuestion`: a listing or an error. It is
    marked a delta with no reports, so a controller that does not know the answer field
    takes it as a heartbeat that changes nothing."""
    result = compute.ListFilesResult(request_id=request_id)
    if error is not None:
        result.error_code = int(error.code)
        result.error_message = bounded(str(error), MAX_REPORT_MESSAGE_LENGTH)
    elif listing is not None:
        result.current_path = listing.current_path
        result.more = listing.more
        result.entries = [
            storage.PoolFileEntry(
                name=e.name,
                path=e.path,
                is_directory=e.is_directory,
                size_bytes=e.size_bytes,
                modified_at=e.modified_at,
                file_type=bounded(e.file_type, MAX_TEXT_LENGTH),
                permissions=e.permissions,
            )
            for e in listing.entries
        ]
    return compute.UpdateHeartbeatRequest(node_id=node_id, delta=True, list_files_result=result)


def heartbeat_to_request(heartbeat: Heartbeat) -> compute.UpdateHeartbeatRequest:
    """The wire request for one heartbeat."""
    facts = heartbeat.facts
    request = compute.UpdateHeartbeatRequest(
        node_id=heartbeat.node_id,
        storage_pools=[pool_info_to_report(p) for p in heartbeat.pools],
        delta=heartbeat.delta,
        sequence=heartbeat.sequence,
        removed_pool_ids=list(heartbeat.removed_pool_ids),
        load_1m=_finite(heartbeat.load[0]),
        load_5m=_finite(heartbeat.load[1]),
        load_15m=_finite(heartbeat.load[2]),
    )
    if facts is not None:
        used = max(0, facts.memory_total_bytes - facts.memory_free_bytes)
        request.memory_total_mib = facts.memory_total_bytes // _MIB
        request.memory_used_mib = used // _MIB if facts.memory_total_bytes else 0
        request.running_vm_count = facts.running_vms
        request.cpu_usage_percent = _finite(facts.cpu_usage_percent)
    return request


def register_request(
    *,
    hostname: str,
    management_ip: str,
    labels: Mapping[str, str],
    facts: hostfacts.HostFacts,
    heartbeat_interval: float = 0.0,
) -> compute.RegisterNodeRequest:
    """The registration request. ``hostname`` is the configured identity, not
    libvirt's idea of the host name (the two can differ in containers).
    ``heartbeat_interval`` is the configured one (seconds; 0: not said): the
    controller tells the node the shorter of it and its own."""
    return compute.RegisterNodeRequest(
        heartbeat_interval_ms=min(max(round(heartbeat_interval * 1000), 0), 2**32 - 1),
        hostname=hostname,
        management_ip=management_ip,
        labels={key: bounded(value, MAX_TEXT_LENGTH) for key, value in labels.items()},
        role=compute.NodeRole(compute=True, storage=False, control_plane=False),
        cpu_info=compute.CpuInfo(
            model=bounded(facts.cpu_model, MAX_TEXT_LENGTH),
            sockets=facts.cpu_sockets,
            cores_per_socket=facts.cpu_cores_per_socket,
            threads_per_core=facts.cpu_threads_per_core,
            total_threads=facts.cpu_total_threads,
            frequency_mhz=facts.cpu_mhz,
        ),
        memory_info=compute.MemoryInfo(
            total_bytes=facts.memory_total_bytes,
            allocatable_bytes=facts.memory_free_bytes,
        ),
    )


def _finite(value: float) -> float:
    return value if math.isfinite(value) else 0.0
