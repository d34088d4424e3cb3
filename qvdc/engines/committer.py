"""Group commit of host-status writes.

Heartbeats from thousands of hosts produce a trickle of *material* changes;
writing each in its own etcd request would cost one round trip and one fsync
per change. Instead the intake ``submit()``s the new value of a key (sync,
cheap) and one background task commits whatever accumulated in a single
multi-op transaction (at most ``max_ops`` puts/deletes, etcd's default limit
being 128) after a short ``delay``.

What waits to be written lives in a :class:`WriteBuffer`. The default,
:class:`CoalescingBuffer`, keeps the latest value per key, so a key submitted
twice before a commit is written once, with its last value. (The benchmark's
naive baseline passes a buffer that keeps every submission.)

Cases:

* a commit fails (etcd down, timeout) -> the batch is put back (newer submits
  for the same key win) and retried with capped backoff; nothing is dropped;
* the task is cancelled (shutdown) -> a batch in flight is put back (its fate
  is unknown; writing it again is harmless), then **every** pending write is
  committed in batches of ``max_ops``, retried, for at most ``flush_timeout``
  seconds. Whatever is still pending after that is logged with its count (a
  restarted node re-sends full reports, so it is not lost for good);
* cancelled again during that flush (a forced exit) -> the flush stops, the
  count of what is left is logged, and the cancellation propagates.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import Protocol

from qvdc.kits.backoff import Backoff
from qvdc.store.etcd import EtcdStore, Op, StoreError

log = logging.getLogger(__name__)

Write = tuple[str, bytes | None]
"""``(key, value)``: a put of ``value``, or a delete when ``value`` is None."""


class WriteBuffer(Protocol):
    """The writes waiting to be committed."""

    def add(self, key: str, value: bytes | None) -> None:
        """Queue a put (``value``) or a delete (``None``) of ``key``."""

    def take(self, limit: int) -> list[Write]:
        """Remove and return at most ``limit`` writes, oldest first, no key twice."""

    def put_back(self, batch: list[Write]) -> None:
        """Return a batch taken by :meth:`take` that was not committed, to be taken first."""

    def __len__(self) -> int:
        """Writes waiting."""


class CoalescingBuffer:
    """The latest value per key, in the order keys were first submitted."""

    def __init__(self) -> None:
        # Batches are taken from the order, never by iterating the dict: iteration would
        # walk every slot the dict ever filled, and after a fleet's first full reports
        # (hundreds of thousands of keys) that cost every later commit about a millisecond.
        self._pending: dict[str, bytes | None] = {}
        self._order: collections.deque[str] = collections.deque()

    def add(self, key: str, value: bytes | None) -> None:
        if key not in self._pending:
            self._order.append(key)
        self._pending[key] = value

    def take(self, limit: int) -> list[Write]:
        pending, order = self._pending, self._order
        batch: list[Write] = []
        for _ in range(min(limit, len(order))):
            key = order.popleft()
            batch.append((key, pending.pop(key)))
        if not pending:
            # A dict does not shrink as keys are popped: start a fresh one once drained,
            # so nothing keeps a burst's table.
            self._pending = {}
        return batch

    def put_back(self, batch: list[Write]) -> None:
        for key, value in reversed(batch):
            if key not in self._pending:  # else a newer value was submitted meanwhile
                self._pending[key] = value
                self._order.appendleft(key)

    def __len__(self) -> int:
        return len(self._pending)


class GroupCommitter:
    def __init__(
        self,
        *,
        store: EtcdStore,
        delay: float,
        max_ops: int,
        timeout: float,
        flush_timeout: float,
        buffer: WriteBuffer | None = None,
    ) -> None:
        self._store = store
        self._delay = delay
        self._max_ops = max_ops
        self._timeout = timeout
        self._flush_timeout = flush_timeout
        self._buffer: WriteBuffer = CoalescingBuffer() if buffer is None else buffer
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        #: Counters for tests and the benchmark.
        self.ops_committed = 0
        self.txns_committed = 0

    def submit(self, key: str, value: bytes | None) -> None:
        """Queue a put (``value``) or a delete (``None``) of ``key``."""
        self._buffer.add(key, value)
        self._idle.clear()
        self._wakeup.set()

    @property
    def backlog(self) -> int:
        """Writes submitted and not yet committed (a batch in flight excluded)."""
        return len(self._buffer)

    async def flushed(self, *, timeout: float) -> None:
        """Wait until everything submitted so far is committed."""
        async with asyncio.timeout(timeout):
            await self._idle.wait()

    async def _commit(self, batch: list[Write], *, timeout: float) -> None:
        ops = [Op.put(k, v) if v is not None else Op.delete(k) for k, v in batch]
        await self._store.txn(compares=(), success=ops, timeout=timeout)
        self.ops_committed += len(ops)
        self.txns_committed += 1

    async def run(self) -> None:
        """Commit what is submitted until cancelled; then flush it all (module docstring)."""
        backoff = Backoff(initial=0.05, maximum=2.0)
        buffer = self._buffer
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup.clear()
                if self._delay:
                    await asyncio.sleep(self._delay)
                while buffer:
                    batch = buffer.take(self._max_ops)
                    try:
                        await self._commit(batch, timeout=self._timeout)
                    except StoreError as exc:
                        buffer.put_back(batch)
                        delay = backoff.next()
                        log.warning(
                            "host-status commit of %d ops failed (%s); retrying in %.2fs",
                            len(batch),
                            exc,
                            delay,
                        )
                        await asyncio.sleep(delay)
                    except BaseException:
                        buffer.put_back(batch)  # cancelled mid-commit: write it again below
                        raise
                    else:
                        backoff.reset()
                if not buffer:
                    self._idle.set()
        finally:
            await self._flush_all()

    async def _flush_all(self) -> None:
        """Commit every pending write, retrying, for at most ``flush_timeout`` seconds."""
        buffer = self._buffer
        if not buffer:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._flush_timeout
        backoff = Backoff(initial=0.05, maximum=1.0)
        written, why = 0, f"not written within {self._flush_timeout:g} s"
        log.info("flushing %d host-status writes before stopping", len(buffer))
        try:
            while buffer and (remaining := deadline - loop.time()) > 0:
                batch = buffer.take(self._max_ops)
                try:
                    await self._commit(batch, timeout=min(self._timeout, remaining))
                except StoreError as exc:
                    buffer.put_back(batch)
                    why = f"not written within {self._flush_timeout:g} s; last error: {exc}"
                    await asyncio.sleep(min(backoff.next(), max(0.0, deadline - loop.time())))
                except BaseException:
                    buffer.put_back(batch)
                    why = "the flush was cancelled (forced exit)"
                    raise
                else:
                    written += len(batch)
                    backoff.reset()
        finally:
            if buffer:
                log.warning(
                    "stopping with %d host-status writes lost (%d written): %s",
                    len(buffer),
                    written,
                    why,
                )
            else:
                self._idle.set()
                log.info("flushed %d host-status writes", written)
