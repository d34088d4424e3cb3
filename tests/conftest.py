"""Root conftest: shared fixtures for every test, and the no-leftover-tasks check.

- ``pytest_plugins`` loads ``tests/fixtures/etcd.py`` (``etcd_server``,
  ``etcd_settings``, ``store``, ``private_etcd``) for the whole suite.
- Every async test fails if asyncio tasks are still pending after it and its
  fixtures have finished (kopf's check): a leaked task is a background loop that
  nobody cancels in production either. Tasks get a short grace to finish (a
  cancelled gRPC call needs a couple of loop iterations to wind down); the ones
  still pending are named in the failure and then cancelled, so the loop closes
  cleanly.

The check is an async fixture requested by a sync autouse fixture, only for
coroutine tests: it is then set up before the test's other fixtures and torn
down after them, inside the test's own event loop (pytest-asyncio 1.x gives
each test a function-scoped loop), and sync tests pay nothing.

The controller process runs grpclib with ``qvdc.transport.lean_grpclib``
installed (``qvdc.runtime.tune_process``), the node daemon never does. So the
autouse fixture ``grpclib_primitives`` installs it for every test, so that
in-process controllers exercise the primitives production uses, and
``tests/node/conftest.py`` overrides it with stock grpclib for the node daemon's
tests. The patch is a per-test state, never an import-time one.

Subdirectories add their own ``conftest.py`` files for their fixtures.
"""

from __future__ import annotations

import asyncio
import inspect
import signal
from collections.abc import AsyncIterator, Iterator

import pytest

from qvdc.transport import lean_grpclib

pytest_plugins = ("tests.fixtures.etcd",)


def pytest_configure(config: pytest.Config) -> None:
    """A suite started in the background by a non-interactive shell (``make test &``,
    ``nohup``) inherits SIGINT ignored, and so would every process it starts: the tests
    that press Ctrl-C on a real ``qvdcctl`` or daemon would wait for a process that cannot
    hear it. Python's own handler here means the children start with the default."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


_TASK_GRACE = 1.0
"""Seconds leftover tasks get to finish before the test is failed."""


@pytest.fixture(autouse=True)
def grpclib_primitives() -> Iterator[None]:
    """grpclib as the controller runs it: with the lean per-stream primitives."""
    assert lean_grpclib.install(), "grpclib.protocol changed: review qvdc.transport.lean_grpclib"
    yield


@pytest.fixture(autouse=True)
def _check_no_pending_tasks(request: pytest.FixtureRequest) -> None:
    if inspect.iscoroutinefunction(getattr(request, "function", None)):
        request.getfixturevalue("_no_pending_tasks")


@pytest.fixture
async def _no_pending_tasks() -> AsyncIterator[None]:
    yield
    current = asyncio.current_task()
    pending = {task for task in asyncio.all_tasks() if task is not current}
    if pending:
        _, pending = await asyncio.wait(pending, timeout=_TASK_GRACE)
    if pending:
        names = sorted(_describe(task) for task in pending)
        for task in pending:
            task.cancel()
        await asyncio.wait(pending, timeout=_TASK_GRACE)
        pytest.fail(f"{len(names)} asyncio task(s) left pending: {', '.join(names)}")


def _describe(task: asyncio.Task[object]) -> str:
    coro = task.get_coro()
    where = getattr(coro, "__qualname__", type(coro).__name__)
    return f"{task.get_name()} ({where})"


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> object:
    """Sync tests run with no current event loop.

    looptime's own ``pytest_pyfunc_call`` asks the policy for the current loop on every
    test; on Python 3.11 that call creates a loop for a sync test, which nobody closes,
    and the collector later reports it ("unclosed event loop") inside some other test,
    where ``filterwarnings=error`` fails it. Marking "no loop" first makes that call
    raise instead, which looptime handles as "not an async test".
    """
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        asyncio.get_event_loop_policy().set_event_loop(None)
    return (yield)
