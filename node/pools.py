"""The reconciler: make the pools attached on this host match the controller's wishes.

The controller owns *what should be* (the assigned pools, with full
definitions, in every heartbeat response and in unsolicited pushes); this host
owns *what is*. :class:`PoolManager` closes the gap, Kubernetes-controller
style: a level-triggered loop around one :meth:`PoolManager.reconcile_once`
step, woken early when the desired set changes.

Per pool, the cases are (decided synchronously in :meth:`PoolManager._plan`,
then acted on, so a cancellation cannot leave the bookkeeping half updated):

* desired, not attached -> attach;
* desired, attached with the same definition -> nothing (probing measures it);
* desired, attached with a *different* definition -> detach the old, attach
  the new (e.g. a changed path or export);
* attached, no longer desired -> detach. This includes the desired set
  becoming empty: upstream skipped reconciliation for an empty list and never
  unmounted the last pool;
* a definition the controller sent but that cannot be used (no backend, a
  contradictory config) -> nothing to attach; reported as ERROR with the reason;
* desired, and the controller asked to re-attach it (ReconnectPool,
  :meth:`PoolManager.reattach`) -> detach (if attached) and attach again now, skipping
  any backoff: the backend records the filesystem it finds now.

Failures are never silent: a failed attach (or detach) is retried with a
per-pool capped exponential backoff, and meanwhile the pool is *reported* as
ERROR "attach failed: <reason>", so the controller shows why rather than a
bare "not reported". A new definition for a failing pool resets its backoff.
Pools are handled concurrently within a pass, and each attach/detach is
bounded twice: by the ``timeout`` the backend must honour, and by our own
``asyncio.timeout`` slightly beyond it for a backend that does not.

Persistence: the desired set is written to ``<state_dir>/assignments.json``
(atomically: write a temp file, fsync, ``os.replace``, fsync the directory; mode
0600, since it holds the pools' secrets)
whenever it changes, and loaded at start, so a host that reboots re-attaches
its pools even while the controller is unreachable. The node id lives next to
it in ``<state_dir>/node-id``; :class:`StateStore` owns both files.

One backend instance per kind serves every pool of that kind (backends keep
per-pool state, such as local_dir's recorded filesystem), so backends are
built once, on first use, and cached here.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import aiofiles
import aiofiles.os

from qvdc.kits import backoff, timing
from storage_backends import base

#: Builds the backend for a kind; raises BackendError (e.g. InvalidConfig) if it cannot.
BackendFactory = Callable[[str], base.StorageBackend]

_ASSIGNMENTS_FILE = "assignments.json"
_NODE_ID_FILE = "node-id"
_FORMAT_VERSION = 1


class StateStore:
    """The node's small on-disk state: desired pools and node id.

    Writes are atomic and bounded by ``timeout``; reads of a missing file give
    the empty value, and a corrupt file is logged and treated as empty (a
    node that cannot read its cache still works once the controller answers).
    """

    def __init__(self, *, state_dir: Path, timeout: float, logger: logging.Logger) -> None:
        self.state_dir = state_dir
        self._timeout = timeout
        self._logger = logger

    @property
    def assignments_path(self) -> Path:
        return self.state_dir / _ASSIGNMENTS_FILE

    @property
    def node_id_path(self) -> Path:
        return self.state_dir / _NODE_ID_FILE

    async def load_assignments(self) -> dict[str, base.PoolSpec]:
        """The persisted desired pools by id ({} if none or unreadable)."""
        text = await self._read(self.assignments_path)
        if text is None:
            return {}
        try:
            return _decode_assignments(text)
        except (ValueError, TypeError, KeyError) as exc:
            self._logger.warning(
                "ignoring unreadable %s (%s); waiting for the controller's assignments",
                self.assignments_path,
                exc,
            )
            return {}

    async def save_assignments(self, specs: Mapping[str, base.PoolSpec]) -> None:
        """Persist the desired pools atomically."""
        await self._write(path=self.assignments_path, data=_encode_assignments(specs))

    async def load_node_id(self) -> str | None:
        """The node id from the last registration, if any."""
        text = await self._read(self.node_id_path)
        node_id = text.strip() if text else ""
        return node_id or None

    async def save_node_id(self, node_id: str) -> None:
        """Persist the node id atomically."""
        await self._write(path=self.node_id_path, data=(node_id + "\n").encode())

    async def _read(self, path: Path) -> str | None:
        try:
            async with asyncio.timeout(self._timeout):
                async with aiofiles.open(path, encoding="utf-8") as f:
                    return str(await f.read())
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError, TimeoutError) as exc:
            self._logger.warning("cannot read %s: %s", path, exc)
            return None

    async def _write(self, *, path: Path, data: bytes) -> None:
        """Write ``data`` to ``path`` atomically (temp file + fsync + replace).

        Raises OSError or TimeoutError; the temp file is removed on failure.
        """
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        replaced = False
        try:
            async with asyncio.timeout(self._timeout):
                await aiofiles.os.makedirs(path.parent, exist_ok=True)
                await asyncio.to_thread(_write_owner_only, tmp, data)
                await aiofiles.os.replace(tmp, path)
                replaced = True
                await asyncio.to_thread(_fsync_directory, path.parent)
        finally:
            if not replaced:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass


def _write_owner_only(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` and fsync it, mode 0600 whatever the umask:
    ``assignments.json`` holds the pools' opened secrets (CHAP password, cephx key),
    which the node needs to attach them after a restart without a controller.

    Open, write and close happen in this one worker-thread call, so a caller cancelled
    meanwhile (the daemon stopping) leaves no open file behind: the thread closes it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # a leftover temp file keeps its mode when reopened
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _encode_assignments(specs: Mapping[str, base.PoolSpec]) -> bytes:
    pools = [
        {"pool_id": s.pool_id, "kind": s.kind, "name": s.name, "config": dict(s.config)}
        for s in sorted(specs.values(), key=lambda s: s.pool_id)
    ]
    return (json.dumps({"version": _FORMAT_VERSION, "pools": pools}, indent=2) + "\n").encode()


def _decode_assignments(text: str) -> dict[str, base.PoolSpec]:
    doc = json.loads(text)
    if not isinstance(doc, dict) or doc.get("version") != _FORMAT_VERSION:
        raise ValueError(
            f"unsupported format (version {doc.get('version') if isinstance(doc, dict) else '?'})"
        )
    specs: dict[str, base.PoolSpec] = {}
    for entry in doc["pools"]:
        config = entry.get("config", {})
        if not isinstance(config, dict):
            raise TypeError(f"config of pool {entry.get('pool_id')!r} is not an object")
        spec = base.PoolSpec(
            pool_id=str(entry["pool_id"]),
            kind=str(entry["kind"]),
            config=config,
            name=str(entry.get("name", "")),
        )
        specs[spec.pool_id] = spec
    return specs


@dataclass(slots=True)
class _Retry:
    """Backoff bookkeeping of one pool whose last attach or detach failed."""

    backoff: backoff.Backoff
    retry_at: float
    error: str


@dataclass(frozen=True, slots=True)
class _Plan:
    """What one reconciliation pass will do: (pool id, spec) pairs."""

    detach: tuple[tuple[str, base.PoolSpec], ...]
    attach: tuple[tuple[str, base.PoolSpec], ...]


class PoolManager:
    """Attaches, detaches and remembers the pools of this host.

    ``on_change`` is called (synchronously) whenever the set of reported
    pools or any pool's health changes, so the heartbeat loop can send an
    extra heartbeat at once.
    """

    def __init__(
        self,
        *,
        backend_factory: BackendFactory,
        store: StateStore,
        attach_timeout: float,
        backoff_initial: float,
        backoff_max: float,
        resync_interval: float,
        logger: logging.Logger,
        clock: timing.Clock | None = None,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self._backend_factory = backend_factory
        self._store = store
        self._attach_timeout = attach_timeout
        # Our own limit, a little beyond the backend's (which should fire
        # first, with its own message), for a backend that ignores it.
        self._hard_limit = attach_timeout * 1.1 + 0.05
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._resync_interval = resync_interval
        self._logger = logger
        self._clock: timing.Clock = clock or timing.SystemClock()
        self.on_change = on_change
        self._backends: dict[str, base.StorageBackend] = {}
        self._desired: dict[str, base.PoolSpec] = {}
        self._rejected: dict[str, str] = {}
        self._attached: dict[str, base.PoolSpec] = {}
        self._infos: dict[str, base.PoolInfo] = {}
        self._retries: dict[str, _Retry] = {}
        #: Pools to detach and attach again on the next pass (ReconnectPool).
        self._reattach: set[str] = set()
        self._dirty = False
        self._wakeup = asyncio.Event()
        self._passes = 0

    # -- desired state ---------------------------------------------------------------------

    async def load(self) -> int:
        """Adopt the persisted desired pools (call before :meth:`run`); returns how many."""
        specs = await self._store.load_assignments()
        if specs:
            self._desired = specs
            self._logger.info(
                "loaded %d assigned pool(s) from %s: %s",
                len(specs),
                self._store.assignments_path,
                ", ".join(sorted(specs)),
            )
            self._wakeup.set()
            self._notify()
        return len(specs)

    def set_desired(
        self, desired: Mapping[str, base.PoolSpec], *, rejected: Mapping[str, str] | None = None
    ) -> bool:
        """Adopt the controller's desired pools (and unusable definitions); returns
        True if anything changed. Cheap and synchronous: the work happens in the loop.
        """
        rejected = dict(rejected or {})
        desired = {k: v for k, v in desired.items() if k not in rejected}
        if desired == self._desired and rejected == self._rejected:
            return False
        for pool_id in set(self._retries):
            # A new (or withdrawn) definition deserves an immediate attempt.
            if self._desired.get(pool_id) != desired.get(pool_id):
                del self._retries[pool_id]
        added = sorted(set(desired) - set(self._desired))
        removed = sorted(set(self._desired) - set(desired))
        changed = sorted(
            k for k in desired if k in self._desired and desired[k] != self._desired[k]
        )
        self._logger.info(
            "assignments changed: %d pool(s) (added %s, removed %s, redefined %s)",
            len(desired),
            added or "-",
            removed or "-",
            changed or "-",
        )
        for pool_id, reason in rejected.items():
            if self._rejected.get(pool_id) != reason:
                self._logger.warning("cannot use the definition of pool %s: %s", pool_id, reason)
        persist = desired != self._desired
        self._desired = dict(desired)
        self._rejected = rejected
        for pool_id in set(self._infos) - set(desired) - set(self._attached):
            del self._infos[pool_id]  # a failed attach of a pool no longer wanted
        self._dirty = self._dirty or persist
        self._wakeup.set()
        self._notify()
        return True

    @property
    def desired(self) -> Mapping[str, base.PoolSpec]:
        """The pools this host should have, by id."""
        return dict(self._desired)

    @property
    def rejected(self) -> Mapping[str, str]:
        """Assigned pools whose definition cannot be used, with the reason."""
        return dict(self._rejected)

    @property
    def attached(self) -> Mapping[str, base.PoolSpec]:
        """The pools attached on this host (with the definition they were attached with)."""
        return dict(self._attached)

    def reattach(self, pool_ids: Iterable[str]) -> list[str]:
        """Detach and attach these pools again at once (the controller's ReconnectPool),
        skipping any backoff; returns the ids taken (pools this host should have)."""
        taken = sorted({pool_id for pool_id in pool_ids if pool_id in self._desired})
        for pool_id in taken:
            self._reattach.add(pool_id)
            self._retries.pop(pool_id, None)
        if taken:
            self._logger.info("re-attaching pool(s) %s as the controller asked", ", ".join(taken))
            self._wakeup.set()
        return taken

    def mount_path(self, pool_id: str) -> str | None:
        """Where an attached pool's files are on this host: None when it is not attached
        here, "" when it has no files (block storage) or no measurement yet."""
        spec = self._attached.get(pool_id)
        if spec is None or self._desired.get(pool_id) != spec:
            return None
        info = self._infos.get(pool_id)
        return info.mount_path if info is not None else ""

    @property
    def passes(self) -> int:
        """Completed reconciliation passes (a test hook)."""
        return self._passes

    # -- what the heartbeat reports ---------------------------------------------------------

    def reports(self) -> dict[str, base.PoolInfo]:
        """The current report of every pool this host holds or should hold.

        Cases, per pool id:
        * unusable definition -> ERROR with the reason;
        * anything measured or failed -> the last PoolInfo (probe, attach or
          detach result);
        * desired but not attempted yet -> UNMOUNTED "not attached yet".
        """
        out: dict[str, base.PoolInfo] = {}
        for pool_id in sorted(set(self._desired) | set(self._attached) | set(self._rejected)):
            if pool_id in self._rejected:
                out[pool_id] = base.PoolInfo(
                    pool_id=pool_id,
                    kind="",
                    health=base.PoolHealth.ERROR,
                    error_message=f"invalid pool definition: {self._rejected[pool_id]}",
                    probed_at=self._clock.time(),
                )
            elif pool_id in self._infos:
                out[pool_id] = self._infos[pool_id]
            else:
                spec = self._desired[pool_id]
                out[pool_id] = base.PoolInfo(
                    pool_id=pool_id,
                    kind=spec.kind,
                    health=base.PoolHealth.UNMOUNTED,
                    error_message="not attached yet",
                    probed_at=self._clock.time(),
                )
        return out

    def probe_targets(self) -> dict[str, tuple[base.StorageBackend, base.PoolSpec]]:
        """Pools to probe: attached with the definition still desired."""
        targets: dict[str, tuple[base.StorageBackend, base.PoolSpec]] = {}
        for pool_id, spec in self._attached.items():
            backend = self._backends.get(spec.kind)
            if backend is not None and self._desired.get(pool_id) == spec:
                targets[pool_id] = (backend, spec)
        return targets

    def record_probe(self, *, spec: base.PoolSpec, info: base.PoolInfo) -> None:
        """Store a probe result, unless the pool changed while it was being probed."""
        if self._attached.get(spec.pool_id) == spec and self._desired.get(spec.pool_id) == spec:
            self._set_info(pool_id=spec.pool_id, info=info)

    def _set_info(self, *, pool_id: str, info: base.PoolInfo) -> None:
        old = self._infos.get(pool_id)
        self._infos[pool_id] = info
        if old is None or old.health != info.health:
            self._notify()

    def _drop_info(self, pool_id: str) -> None:
        if self._infos.pop(pool_id, None) is not None:
            self._notify()

    def _notify(self) -> None:
        if self.on_change is not None:
            self.on_change()

    # -- the loop ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Reconcile for ever: after each pass, sleep until the desired set
        changes, a failed pool's retry is due, or the resync interval passes."""
        while True:
            await self.reconcile_once()
            await timing.sleep(self._next_delay(), wakeup=self._wakeup)

    def _next_delay(self) -> float:
        now = self._clock.monotonic()
        delay = self._resync_interval
        for retry in self._retries.values():
            delay = min(delay, max(0.0, retry.retry_at - now))
        return delay

    async def reconcile_once(self) -> None:
        """One pass: persist the desired set if it changed, then attach/detach."""
        if self._dirty:
            self._dirty = False
            try:
                await self._store.save_assignments(self._desired)
            except (OSError, TimeoutError) as exc:
                self._dirty = True  # retried on the next pass
                self._logger.warning(
                    "cannot save assignments to %s: %s", self._store.assignments_path, exc
                )
        plan = self._plan(self._clock.monotonic())
        if plan.detach or plan.attach:
            await asyncio.gather(*(self._apply(pool_id=pid, plan=plan) for pid in _pool_ids(plan)))
        self._passes += 1

    def _plan(self, now: float) -> _Plan:
        """Decide what this pass does (pure bookkeeping, no I/O)."""
        detach: list[tuple[str, base.PoolSpec]] = []
        attach: list[tuple[str, base.PoolSpec]] = []
        reattach, self._reattach = self._reattach, set()
        for pool_id in sorted(set(self._desired) | set(self._attached)):
            retry = self._retries.get(pool_id)
            if retry is not None and retry.retry_at > now and pool_id not in reattach:
                continue
            want = self._desired.get(pool_id)
            have = self._attached.get(pool_id)
            again = pool_id in reattach and want is not None
            if have is not None and (want != have or again):
                detach.append((pool_id, have))  # no longer assigned, redefined, or re-attach
            if want is not None and (want != have or again):
                attach.append((pool_id, want))
        return _Plan(detach=tuple(detach), attach=tuple(attach))

    async def _apply(self, *, pool_id: str, plan: _Plan) -> None:
        """Detach then attach one pool as planned; failures schedule a retry."""
        for pid, spec in plan.detach:
            if pid == pool_id and not await self._detach(spec):
                return  # the old definition is still attached: do not attach over it
        for pid, spec in plan.attach:
            if pid == pool_id:
                await self._attach(spec)

    async def _detach(self, spec: base.PoolSpec) -> bool:
        """Detach one pool; returns True when it is gone."""
        try:
            backend = self._backend(spec.kind)
            async with asyncio.timeout(self._hard_limit):
                await backend.detach(spec, timeout=self._attach_timeout)
        except TimeoutError:
            self._fail(spec=spec, message=f"detach timed out after {self._attach_timeout:g}s")
            return False
        except base.BackendError as exc:
            self._fail(spec=spec, message=f"detach failed: {exc}")
            return False
        except Exception as exc:  # a backend bug must not kill the reconciler
            self._logger.exception("detaching pool %s crashed", spec.pool_id)
            self._fail(spec=spec, message=f"detach failed: {type(exc).__name__}: {exc}")
            return False
        del self._attached[spec.pool_id]
        self._retries.pop(spec.pool_id, None)
        self._drop_info(spec.pool_id)
        self._logger.info("detached pool %s (%s)", spec.pool_id, spec.kind)
        return True

    async def _attach(self, spec: base.PoolSpec) -> None:
        try:
            backend = self._backend(spec.kind)
            backend.validate(spec)
            async with asyncio.timeout(self._hard_limit):
                info = await backend.attach(spec, timeout=self._attach_timeout)
        except TimeoutError:
            self._fail(spec=spec, message=f"attach timed out after {self._attach_timeout:g}s")
            return
        except base.BackendError as exc:
            self._fail(spec=spec, message=f"attach failed: {exc}")
            return
        except Exception as exc:  # a backend bug must not kill the reconciler
            self._logger.exception("attaching pool %s crashed", spec.pool_id)
            self._fail(spec=spec, message=f"attach failed: {type(exc).__name__}: {exc}")
            return
        if self._desired.get(spec.pool_id) != spec:
            # Unassigned or redefined while attaching: keep it attached so the
            # next pass detaches (or re-attaches) it properly.
            self._attached[spec.pool_id] = spec
            self._wakeup.set()
            return
        self._attached[spec.pool_id] = spec
        self._retries.pop(spec.pool_id, None)
        self._set_info(pool_id=spec.pool_id, info=info)
        self._logger.info(
            "attached pool %s (%s) at %s: %s",
            spec.pool_id,
            spec.kind,
            info.mount_path or "?",
            info.health.name + (f" ({info.error_message})" if info.error_message else ""),
        )

    def _backend(self, kind: str) -> base.StorageBackend:
        backend = self._backends.get(kind)
        if backend is None:
            backend = self._backend_factory(kind)
            self._backends[kind] = backend
        return backend

    def _fail(self, *, spec: base.PoolSpec, message: str) -> None:
        """Record a failed attach/detach: report it as ERROR and schedule a retry."""
        retry = self._retries.get(spec.pool_id)
        if retry is None:
            retry = _Retry(
                backoff=backoff.Backoff(initial=self._backoff_initial, maximum=self._backoff_max),
                retry_at=0.0,
                error="",
            )
            self._retries[spec.pool_id] = retry
        delay = retry.backoff.next()
        retry.retry_at = self._clock.monotonic() + delay
        retry.error = message
        self._logger.warning(
            "pool %s: %s; retrying in %.1fs (attempt %d)",
            spec.pool_id,
            message,
            delay,
            retry.backoff.attempts,
        )
        self._set_info(
            pool_id=spec.pool_id,
            info=base.PoolInfo(
                pool_id=spec.pool_id,
                kind=spec.kind,
                health=base.PoolHealth.ERROR,
                error_message=message,
                probed_at=self._clock.time(),
            ),
        )


def _pool_ids(plan: _Plan) -> list[str]:
    seen: dict[str, None] = {}
    for pid, _ in (*plan.detach, *plan.attach):
        seen.setdefault(pid, None)
    return list(seen)
