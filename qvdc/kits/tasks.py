"""Supervised background tasks (kopf's ``create_guarded_task``).

Every long-running loop is a *named* task created here: a crash is logged once
with its traceback, and an eternal loop that returns is reported, so nothing
dies silently. ``cancel_and_wait`` stops tasks and waits for their cleanup;
``first_of`` races coroutines (a wait that a stop event must be able to cut short).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

_T = TypeVar("_T")


async def guard(
    coro: Coroutine[Any, Any, Any], *, name: str, logger: logging.Logger, eternal: bool = True
) -> None:
    """Run ``coro``; log a crash with traceback and re-raise it; warn if an eternal loop returns."""
    try:
        await coro
    except asyncio.CancelledError:
        raise
    except Exception:
        logger.exception("task %s crashed", name)
        raise
    else:
        if eternal:
            logger.warning("task %s returned although it should run until cancelled", name)


def create_guarded_task(
    coro: Coroutine[Any, Any, Any],
    *,
    name: str,
    logger: logging.Logger,
    eternal: bool = True,
    group: asyncio.TaskGroup | None = None,
) -> asyncio.Task[None]:
    """Start ``coro`` as a named, guarded task (in ``group`` when given)."""
    wrapped = guard(coro, name=name, logger=logger, eternal=eternal)
    if group is not None:
        return group.create_task(wrapped, name=name)
    return asyncio.create_task(wrapped, name=name)


class RootWatch:
    """Which root tasks of a process ended before its shutdown began: returned, crashed,
    or cancelled by anything but the shutdown. Each is a failure, never a quiet stop.

    :meth:`watch` each root; set :attr:`stopping` before the shutdown cancels them.
    ``on_end`` runs whenever a watched root ends (the process's "stop now" event)."""

    def __init__(self, on_end: Callable[[], object]) -> None:
        self._on_end = on_end
        self.stopping = False
        self.ended_early: list[asyncio.Task[Any]] = []

    def watch(self, task: asyncio.Task[_T]) -> asyncio.Task[_T]:
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        if not self.stopping:
            self.ended_early.append(task)
        self._on_end()


async def cancel_and_wait(*tasks: asyncio.Task[Any]) -> None:
    """Cancel ``tasks`` and wait until they have finished.

    Safe to call from a task that is itself being cancelled (in a ``finally``):
    the tasks' own CancelledErrors are not mistaken for ours, so cleanup after
    them still runs; a new cancellation of the caller still propagates.
    """
    for t in tasks:
        t.cancel()
    if tasks:
        await asyncio.wait(tasks)
    for t in tasks:
        if not t.cancelled():
            t.exception()  # retrieved: a failure was already logged by guard()


async def first_of(*coros: Coroutine[Any, Any, Any]) -> None:
    """Run ``coros`` as tasks until one of them ends; cancel the others and wait for them.

    Raises what the first one to end raised. Cancelling the caller cancels them all.
    """
    racers = [asyncio.ensure_future(c) for c in coros]
    try:
        done, _ = await asyncio.wait(racers, return_when=asyncio.FIRST_COMPLETED)
    finally:
        await cancel_and_wait(*racers)
    for t in racers:
        if t in done and not t.cancelled():
            exc = t.exception()
            if exc is not None:
                raise exc
