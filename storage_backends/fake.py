"""A scriptable in-memory backend for tests and benchmarks (httpcore's MockBackend).

Real backends are slow to break on demand; the node daemon's probing,
reconciling and heartbeat logic needs pools that turn DEGRADED, hang or raise
exactly when a test says so. :class:`FakeBackend` keeps one :class:`FakePool`
script per pool id; tests change the script between calls and read back what
the node did (:attr:`FakeBackend.calls`, :attr:`FakeBackend.attached`).

It honours ``timeout`` like a real backend, which is the point of using it
for timeout tests: a probe stalled by ``probe_delay`` or a closed
``probe_gate`` returns ``ERROR "probe timed out after Xs"`` when the timeout
expires; an attach stalled the same way raises
:class:`~storage_backends.base.BackendTimeout`. Stalls are plain awaits, so
a timed-out fake leaves nothing running behind (unlike a real thread stuck in
``statvfs``; the local_dir tests cover that case).

It is never registered by default: the registry offers kind ``"fake"`` only
when explicitly asked (``include_fake=True``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, Final

from storage_backends import base

DEFAULT_KIND: Final = "fake"
_GIB: Final = 1024**3


@dataclass(slots=True)
class FakePool:
    """The script for one pool. Mutate it (or use :meth:`FakeBackend.script`) at will."""

    health: base.PoolHealth = base.PoolHealth.HEALTHY
    total_bytes: int = 100 * _GIB
    used_bytes: int = 0
    #: None means ``total_bytes - used_bytes``.
    available_bytes: int | None = None
    #: Volume name -> size in bytes; what ``list_volumes`` returns.
    volumes: dict[str, int] = field(default_factory=dict)
    #: None means ``len(volumes)``.
    volume_count: int | None = None
    error_message: str = ""
    #: Empty means the spec's ``path`` config, else ``fake://<pool_id>``.
    mount_path: str = ""
    #: Seconds each probe / attach takes before answering.
    probe_delay: float = 0.0
    attach_delay: float = 0.0
    #: When set, probes / attaches wait until the event is set (a hang you can release).
    probe_gate: asyncio.Event | None = None
    attach_gate: asyncio.Event | None = None
    #: Raised by the corresponding call, after any stall.
    probe_error: Exception | None = None
    attach_error: Exception | None = None
    detach_error: Exception | None = None
    list_error: Exception | None = None
    #: When set, ``validate`` raises InvalidConfig with this message.
    invalid: str | None = None


@dataclass(frozen=True, slots=True)
class FakeCall:
    """One recorded call: method name and pool id."""

    method: str
    pool_id: str


class FakeBackend:
    """Scriptable backend; one instance serves any number of pools.

    Pools that were never scripted behave as the default :class:`FakePool`
    (HEALTHY, 100 GiB free, no volumes).
    """

    def __init__(self, *, kind: str = DEFAULT_KIND) -> None:
        self.kind = kind
        self.pools: dict[str, FakePool] = {}
        #: Every call in order (``attach`` also records the ``probe`` it makes).
        self.calls: list[FakeCall] = []
        #: Pool ids attached and not detached since.
        self.attached: set[str] = set()
        #: Probes currently running, and the most ever running at once.
        self.probes_in_flight = 0
        self.max_probes_in_flight = 0

    # -- scripting ----------------------------------------------------------

    def pool(self, pool_id: str) -> FakePool:
        """The script for ``pool_id``, created with defaults on first use."""
        return self.pools.setdefault(pool_id, FakePool())

    def script(self, pool_id: str, /, **changes: Any) -> FakePool:
        """Update fields of ``pool_id``'s script in place; returns the script.

        Raises TypeError for a field :class:`FakePool` does not have.
        """
        script = self.pool(pool_id)
        names = {f.name for f in dataclasses.fields(FakePool)}
        unknown = set(changes) - names
        if unknown:
            raise TypeError(f"FakePool has no field(s) {sorted(unknown)}")
        for name, value in changes.items():
            setattr(script, name, value)
        return script

    def hang_probe(self, pool_id: str) -> asyncio.Event:
        """Make probes of ``pool_id`` hang until the returned event is set."""
        gate = asyncio.Event()
        self.pool(pool_id).probe_gate = gate
        return gate

    def hang_attach(self, pool_id: str) -> asyncio.Event:
        """Make attaches of ``pool_id`` hang until the returned event is set."""
        gate = asyncio.Event()
        self.pool(pool_id).attach_gate = gate
        return gate

    def calls_to(self, method: str) -> list[str]:
        """Pool ids passed to ``method``, in call order."""
        return [c.pool_id for c in self.calls if c.method == method]

    # -- StorageBackend -----------------------------------------------------

    def validate(self, spec: base.PoolSpec) -> None:
        """Raise InvalidConfig if the pool's script says so (``invalid``)."""
        if not spec.pool_id:
            raise base.InvalidConfig(f"{self.kind}: pool_id must not be empty")
        message = self.pool(spec.pool_id).invalid
        if message is not None:
            raise base.InvalidConfig(message)

    async def attach(
        self,
        spec: base.PoolSpec,
        *,
        timeout: float,
    ) -> base.PoolInfo:
        """Stall as scripted, raise ``attach_error`` if set, then mark attached and probe."""
        self.validate(spec)
        self.calls.append(FakeCall("attach", spec.pool_id))
        script = self.pool(spec.pool_id)
        deadline = time.monotonic() + timeout
        try:
            async with asyncio.timeout(timeout):
                await _stall(delay=script.attach_delay, gate=script.attach_gate)
        except TimeoutError as exc:
            raise base.BackendTimeout(
                f"attach {self.kind} pool {spec.pool_id}: timed out after {timeout:g}s"
            ) from exc
        if script.attach_error is not None:
            raise script.attach_error
        self.attached.add(spec.pool_id)
        return await self.probe(spec, timeout=max(0.0, deadline - time.monotonic()))

    async def detach(
        self,
        spec: base.PoolSpec,
        *,
        timeout: float,
    ) -> None:
        """Raise ``detach_error`` if set, else mark detached (idempotent)."""
        del timeout  # detaching a fake never stalls
        self.calls.append(FakeCall("detach", spec.pool_id))
        script = self.pool(spec.pool_id)
        if script.detach_error is not None:
            raise script.detach_error
        self.attached.discard(spec.pool_id)

    async def probe(
        self,
        spec: base.PoolSpec,
        *,
        timeout: float,
    ) -> base.PoolInfo:
        """The scripted measurement; ERROR "probe timed out after Xs" if stalled too long."""
        self.calls.append(FakeCall("probe", spec.pool_id))
        script = self.pool(spec.pool_id)
        mount_path = _mount_path(script=script, spec=spec)
        self.probes_in_flight += 1
        self.max_probes_in_flight = max(self.max_probes_in_flight, self.probes_in_flight)
        try:
            async with asyncio.timeout(timeout):
                await _stall(delay=script.probe_delay, gate=script.probe_gate)
        except TimeoutError:
            return base.PoolInfo(
                pool_id=spec.pool_id,
                kind=self.kind,
                health=base.PoolHealth.ERROR,
                mount_path=mount_path,
                error_message=f"probe timed out after {timeout:g}s",
                probed_at=time.time(),
            )
        finally:
            self.probes_in_flight -= 1
        if script.probe_error is not None:
            raise script.probe_error
        available = script.available_bytes
        if available is None:
            available = max(0, script.total_bytes - script.used_bytes)
        return base.PoolInfo(
            pool_id=spec.pool_id,
            kind=self.kind,
            health=script.health,
            total_bytes=script.total_bytes,
            used_bytes=script.used_bytes,
            available_bytes=available,
            mount_path=mount_path,
            volume_count=(
                script.volume_count if script.volume_count is not None else len(script.volumes)
            ),
            error_message=script.error_message,
            probed_at=time.time(),
        )

    async def list_volumes(
        self,
        spec: base.PoolSpec,
        *,
        timeout: float,
    ) -> list[base.VolumeInfo]:
        """The scripted volumes, sorted by name; raises ``list_error`` if set."""
        del timeout  # listing a fake never stalls
        self.calls.append(FakeCall("list_volumes", spec.pool_id))
        script = self.pool(spec.pool_id)
        if script.list_error is not None:
            raise script.list_error
        root = _mount_path(script=script, spec=spec)
        return [
            base.VolumeInfo(name=name, size_bytes=size, path=f"{root}/{name}")
            for name, size in sorted(script.volumes.items())
        ]


def _mount_path(*, script: FakePool, spec: base.PoolSpec) -> str:
    """The script's mount path, else the spec's ``path`` config, else ``fake://<pool_id>``."""
    return script.mount_path or str(spec.config.get("path") or f"fake://{spec.pool_id}")


async def _stall(*, delay: float, gate: asyncio.Event | None) -> None:
    """Sleep ``delay`` seconds, then wait for ``gate`` (if any) to be set."""
    if delay > 0:
        await asyncio.sleep(delay)
    if gate is not None:
        await gate.wait()
