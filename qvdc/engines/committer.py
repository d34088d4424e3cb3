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

* a commit fails because etcd is unreachable or slow (``StoreUnavailable``) -> the
  batch is put back (newer submits for the same key win) and retried with capped
  backoff; nothing is dropped;
* etcd *refuses* a commit (any other ``StoreError``: a request too large, a bad key)
  -> retrying it unchanged would fail for ever and hold every other host's write
  behind it (a poison pill). The batch is bisected until the refused ops are alone;
  each is dropped with one WARNING, and ``on_refused(key, reason)`` may give a small
  value to write in its place (the intake writes an ERROR row, so the host's row does
  not keep showing its last accepted report). The rest of the batch lands;
* a transaction is kept under ``max_txn_bytes`` (keys and values), so a batch of large
  rows is split instead of refused by etcd's request limit (1.5 MiB by default).
  :attr:`GroupCommitter.max_op_bytes` is the largest single write: ``submit`` refuses
  a larger one at once (lengths of the bytes already encoded, like etcd's refusal
  above); the intake checks first so its own row says why;
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
from collections.abc import Callable
from typing import Protocol

from qvdc.kits.backoff import Backoff
from qvdc.store.etcd import EtcdStore, Op, StoreError, StoreUnavailable

log = logging.getLogger(__name__)

Write = tuple[str, bytes | None]
"""``(key, value)``: a put of ``value``, or a delete when ``value`` is None."""

RefusedHandler = Callable[[str, str], bytes | None]
"""``on_refused(key, reason)``: what to write at ``key`` instead of a write etcd refused
(None: nothing)."""

#: etcd's default ``--max-request-bytes`` is 1.5 MiB; a transaction stays well under it.
DEFAULT_MAX_TXN_BYTES = 1024 * 1024
#: The largest single host-status row worth writing (a normal one is under 1 KB).
DEFAULT_MAX_OP_BYTES = 256 * 1024


def _size(write: Write) -> int:
    key, value = write
    return len(key) + (len(value) if value is not None else 0)


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
        max_txn_bytes: int = DEFAULT_MAX_TXN_BYTES,
        max_op_bytes: int = DEFAULT_MAX_OP_BYTES,
        on_refused: RefusedHandler | None = None,
    ) -> None:
        if not 0 < max_op_bytes <= max_txn_bytes:
            raise ValueError(f"need 0 < max_op_bytes ({max_op_bytes}) <= max_txn_bytes")
        self._store = store
        self._max_txn_bytes = max_txn_bytes
        #: The largest write :meth:`submit` should be given (module docstring).
        self.max_op_bytes = max_op_bytes
        #: Called for each write etcd refused (module docstring); settable after construction.
        self.on_refused = on_refused
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
        self.ops_refused = 0

    def submit(self, key: str, value: bytes | None) -> None:
        """Queue a put (``value``) or a delete (``None``) of ``key``.

        A put over ``max_op_bytes`` (key and value, already encoded: two lengths
        compared) is refused here as etcd would refuse it: one WARNING, and
        ``on_refused``'s replacement is queued instead, or nothing."""
        if value is not None and len(key) + len(value) > self.max_op_bytes:
            size = len(key) + len(value)
            self.ops_refused += 1
            log.warning(
                "%s: a write of %d bytes is over %d; dropping it", key, size, self.max_op_bytes
            )
            value = (
                self.on_refused(key, f"its write of {size} bytes is over {self.max_op_bytes}")
                if self.on_refused is not None
                else None
            )
            if value is None or len(key) + len(value) > self.max_op_bytes:
                return
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

    def _take(self) -> list[Write]:
        """The next batch: at most ``max_ops`` writes and ``max_txn_bytes`` (at least one)."""
        batch = self._buffer.take(self._max_ops)
        total = 0
        for i, write in enumerate(batch):
            total += _size(write)
            if total > self._max_txn_bytes and i > 0:
                self._buffer.put_back(batch[i:])
                return batch[:i]
        return batch

    async def _commit(self, batch: list[Write], *, timeout: float) -> None:
        """Commit ``batch``; ops etcd refuses are isolated and dropped (module docstring).

        Raises ``StoreUnavailable`` (etcd unreachable or slow) with nothing of the batch
        known to be written; the caller puts it back."""
        try:
            await self._commit_txn(batch, timeout=timeout)
        except StoreUnavailable:
            raise
        except StoreError as exc:
            if len(batch) == 1:
                await self._refused(batch[0], exc, timeout=timeout)
                return
            middle = len(batch) // 2
            first, rest = batch[:middle], batch[middle:]
            try:
                await self._commit(first, timeout=timeout)
            except _Partial:
                self._buffer.put_back(rest)  # part of ``first`` landed; the rest goes back
                raise
            try:
                await self._commit(rest, timeout=timeout)
            except _Partial:
                raise
            except StoreUnavailable:
                self._buffer.put_back(rest)  # ``first`` landed: only the rest goes back
                raise _Partial() from None

    async def _commit_txn(self, batch: list[Write], *, timeout: float) -> None:
        ops = [Op.put(k, v) if v is not None else Op.delete(k) for k, v in batch]
        await self._store.txn(compares=(), success=ops, timeout=timeout)
        self.ops_committed += len(ops)
        self.txns_committed += 1

    async def _refused(self, write: Write, exc: StoreError, *, timeout: float) -> None:
        key, value = write
        self.ops_refused += 1
        size = _size(write)
        log.warning("etcd refused the write of %s (%d bytes); dropping it: %s", key, size, exc)
        replacement = (
            self.on_refused(key, f"refused by etcd ({size} bytes)")
            if (self.on_refused is not None and value is not None)
            else None
        )
        if replacement is None or replacement == value:
            return
        try:
            await self._commit_txn([(key, replacement)], timeout=timeout)
        except StoreUnavailable:
            self._buffer.put_back([(key, replacement)])
            raise _Partial() from None
        except StoreError as again:
            log.warning("etcd refused the replacement of %s too; dropping it: %s", key, again)

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
                    batch = self._take()
                    try:
                        await self._commit(batch, timeout=self._timeout)
                    except StoreUnavailable as exc:
                        if not isinstance(exc, _Partial):
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
                batch = self._take()
                try:
                    await self._commit(batch, timeout=min(self._timeout, remaining))
                except StoreUnavailable as exc:
                    if not isinstance(exc, _Partial):
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


class _Partial(StoreUnavailable):
    """etcd became unreachable part-way through an isolated batch; what did not land was
    put back already."""

    def __init__(self) -> None:
        super().__init__("etcd became unreachable while a refused batch was being isolated")
