"""Smaller per-stream primitives for grpclib, which holds one stream per host.

A replica keeps one open ``StreamHeartbeat`` per host, and grpclib gives every
stream three ``asyncio.Event`` objects and a receive buffer built on an
``asyncio.Queue`` and a ``collections.deque``. Each of those owns a deque, and
an empty deque costs 624 bytes: a heap census of a replica with 10,000 open
streams found 8 deques per stream, 6.2 KB per host (62 MB), for waiter lists
that are almost always empty (a server stream waits on one of them at a time,
and on most of them never).

:func:`install` points ``grpclib.protocol``'s names ``Event``, ``Queue`` and
``deque`` at the classes below, which keep the asyncio semantics grpclib uses
but allocate their waiter lists on first wait, in slots, as plain lists (a
stream has at most one or two waiters). It touches only that module, checks
that the names are still the asyncio originals it was written against, and
does nothing (logging why) otherwise. The controller installs it at start-up
(``qvdc.runtime.tune_process``); the node daemon never does. The lever belongs
upstream, in grpclib.

The private dependency is how ``grpclib.protocol`` uses those three names: which
methods and attributes it calls on the objects it builds from them.
tests/qvdc/transport/test_lean_grpclib.py scans that module's source and fails
if it uses anything the lean classes do not provide.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any, Generic, TypeVar

import grpclib.protocol

log = logging.getLogger(__name__)

_T = TypeVar("_T")


class LeanEvent:
    """``asyncio.Event`` with its waiter list allocated by the first ``wait()``."""

    __slots__ = ("_value", "_waiters")

    def __init__(self) -> None:
        self._value = False
        self._waiters: list[asyncio.Future[bool]] | None = None

    def __repr__(self) -> str:
        waiters = len(self._waiters) if self._waiters else 0
        return f"<LeanEvent [{'set' if self._value else 'unset'}, waiters:{waiters}]>"

    def is_set(self) -> bool:
        return self._value

    def set(self) -> None:
        if not self._value:
            self._value = True
            for fut in self._waiters or ():
                if not fut.done():
                    fut.set_result(True)

    def clear(self) -> None:
        self._value = False

    async def wait(self) -> bool:
        if self._value:
            return True
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(fut)
        try:
            await fut
            return True
        finally:
            self._waiters.remove(fut)


class LeanQueue(Generic[_T]):
    """The unbounded ``asyncio.Queue`` subset grpclib's receive buffer uses
    (``put_nowait``, ``get``, ``get_nowait``, ``empty``, ``qsize``), with the same
    wake-up and cancellation rules, and no waiter list until a ``get()`` waits."""

    __slots__ = ("_getters", "_items")

    def __init__(self) -> None:
        self._items: list[_T] = []
        self._getters: list[asyncio.Future[None]] | None = None

    def __repr__(self) -> str:
        return f"<LeanQueue items:{len(self._items)}>"

    def qsize(self) -> int:
        return len(self._items)

    def empty(self) -> bool:
        return not self._items

    def put_nowait(self, item: _T) -> None:
        self._items.append(item)
        self._wake_next()

    def get_nowait(self) -> _T:
        if not self._items:
            raise asyncio.QueueEmpty
        return self._items.pop(0)

    async def get(self) -> _T:
        while not self._items:
            getter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            if self._getters is None:
                self._getters = []
            self._getters.append(getter)
            try:
                await getter
            except BaseException:
                getter.cancel()  # in case it is not done yet
                try:
                    self._getters.remove(getter)
                except ValueError:
                    pass  # put_nowait() already took it off the list
                if self._items and not getter.cancelled():
                    # We were woken for an item but cannot take it: wake the next getter.
                    self._wake_next()
                raise
        return self._items.pop(0)

    def _wake_next(self) -> None:
        getters = self._getters
        while getters:
            getter = getters.pop(0)
            if not getter.done():
                getter.set_result(None)
                return


class LeanDeque(list[Any]):
    """The ``deque`` subset grpclib's receive buffer uses: ``append``, ``popleft``,
    indexing. It holds a message's DATA chunks (one or two), so ``pop(0)`` is cheap;
    an empty one is a 56-byte list instead of a 624-byte deque."""

    __slots__ = ()

    def popleft(self) -> Any:
        return self.pop(0)


ORIGINALS: dict[str, Any] = {"Event": asyncio.Event, "Queue": asyncio.Queue, "deque": deque}
"""The names in ``grpclib.protocol`` this module replaces, and what they are in grpclib."""

LEAN: dict[str, Any] = {"Event": LeanEvent, "Queue": LeanQueue, "deque": LeanDeque}
"""What :func:`install` points each of those names at."""


def _current() -> dict[str, Any]:
    return {name: getattr(grpclib.protocol, name, None) for name in ORIGINALS}


def installed() -> bool:
    """True if ``grpclib.protocol`` uses the lean primitives."""
    return _current() == LEAN


def install() -> bool:
    """Use the lean primitives in ``grpclib.protocol``; True if they are in use."""
    current = _current()
    if current == LEAN:
        return True
    if current != ORIGINALS:
        log.warning(
            "grpclib.protocol no longer uses %s as expected; keeping its own primitives",
            ", ".join(sorted(ORIGINALS)),
        )
        return False
    for name, lean in LEAN.items():
        setattr(grpclib.protocol, name, lean)
    return True


def uninstall() -> None:
    """Put asyncio's own primitives back (for tests)."""
    for name, original in ORIGINALS.items():
        setattr(grpclib.protocol, name, original)
