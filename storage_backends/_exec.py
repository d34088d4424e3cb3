"""Bounded execution of the two kinds of blocking work backends do.

Backends touch storage in two ways, and both can hang for ever on a sick
host: they run helper programs (``mount``, ``rbd``, ``iscsiadm``) and they
make blocking system calls (``statvfs`` on a dead NFS mount never returns).
This module owns both, so that every backend gets the same guarantees:

:func:`run`
    runs a program through an asyncio subprocess under a timeout. The child
    gets its own session, so on timeout (or cancellation) the whole process
    group is killed: helpers such as ``mount.nfs`` fork, and killing only the
    parent would leave a grandchild holding our pipes open. A timeout raises
    :class:`~storage_backends.base.BackendTimeout`; a missing program maps
    through :func:`~storage_backends.base.map_exceptions`.

:class:`ThreadRunner`
    runs a blocking function in a worker thread under a timeout, at most one
    worker per key (one key per pool). A thread stuck in the kernel cannot be
    cancelled, so after a timeout the worker is *abandoned*, not stopped: it
    keeps its key until it returns. A later call for the same key waits for it
    (within its own timeout) instead of starting a second worker, and reports
    :class:`WorkerBusy` if it is still stuck. A hung filesystem therefore costs
    one thread per pool, never a pile-up.

    Workers are daemon threads started per call rather than
    ``asyncio.to_thread``: the default executor has only ``min(32, cpus + 4)``
    threads (6 on a 2-core host), so a few hung mounts would starve every other
    ``to_thread`` user in the process, and on Python 3.11 both
    ``asyncio.run``'s executor shutdown and interpreter exit join executor
    threads without a timeout, so one hung ``statvfs`` would block the daemon's
    exit for ever. A daemon thread blocks neither.

    The function receives a :class:`threading.Event` that is set when its
    caller gives up (timeout or cancellation), so long loops (walking a
    directory tree) can stop early and side effects (a write probe) can be
    skipped once nobody is waiting for the answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Generic, TypeVar, cast

from storage_backends import base

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Seconds to wait for a killed process group to exit and close its pipes.
KILL_GRACE: Final = 5.0


async def run(argv: Sequence[str], *, timeout: float) -> tuple[int, bytes, bytes]:
    """Run ``argv`` without a shell; returns ``(returncode, stdout, stderr)``.

    A non-zero exit status is returned, not raised: callers decide what it
    means. Raises :class:`~storage_backends.base.BackendTimeout` if the program
    has not finished within ``timeout`` seconds (its process group is killed
    first), and a :class:`~storage_backends.base.BackendError` if it cannot be
    started (for example :class:`~storage_backends.base.BackendUnavailable`
    when the program does not exist).
    """
    if not argv:
        raise ValueError("argv must not be empty")
    what = f"run {argv[0]}"
    with base.map_exceptions(what):
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate()
    except TimeoutError as exc:
        await _kill_group(proc)
        raise base.BackendTimeout(f"{what}: timed out after {timeout:g}s") from exc
    except asyncio.CancelledError:
        await _kill_group(proc)
        raise
    assert proc.returncode is not None  # communicate() waits for exit
    return proc.returncode, out, err


async def _kill_group(proc: asyncio.subprocess.Process) -> None:
    """Kill ``proc``'s process group and reap it, bounded by :data:`KILL_GRACE`.

    Draining the pipes to EOF lets asyncio close the subprocess transport, so
    no "unclosed transport" warning (and no fd leak) follows.
    """
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    try:
        async with asyncio.timeout(KILL_GRACE):
            await proc.communicate()
    except TimeoutError:
        # Something outside the group (a helper that called setsid) still holds
        # our pipes. Close our ends so the transport and its fds do not leak;
        # asyncio has no public API for this.
        logger.warning(
            "process %d: pipes still open %gs after SIGKILL; closing them", proc.pid, KILL_GRACE
        )
        transport = getattr(proc, "_transport", None)
        if transport is not None:
            transport.close()


class WorkerBusy(base.BackendTimeout):
    """A previous worker for the same key is still running (stuck); none was started."""


@dataclass(slots=True)
class _Worker(Generic[T]):
    """One worker thread, seen from the event loop that started it."""

    loop: asyncio.AbstractEventLoop
    #: Receives ``fn``'s return value or exception (on ``loop``).
    result: asyncio.Future[T]
    #: Resolved on ``loop`` when the thread has returned, whatever the outcome.
    finished: asyncio.Future[None]
    #: Set when the caller stops waiting; ``fn`` may check it.
    abandoned: threading.Event = field(default_factory=threading.Event)
    #: Set by the thread itself as its last action (loop-independent truth).
    returned: threading.Event = field(default_factory=threading.Event)


class ThreadRunner:
    """Runs blocking functions in daemon threads, at most one per key.

    One instance per backend instance; keys are usually pool paths. All
    methods must be called from the event loop thread.
    """

    def __init__(self, *, name: str) -> None:
        self._name = name
        self._workers: dict[str, _Worker[Any]] = {}

    def busy(self, key: str) -> bool:
        """Whether a worker for ``key`` is still running (possibly abandoned)."""
        worker = self._workers.get(key)
        return worker is not None and not worker.returned.is_set()

    async def run(
        self,
        fn: Callable[[threading.Event], T],
        *,
        key: str,
        timeout: float,
        what: str,
    ) -> T:
        """Run ``fn(abandoned)`` in a worker thread; returns what ``fn`` returns.

        Raises :class:`WorkerBusy` if the previous worker for ``key`` does not
        return within ``timeout`` (no new worker is started),
        :class:`~storage_backends.base.BackendTimeout` if ``fn`` does not
        return within ``timeout`` (the worker is abandoned, not stopped), and
        whatever ``fn`` raises (callers map ``OSError``). ``what`` names the
        operation in error messages.
        """
        loop = asyncio.get_running_loop()
        worker: _Worker[T] | None = None
        try:
            async with asyncio.timeout(timeout):
                await self._wait_for_previous(key=key, loop=loop, what=what)
                worker = self._start(fn, key=key, loop=loop)
                return await worker.result
        except TimeoutError as exc:
            if worker is None:
                raise WorkerBusy(f"{what}: previous worker for {key} still running") from exc
            worker.abandoned.set()
            raise base.BackendTimeout(f"{what}: timed out after {timeout:g}s") from exc
        except asyncio.CancelledError:
            if worker is not None:
                worker.abandoned.set()
            raise

    async def _wait_for_previous(
        self, *, key: str, loop: asyncio.AbstractEventLoop, what: str
    ) -> None:
        """Wait until the previous worker for ``key`` (if any) has returned.

        Case 1: no previous worker, or it has returned: go ahead.
        Case 2: it was started from this loop: wait for its ``finished`` future
        (shielded, so our timeout does not cancel the shared future).
        Case 3: it was started from another, possibly closed, loop that cannot
        notify this one: report it busy at once rather than poll.
        """
        # Loop: when a worker finishes, every caller waiting on it wakes up; the
        # first starts the next worker (synchronously, before yielding) and the
        # others must then wait for that one.
        while True:
            previous = self._workers.get(key)
            if previous is None or previous.returned.is_set():
                return
            if previous.loop is not loop:
                raise WorkerBusy(f"{what}: previous worker for {key} still running")
            await asyncio.shield(previous.finished)

    def _start(
        self, fn: Callable[[threading.Event], T], *, key: str, loop: asyncio.AbstractEventLoop
    ) -> _Worker[T]:
        worker: _Worker[T] = _Worker(
            loop=loop, result=loop.create_future(), finished=loop.create_future()
        )
        self._workers[key] = worker

        def forget(_: asyncio.Future[None]) -> None:
            if self._workers.get(key) is worker:
                del self._workers[key]

        worker.finished.add_done_callback(forget)
        thread = threading.Thread(
            target=_run_worker,
            kwargs={"fn": fn, "worker": worker},
            name=f"{self._name}:{key}",
            daemon=True,
        )
        thread.start()
        return worker


def _run_worker(*, fn: Callable[[threading.Event], T], worker: _Worker[T]) -> None:
    """Thread body: run ``fn`` and hand the outcome to the worker's loop.

    Nothing may escape this function: an exception here would surface as an
    unhandled-thread-exception warning. If the loop is already closed (the
    caller gave up and the loop ended while we were stuck) the outcome is
    dropped.
    """
    value: T | None = None
    error: Exception | None = None
    try:
        value = fn(worker.abandoned)
    except Exception as exc:  # noqa: BLE001 - handed to the awaiting caller below
        error = exc
    finally:
        worker.returned.set()

    def deliver() -> None:
        # The caller may have timed out (result cancelled) before this runs.
        if not worker.result.done():
            if error is not None:
                worker.result.set_exception(error)
            else:
                worker.result.set_result(cast(T, value))
        if not worker.finished.done():
            worker.finished.set_result(None)

    try:
        worker.loop.call_soon_threadsafe(deliver)
    except RuntimeError:  # loop closed
        logger.debug("%s returned after its event loop closed", threading.current_thread().name)
