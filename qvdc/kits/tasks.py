"""Supervised background tasks (kopf's ``create_guarded_task``).

Every long-running loop is a *named* task created here: a crash is logged once
with its traceback, and an eternal loop that returns is reported, so nothing
dies silently.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any


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


async def cancel_and_wait(*tasks: asyncio.Task[Any]) -> None:
    """Cancel ``tasks`` and wait for them to finish, without swallowing our own cancellation."""
    for t in tasks:
        t.cancel()
    for t in tasks:
        try:
            await t
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
        except Exception:  # noqa: BLE001 - already logged by guard()
            pass
