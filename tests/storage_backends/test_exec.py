"""_exec: subprocesses and worker threads under timeouts, with real processes and threads."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from storage_backends import _exec, base

TIMEOUT = 10.0


def process_gone(pid: int) -> bool:
    """True once ``pid`` no longer runs (reaped, or a zombie nobody reaped yet)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


async def wait_until_gone(pid: int) -> bool:
    """Poll (bounded) until ``pid`` is gone; SIGKILL is asynchronous."""
    for _ in range(200):
        if process_gone(pid):
            return True
        await asyncio.sleep(0.01)
    return False


def try_read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text else None


async def read_pid(path: Path) -> int:
    """Poll (bounded) for the pid a child writes to ``path``."""
    for _ in range(500):
        pid = try_read_pid(path)
        if pid is not None:
            return pid
        await asyncio.sleep(0.01)
    raise AssertionError(f"{path} never written")


# -- run() ------------------------------------------------------------------------------


async def test_run_returns_status_and_output() -> None:
    rc, out, err = await _exec.run(["sh", "-c", "echo out; echo err >&2; exit 3"], timeout=TIMEOUT)
    assert (rc, out, err) == (3, b"out\n", b"err\n")


async def test_run_does_not_use_a_shell_for_argv() -> None:
    rc, out, _ = await _exec.run(["echo", "$HOME; true"], timeout=TIMEOUT)
    assert (rc, out) == (0, b"$HOME; true\n")


async def test_run_timeout_raises_and_kills_the_whole_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild.pid"
    with pytest.raises(base.BackendTimeout, match=r"run sh: timed out after 0\.3s"):
        # The grandchild holds our stdout; killing only sh would leave it running.
        await _exec.run(["sh", "-c", f"sleep 60 & echo $! > {pidfile}; wait"], timeout=0.3)
    assert await wait_until_gone(await read_pid(pidfile))


async def test_run_cancelled_kills_the_process(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    task = asyncio.create_task(
        _exec.run(["sh", "-c", f"echo $$ > {pidfile}; exec sleep 60"], timeout=TIMEOUT)
    )
    pid = await read_pid(pidfile)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await wait_until_gone(pid)


async def test_run_missing_program_is_unavailable() -> None:
    with pytest.raises(base.BackendUnavailable, match="run /nonexistent/quantix-tool"):
        await _exec.run(["/nonexistent/quantix-tool"], timeout=TIMEOUT)


async def test_run_rejects_empty_argv() -> None:
    with pytest.raises(ValueError, match="argv"):
        await _exec.run([], timeout=TIMEOUT)


# -- ThreadRunner ---------------------------------------------------------------------------


async def test_thread_runner_returns_the_result_from_another_thread() -> None:
    runner = _exec.ThreadRunner(name="t")
    main = threading.get_ident()
    ident = await runner.run(lambda _: threading.get_ident(), key="k", timeout=TIMEOUT, what="w")
    assert ident != main
    assert not runner.busy("k")


async def test_thread_runner_propagates_exceptions() -> None:
    def fail(_: threading.Event) -> None:
        raise OSError(5, "Input/output error")

    runner = _exec.ThreadRunner(name="t")
    with pytest.raises(OSError, match="Input/output error"):
        await runner.run(fail, key="k", timeout=TIMEOUT, what="w")


async def test_thread_runner_abandons_a_stuck_worker_and_refuses_a_second() -> None:
    runner = _exec.ThreadRunner(name="t")
    release = threading.Event()
    abandoned_seen = threading.Event()
    calls: list[str] = []

    def stuck(abandoned: threading.Event) -> str:
        calls.append("stuck")
        release.wait(timeout=60)
        if abandoned.is_set():
            abandoned_seen.set()
        return "late"

    try:
        with pytest.raises(base.BackendTimeout, match=r"w: timed out after 0\.2s") as first:
            await runner.run(stuck, key="k", timeout=0.2, what="w")
        assert not isinstance(first.value, _exec.WorkerBusy)
        assert runner.busy("k")

        with pytest.raises(_exec.WorkerBusy, match="previous worker for k still running"):
            await runner.run(stuck, key="k", timeout=0.2, what="w")
        assert calls == ["stuck"]  # no second worker

        # Another key is not affected.
        assert await runner.run(lambda _: "ok", key="other", timeout=TIMEOUT, what="w") == "ok"
    finally:
        release.set()
    # The next call waits for the abandoned worker to return, then runs.
    assert await runner.run(lambda _: "fresh", key="k", timeout=TIMEOUT, what="w") == "fresh"
    assert abandoned_seen.is_set()
    assert not runner.busy("k")


async def test_thread_runner_runs_one_worker_per_key_at_a_time() -> None:
    runner = _exec.ThreadRunner(name="t")
    lock = threading.Lock()
    state = {"now": 0, "max": 0}

    def work(_: threading.Event) -> None:
        with lock:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
        threading.Event().wait(0.02)
        with lock:
            state["now"] -= 1

    await asyncio.gather(*(runner.run(work, key="k", timeout=TIMEOUT, what="w") for _ in range(4)))
    assert state == {"now": 0, "max": 1}


async def test_thread_runner_cancellation_marks_the_worker_abandoned() -> None:
    runner = _exec.ThreadRunner(name="t")
    started = threading.Event()
    release = threading.Event()
    saw_abandoned = threading.Event()

    def work(abandoned: threading.Event) -> None:
        started.set()
        release.wait(timeout=60)
        if abandoned.is_set():
            saw_abandoned.set()

    task = asyncio.create_task(runner.run(work, key="k", timeout=TIMEOUT, what="w"))
    try:
        assert await asyncio.to_thread(started.wait, TIMEOUT)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        release.set()
    await runner.run(lambda _: None, key="k", timeout=TIMEOUT, what="w")  # waits for it
    assert saw_abandoned.is_set()


def test_worker_threads_are_daemons() -> None:
    # A thread stuck in the kernel must never block interpreter exit.
    seen: list[bool] = []

    async def main() -> None:
        runner = _exec.ThreadRunner(name="t")
        await runner.run(
            lambda _: seen.append(threading.current_thread().daemon), key="k", timeout=5, what="w"
        )

    asyncio.run(main())
    assert seen == [True]


def test_worker_abandoned_by_a_closed_loop_blocks_its_key_until_it_returns() -> None:
    # A backend outliving its event loop (tests, a restarted loop): the stuck
    # worker cannot notify the new loop, so its key reports busy until it returns,
    # and its late result, delivered to a closed loop, is dropped quietly.
    runner = _exec.ThreadRunner(name="t")
    release = threading.Event()
    returned = threading.Event()
    calls: list[str] = []

    def stuck(_: threading.Event) -> None:
        calls.append("stuck")
        release.wait(timeout=60)
        returned.set()

    async def first() -> None:
        with pytest.raises(base.BackendTimeout):
            await runner.run(stuck, key="k", timeout=0.1, what="w")

    async def second() -> None:
        with pytest.raises(_exec.WorkerBusy):
            await runner.run(stuck, key="k", timeout=TIMEOUT, what="w")

    asyncio.run(first())
    try:
        asyncio.run(second())
    finally:
        release.set()
    assert returned.wait(timeout=TIMEOUT)
    for _ in range(1000):  # the runner marks the worker returned just after fn returns
        if not runner.busy("k"):
            break
        threading.Event().wait(0.01)
    assert not runner.busy("k")
    assert calls == ["stuck"]

    async def third() -> str:
        return await runner.run(lambda _: "ok", key="k", timeout=TIMEOUT, what="w")

    assert asyncio.run(third()) == "ok"
