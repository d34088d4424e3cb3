"""Which backend serves which pool kind.

A kind (``"local_dir"``, ``"nfs"``, ...) maps to a *factory*: a callable that
takes keyword options and returns a :class:`~storage_backends.base.StorageBackend`
(usually the backend class itself). Two sources feed the table:

* **Built-ins**, imported here and nowhere else (this is the only module that
  knows every backend; backends do not know each other). The ``fake`` backend
  is a built-in too, but only when a caller asks for it (``include_fake=True``)
  so a production node can never be configured onto it by accident.
* **Third-party backends** from the Python entry-point group
  ``quantix.storage_backends`` (name = kind, value = ``module:factory``).
  Loading is defensive: an entry that fails to import, or is not callable, is
  logged with its traceback and skipped, so one broken plugin never stops the
  node from serving its other pools. An entry point cannot replace a built-in
  (the project's own ``local_dir`` entry point simply names the built-in).

The table is rebuilt on every call rather than cached in a module global: the
node asks once per backend kind at start-up, and a fresh scan means tests
(and operators installing a plugin) see the current environment.
"""

from __future__ import annotations

import importlib.metadata
import logging
from collections.abc import Callable
from typing import Any, Final

from storage_backends import base, ceph_rbd, fake, iscsi, local_dir, nfs

logger = logging.getLogger(__name__)

#: The entry-point group third-party backends register under.
ENTRY_POINT_GROUP: Final = "quantix.storage_backends"

#: Builds a backend from keyword options (e.g. ``pools_root=`` for local_dir).
BackendFactory = Callable[..., base.StorageBackend]


def builtin_factories(*, include_fake: bool = False) -> dict[str, BackendFactory]:
    """The backends shipped in this package, by kind."""
    factories: dict[str, BackendFactory] = {
        base.BackendKind.LOCAL_DIR.value: local_dir.LocalDirBackend,
        base.BackendKind.NFS.value: nfs.NfsBackend,
        base.BackendKind.ISCSI.value: iscsi.IscsiBackend,
        base.BackendKind.CEPH_RBD.value: ceph_rbd.CephRbdBackend,
        # Further kinds land here as their modules do, one line each.
    }
    if include_fake:
        factories[fake.DEFAULT_KIND] = fake.FakeBackend
    return factories


def plugin_factories() -> dict[str, BackendFactory]:
    """Backends from the ``quantix.storage_backends`` entry points that load.

    Entries named like a built-in (including ``fake``) are ignored; of two
    entries with the same name, the first one found wins. Failures are logged
    and skipped, never raised.
    """
    reserved = builtin_factories(include_fake=True)
    found: dict[str, BackendFactory] = {}
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if entry.name in reserved:
            if entry.value != _qualified_name(reserved[entry.name]):
                logger.warning(
                    "ignoring storage backend entry point %s = %s: %r is a built-in kind",
                    entry.name,
                    entry.value,
                    entry.name,
                )
            continue
        if entry.name in found:
            logger.warning(
                "ignoring duplicate storage backend entry point %s = %s", entry.name, entry.value
            )
            continue
        try:
            factory = entry.load()
        except Exception:  # a broken plugin must not stop the node (logged with traceback)
            logger.warning(
                "skipping storage backend %r: entry point %s failed to load",
                entry.name,
                entry.value,
                exc_info=True,
            )
            continue
        if not callable(factory):
            logger.warning(
                "skipping storage backend %r: entry point %s is not callable",
                entry.name,
                entry.value,
            )
            continue
        found[entry.name] = factory
    return found


def factories(*, include_fake: bool = False) -> dict[str, BackendFactory]:
    """Every usable backend factory by kind: plugins overlaid by built-ins."""
    table = plugin_factories()
    table.update(builtin_factories(include_fake=include_fake))
    return table


def available_kinds(*, include_fake: bool = False) -> list[str]:
    """The kinds :func:`get_backend` can build, sorted."""
    return sorted(factories(include_fake=include_fake))


def get_backend(kind: str, /, *, include_fake: bool = False, **options: Any) -> base.StorageBackend:
    """Build the backend for ``kind`` with ``options`` passed to its factory.

    Raises :class:`~storage_backends.base.InvalidConfig` for an unknown kind
    (listing the available ones), for options the factory does not accept,
    or when the factory's product is not a StorageBackend; a factory that
    fails otherwise raises :class:`~storage_backends.base.BackendError`.
    """
    table = factories(include_fake=include_fake)
    factory = table.get(kind)
    if factory is None:
        raise base.InvalidConfig(
            f"unknown storage backend {kind!r}; available: {', '.join(sorted(table)) or 'none'}"
        )
    try:
        backend = factory(**options)
    except base.BackendError:
        raise
    except TypeError as exc:
        raise base.InvalidConfig(f"storage backend {kind!r} rejected its options: {exc}") from exc
    except Exception as exc:
        raise base.BackendError(f"storage backend {kind!r} failed to start: {exc}") from exc
    if not isinstance(backend, base.StorageBackend):
        raise base.InvalidConfig(
            f"storage backend {kind!r} ({_qualified_name(factory)}) did not return a StorageBackend"
        )
    return backend


def _qualified_name(obj: object) -> str:
    """``module:qualname`` as written in an entry point."""
    return f"{getattr(obj, '__module__', '?')}:{getattr(obj, '__qualname__', repr(obj))}"
