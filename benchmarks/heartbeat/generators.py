"""The load-generator processes (multiprocessing, spawn) and how work is split among them.

Each generator (:func:`benchmarks.heartbeat.loadgen.generator_main`) simulates a
share of the hosts. :meth:`GeneratorPool.call` sends one command to every
generator, with one keyword dict each, relays their progress messages, and
gathers their answers (plain dicts: they cross a pipe), bounded by a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any

from benchmarks.heartbeat import loadgen


class GeneratorError(RuntimeError):
    """A load-generator process failed; the message carries its traceback."""


class GeneratorPool:
    """The load-generator processes (multiprocessing, spawn) and their command pipes."""

    def __init__(self, count: int, *, seed: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conns: list[Connection] = []
        self._procs: list[Any] = []
        for gen_id in range(count):
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=loadgen.generator_main,
                args=(child, gen_id, seed),
                name=f"loadgen-{gen_id}",
                daemon=True,
            )
            proc.start()
            child.close()
            self._conns.append(parent)
            self._procs.append(proc)

    def __len__(self) -> int:
        return len(self._conns)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs]

    async def call(
        self,
        command: str,
        kwargs: Sequence[dict[str, Any]],
        *,
        timeout: float,
        on_progress: Callable[[int], None] | None = None,
    ) -> list[dict[str, Any]]:
        """Send ``command`` to every generator (one kwargs dict each) and gather the answers."""
        for conn, kw in zip(self._conns, kwargs, strict=True):
            conn.send((command, kw))
        results: list[dict[str, Any] | None] = [None] * len(self._conns)
        pending = set(range(len(self._conns)))
        deadline = time.monotonic() + timeout
        while pending:
            for i in sorted(pending):
                conn = self._conns[i]
                while conn.poll():
                    kind, payload = conn.recv()
                    if kind == "progress":
                        if on_progress is not None:
                            on_progress(payload)
                        continue
                    if kind == "error":
                        raise GeneratorError(f"generator {i} failed in {command}:\n{payload}")
                    results[i] = payload
                    pending.discard(i)
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(f"generators did not finish {command} within {timeout:.0f} s")
            await asyncio.sleep(0.02)
        return [r for r in results if r is not None]

    def stop(self) -> None:
        for conn in self._conns:
            with contextlib.suppress(OSError, BrokenPipeError):
                conn.send(("exit", {}))
        for proc in self._procs:
            proc.join(timeout=15)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)


def split(items: Sequence[Any], parts: int) -> list[list[Any]]:
    """``items`` in ``parts`` contiguous chunks of nearly equal size (order kept)."""
    size, extra = divmod(len(items), parts)
    out, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        out.append(list(items[start:end]))
        start = end
    return out
