"""The heartbeat loop, shaped like the Kubernetes node-lease controller.

``run()`` is a jittered, sliding-interval loop around ``sync()``; ``sync()``
sends one heartbeat and waits for its acknowledgement. The cheap path is the
open StreamHeartbeat session; when there is none, ``sync()`` first makes sure
the node is registered (:meth:`Heartbeater.ensure_registered`, capped
exponential backoff 100 ms -> 7 s) and opens one. Any failure closes the
session; ``run()`` then retries after a backoff (same schedule), while the
client fails over to the next controller endpoint and rebuilds its channel
after repeated failures.

The session (one open stream):

* A separate reader task receives every response, because the controller
  also *pushes* unsolicited responses (assignment or pool-definition
  changes) at any time between heartbeats. Every acknowledged answer and
  every push hands its assignments to the reconciler: ``assigned_pool_ids``
  is authoritative, ``assigned_pools`` brings definitions when they changed
  (ids without a new definition keep the one held). An empty list means
  "detach everything", deliberately unlike upstream.
* The controller's requests arrive on the same stream, each in a response of its own
  (``acknowledged=false``, sequence 0, no assignment): ``reattach_pool_ids``
  (ReconnectPool) makes the reconciler detach and attach those pools at once;
  ``list_files`` (ListPoolFiles) is answered by a task of its own
  (:mod:`node.files`, at most ``_MAX_ANSWERS`` at once) with one stream message carrying
  only ``list_files_result``, sent under the stream's send lock so its frames never
  interleave with a heartbeat's.
* ``sequence`` counts heartbeats on the stream from 1; a heartbeat is
  *acknowledged* when a response carrying its sequence arrives. ``sync()``
  waits for that at most ``rpc_timeout`` seconds; a missing acknowledgement
  means a dead controller or connection, so the session is dropped.

What a heartbeat carries (the delta protocol, DESIGN section 4):

* the first heartbeat of a session is FULL (``delta=false``, every report);
* after that, heartbeats are deltas (``delta=true``): only the reports that
  changed *materially* (:func:`qvdc.kits.materiality.is_material_change`, the
  controller's own rule) since the last **acknowledged** heartbeat, plus
  ``removed_pool_ids`` for pools reported then and gone now. The baseline
  moves only on acknowledgement, so a lost heartbeat is resent in substance;
* a response with ``request_full_sync=true`` (answer or push) makes the next
  heartbeat FULL; a push asking for it also triggers that heartbeat at once;
* ``heartbeat_interval_secs > 0`` in a response becomes the interval.

An extra heartbeat goes out immediately when :attr:`Heartbeater.wakeup` is
set: the reconciler sets it when a pool's health or the set of pools
changes (the probe loop feeds it at ``probe_interval``), and the reader sets
it when the stream breaks, so the loop reconnects without waiting out the
interval.

If the controller does not implement StreamHeartbeat (an upstream
controller answers UNIMPLEMENTED), the loop falls back to the unary
``UpdateHeartbeat`` with full reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from node import client as client_mod
from node import convert, files, hostfacts
from node import pools as pools_mod
from node import settings as settings_mod
from qvdc.kits import backoff, materiality, tasks, timing
from storage_backends import base

_MIN_INTERVAL = 0.05
#: Listings (ListPoolFiles) this host answers at once; more are told UNAVAILABLE.
_MAX_ANSWERS = 4
_MAX_INTERVAL = 3600.0


def _load_average() -> tuple[float, float, float]:
    try:
        return os.getloadavg()
    except OSError:
        return (0.0, 0.0, 0.0)


@dataclass(slots=True)
class HeartbeatStats:
    """Counters for status output and tests."""

    registrations: int = 0
    sessions: int = 0
    sent: int = 0
    full: int = 0
    delta: int = 0
    acknowledged: int = 0
    pushes: int = 0
    failures: int = 0


@dataclass(slots=True)
class _Session:
    """One open StreamHeartbeat call and its bookkeeping."""

    stream: client_mod.HeartbeatStream
    stack: contextlib.AsyncExitStack
    reader: asyncio.Task[None] | None = None
    sequence: int = 0
    pending: dict[int, asyncio.Future[convert.HeartbeatReply]] = field(default_factory=dict)
    failure: client_mod.ControllerError | None = None
    #: A heartbeat on this stream has been acknowledged.
    confirmed: bool = False
    #: Answers to the controller's requests (node.files) being prepared or sent.
    answers: set[asyncio.Task[None]] = field(default_factory=set)

    def fail(self, exc: client_mod.ControllerError) -> None:
        """Mark the session broken and fail every heartbeat waiting for an ack."""
        if self.failure is None:
            self.failure = exc
        for future in self.pending.values():
            if not future.done():
                future.set_exception(exc)


class Heartbeater:
    """Registers the node and keeps it heartbeating; see the module docstring."""

    def __init__(
        self,
        *,
        settings: settings_mod.NodeSettings,
        client: client_mod.ControllerClient,
        pools: pools_mod.PoolManager,
        facts: hostfacts.HostFactsCollector,
        store: pools_mod.StateStore,
        logger: logging.Logger,
        rng: random.Random | None = None,
        load_average: Callable[[], tuple[float, float, float]] = _load_average,
    ) -> None:
        self._settings = settings
        self._client = client
        self._pools = pools
        self._facts = facts
        self._store = store
        self._logger = logger
        self._rng = rng or random.Random()
        self._load_average = load_average
        #: Set to send a heartbeat now (health change, stream failure, push).
        self.wakeup = asyncio.Event()
        self.stats = HeartbeatStats()
        self._interval = settings.heartbeat_interval
        self._node_id: str | None = None
        self._registered = False
        self._session: _Session | None = None
        self._unary = False
        self._unary_sequence = 0
        self._unary_endpoint: str | None = None
        #: Reports as of the last acknowledged heartbeat; None: next must be full.
        self._acked: dict[str, base.PoolInfo] | None = None
        #: Full-sync requests received / served (a request arriving while a
        #: full heartbeat is in flight is not lost).
        self._full_requests = 0
        self._full_requests_served = 0
        self._warned_missing: set[str] = set()
        self._files = files.FileLister()

    # -- read-only state -------------------------------------------------------------------

    @property
    def node_id(self) -> str | None:
        """The node id (persisted or registered), None before either."""
        return self._node_id

    @property
    def interval(self) -> float:
        """The current heartbeat interval in seconds (the controller may change it)."""
        return self._interval

    @property
    def connected_endpoint(self) -> str | None:
        """Endpoint of the healthy open stream (or of the last unary success)."""
        if self._unary:
            return self._unary_endpoint
        session = self._session
        if session is not None and session.failure is None and session.confirmed:
            return session.stream.endpoint
        return None

    @property
    def acked_reports(self) -> dict[str, base.PoolInfo]:
        """The reports the controller is known to hold (a test hook)."""
        return dict(self._acked or {})

    # -- start-up --------------------------------------------------------------------------

    async def load(self) -> None:
        """Adopt the node id persisted by an earlier run (shown until we register)."""
        self._node_id = await self._store.load_node_id()
        if self._node_id:
            self._logger.info(
                "last known node id %s (from %s)", self._node_id, self._store.node_id_path
            )

    async def ensure_registered(self) -> str:
        """Register unless this process already has; returns the node id.

        Retries for ever with capped exponential backoff (``reconnect_initial``
        doubling to ``reconnect_max``); every attempt is bounded by the RPC
        timeout and fails over to the next endpoint on transport errors.
        """
        if self._registered and self._node_id is not None:
            return self._node_id
        delays = backoff.Backoff(
            initial=self._settings.reconnect_initial,
            maximum=self._settings.reconnect_max,
            rng=self._rng,
        )
        while True:
            try:
                node_id = await self._client.register(
                    hostname=self._settings.hostname,
                    management_ip=self._settings.management_ip,
                    labels=self._settings.labels,
                    facts=self._facts.latest,
                    heartbeat_interval=self._settings.heartbeat_interval,
                )
            except client_mod.ControllerError as exc:
                delay = delays.next()
                self._logger.warning(
                    "%s (%s); retrying in %.1fs",
                    "controller unreachable"
                    if isinstance(exc, client_mod.ControllerUnavailable)
                    else "controller refused the registration",
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                continue
            break
        previous, self._node_id, self._registered = self._node_id, node_id, True
        self.stats.registrations += 1
        if previous and previous != node_id:
            self._logger.warning("controller assigned a new node id %s (was %s)", node_id, previous)
        self._logger.info(
            "registered as %s (hostname %s) with controller %s",
            node_id,
            self._settings.hostname,
            self._client.endpoint,
        )
        if previous != node_id:
            try:
                await self._store.save_node_id(node_id)
            except (OSError, TimeoutError) as exc:
                self._logger.warning("cannot save node id to %s: %s", self._store.node_id_path, exc)
        return node_id

    # -- the loop --------------------------------------------------------------------------

    async def run(self) -> None:
        """Heartbeat for ever (until cancelled); never raises for controller trouble."""
        delays = backoff.Backoff(
            initial=self._settings.reconnect_initial,
            maximum=self._settings.reconnect_max,
            rng=self._rng,
        )
        waiting_logged = False
        try:
            while True:
                try:
                    await self.sync()
                except client_mod.ControllerError as exc:
                    self.stats.failures += 1
                    if self._handle_failure(exc):
                        continue
                    delay = delays.next()
                    if isinstance(exc, client_mod.CertificatePending):
                        # Once at WARNING (a host can wait hours for its certificate).
                        level = logging.DEBUG if waiting_logged else logging.WARNING
                        waiting_logged = True
                        self._logger.log(level, "waiting for this node's certificate: %s", exc)
                    else:
                        self._logger.warning(
                            "controller unreachable (%s); retrying in %.1fs", exc, delay
                        )
                    await asyncio.sleep(delay)
                    continue
                delays.reset()
                await timing.sleep(self._next_interval(), wakeup=self.wakeup)
        finally:
            await self.close()

    def _handle_failure(self, exc: client_mod.ControllerError) -> bool:
        """React to a failed sync; returns True to retry at once (no backoff).

        Cases:
        * NOT_FOUND: the controller forgot this node -> register again (backoff
          applies: a controller that keeps forgetting must not be hammered);
        * UNIMPLEMENTED on the stream: an upstream controller -> switch to the
          unary heartbeat and retry now;
        * unreachable while on the unary fallback: the next controller may
          speak StreamHeartbeat again, so try it first (after the backoff);
        * anything else: just back off and retry.
        """
        if isinstance(exc, client_mod.ControllerUnavailable) and self._unary:
            self._unary = False
            return False
        if isinstance(exc, client_mod.NodeUnknown):
            self._logger.warning(
                "controller %s does not know node %s; registering again",
                exc.endpoint,
                self._node_id,
            )
            self._registered = False
            return False
        if isinstance(exc, client_mod.Rejected) and exc.unimplemented and not self._unary:
            self._logger.warning(
                "controller %s has no StreamHeartbeat; using unary UpdateHeartbeat", exc.endpoint
            )
            self._unary = True
            return True
        return False

    def _next_interval(self) -> float:
        """The sliding interval, shortened by up to ``heartbeat_jitter`` (never lengthened)."""
        return self._interval * (1 - self._settings.heartbeat_jitter * self._rng.random())

    async def sync(self) -> None:
        """Send one heartbeat and wait for its acknowledgement.

        Opens a session first if there is none (registering if needed).
        Raises :class:`~node.client.ControllerError`; the session is closed
        on any failure, so the next call starts afresh with a FULL heartbeat.
        """
        if self._unary:
            await self._sync_unary()
            return
        session = self._session
        if session is not None and session.failure is not None:
            # The stream broke between heartbeats: report it, so the caller
            # backs off before reconnecting (a controller that accepts and
            # then drops streams must not be hammered).
            failure = session.failure
            await self.close()
            raise failure
        if session is None:
            await self.ensure_registered()
            session = await self._open_session()
        heartbeat, served = self._compose(sequence=session.sequence + 1)
        session.sequence = heartbeat.sequence
        future: asyncio.Future[convert.HeartbeatReply] = asyncio.get_running_loop().create_future()
        session.pending[heartbeat.sequence] = future
        try:
            await session.stream.send(heartbeat)
            self._count_sent(heartbeat)
            try:
                async with asyncio.timeout(self._settings.rpc_timeout):
                    reply = await future
            except TimeoutError:
                session.stream.mark_failed()
                raise client_mod.ControllerUnavailable(
                    f"no acknowledgement of heartbeat {heartbeat.sequence} from "
                    f"{session.stream.endpoint} within {self._settings.rpc_timeout:g}s",
                    endpoint=session.stream.endpoint,
                ) from None
        except client_mod.ControllerError as exc:
            session.fail(exc)
            await self.close()
            raise
        finally:
            session.pending.pop(heartbeat.sequence, None)
        session.confirmed = True
        self._on_acknowledged(heartbeat, reply, served=served)

    async def _sync_unary(self) -> None:
        """One upstream-style unary heartbeat (always full)."""
        await self.ensure_registered()
        self._unary_sequence += 1
        heartbeat, served = self._compose(sequence=self._unary_sequence, force_full=True)
        try:
            reply = await self._client.update_heartbeat(heartbeat)
        except BaseException:
            self._unary_endpoint = None  # the last call failed: connected to nothing
            raise
        self._unary_endpoint = self._client.endpoint
        self._count_sent(heartbeat)
        self._apply_reply(reply)
        self._on_acknowledged(heartbeat, reply, served=served)

    def _count_sent(self, heartbeat: convert.Heartbeat) -> None:
        self.stats.sent += 1
        if heartbeat.delta:
            self.stats.delta += 1
        else:
            self.stats.full += 1

    # -- composing and acknowledging -------------------------------------------------------

    def _compose(self, *, sequence: int, force_full: bool = False) -> tuple[convert.Heartbeat, int]:
        """Decide what the next heartbeat says; returns (heartbeat, full-sync
        requests it serves). Pure bookkeeping, no I/O.

        Cases:
        * no acknowledged baseline (new session), a pending full-sync request,
          or ``force_full`` -> FULL: every current report;
        * otherwise -> DELTA: reports that changed materially since the last
          acknowledged heartbeat, and ids reported then but gone now.
        """
        assert self._node_id is not None, "compose before registration"
        current = self._pools.reports()
        requests = self._full_requests
        full = force_full or self._acked is None or requests != self._full_requests_served
        if full:
            reports = tuple(current.values())
            removed: tuple[str, ...] = ()
        else:
            acked = self._acked or {}
            reports = tuple(
                info
                for pool_id, info in current.items()
                if materiality.is_material_change(
                    acked.get(pool_id),
                    info,
                    fraction=self._settings.material_fraction,
                    min_bytes=self._settings.material_min_bytes,
                )
            )
            removed = tuple(sorted(pool_id for pool_id in acked if pool_id not in current))
        heartbeat = convert.Heartbeat(
            node_id=self._node_id,
            sequence=sequence,
            delta=not full,
            pools=reports,
            removed_pool_ids=removed,
            facts=self._facts.latest,
            load=self._load_average(),
        )
        return heartbeat, requests

    def _on_acknowledged(
        self, heartbeat: convert.Heartbeat, reply: convert.HeartbeatReply, *, served: int
    ) -> None:
        """Move the baseline to what the controller now holds.

        Cases:
        * ``acknowledged=false``: the controller did not take it -> keep the
          old baseline and make the next heartbeat FULL;
        * FULL acknowledged -> the baseline is exactly what was sent;
        * DELTA acknowledged -> the baseline gains the sent reports and loses
          the removed ids.
        """
        if not reply.acknowledged:
            self._logger.warning(
                "controller did not acknowledge heartbeat %d; next one is full", heartbeat.sequence
            )
            self._acked = None
            return
        self.stats.acknowledged += 1
        if heartbeat.delta and self._acked is not None:
            for info in heartbeat.pools:
                self._acked[info.pool_id] = info
            for pool_id in heartbeat.removed_pool_ids:
                self._acked.pop(pool_id, None)
        else:
            self._acked = {info.pool_id: info for info in heartbeat.pools}
            self._full_requests_served = served

    def _apply_reply(self, reply: convert.HeartbeatReply) -> None:
        """Take in everything a response says except the acknowledgement itself."""
        if reply.interval is not None:
            interval = min(max(reply.interval, _MIN_INTERVAL), _MAX_INTERVAL)
            if interval != self._interval:
                self._logger.info(
                    "heartbeat interval set to %gs by the controller (was %gs)",
                    interval,
                    self._interval,
                )
                self._interval = interval
        if reply.request_full_sync:
            self._full_requests += 1
            if reply.unsolicited:
                self.wakeup.set()  # the controller wants it now, not at the next tick
        if reply.unsolicited:
            self.stats.pushes += 1
        if reply.acknowledged or reply.unsolicited:
            desired, rejected = self._assignments_from(reply)
            self._pools.set_desired(desired, rejected=rejected)

    def _assignments_from(
        self, reply: convert.HeartbeatReply
    ) -> tuple[dict[str, base.PoolSpec], dict[str, str]]:
        """The desired pools and unusable definitions a response implies.

        ``assigned_pool_ids`` is authoritative; definitions may be missing for
        ids whose definition did not change (QvDC sends them only when the
        assignment signature changed; an upstream controller never does).
        Cases, per assigned id:
        * a definition in this response -> use it (or its refusal reason);
        * no definition, but we hold one (or a refusal) -> keep what we hold;
        * no definition and nothing held -> warn once; nothing to attach.
        A response with definitions but no id list is taken at its definitions.
        """
        desired = dict(reply.assigned)
        rejected = dict(reply.invalid)
        known = self._pools.desired
        known_rejected = self._pools.rejected
        for pool_id in reply.assigned_ids:
            if pool_id in desired or pool_id in rejected:
                continue
            if pool_id in known:
                desired[pool_id] = known[pool_id]
            elif pool_id in known_rejected:
                rejected[pool_id] = known_rejected[pool_id]
            elif pool_id not in self._warned_missing:
                self._warned_missing.add(pool_id)
                self._logger.warning(
                    "pool %s is assigned but the controller sent no definition for it", pool_id
                )
        return desired, rejected

    # -- the session -----------------------------------------------------------------------

    async def _open_session(self) -> _Session:
        stack = contextlib.AsyncExitStack()
        try:
            stream = await stack.enter_async_context(self._client.heartbeat_stream())
        except BaseException:
            await stack.aclose()
            raise
        session = _Session(stream=stream, stack=stack)
        session.reader = tasks.create_guarded_task(
            self._read(session), name="heartbeat-reader", logger=self._logger, eternal=False
        )
        self._session = session
        self._acked = None  # a new stream starts with a FULL heartbeat
        self.stats.sessions += 1
        self._logger.info("heartbeat stream open to controller %s", stream.endpoint)
        return session

    async def _read(self, session: _Session) -> None:
        """Receive responses until the stream breaks; then fail the session and wake the loop."""
        try:
            while True:
                reply = await session.stream.recv()
                if reply.list_files is not None or reply.reattach:
                    self._serve_request(session, reply)
                self._apply_reply(reply)
                if reply.sequence:
                    future = session.pending.get(reply.sequence)
                    if future is not None and not future.done():
                        future.set_result(reply)
        except client_mod.ControllerError as exc:
            self._logger.info("heartbeat stream to %s ended: %s", session.stream.endpoint, exc)
            session.fail(exc)
            self.wakeup.set()
        except Exception as exc:  # a bug here must still end the session, not hang it
            self._logger.exception("reading the heartbeat stream failed")
            session.fail(
                client_mod.ControllerUnavailable(
                    f"reading the heartbeat stream failed: {exc!r}",
                    endpoint=session.stream.endpoint,
                )
            )
            self.wakeup.set()

    # -- the controller's requests on the stream ------------------------------------------

    def _serve_request(self, session: _Session, reply: convert.HeartbeatReply) -> None:
        """A request from the controller (sent alone on the stream): re-attach pools at
        once, or list a pool's directory and answer on the same stream."""
        if reply.reattach:
            self._pools.reattach(reply.reattach)
        question = reply.list_files
        if question is None:
            return
        if len(session.answers) >= _MAX_ANSWERS:
            busy = files.ListingError(
                files.Code.UNAVAILABLE, f"this host is already answering {_MAX_ANSWERS} listings"
            )
            answer = self._answer_with(session, question, error=busy)
        else:
            answer = self._answer(session, question)
        task = asyncio.create_task(answer, name=f"list-files-{question.request_id}")
        session.answers.add(task)
        task.add_done_callback(session.answers.discard)

    async def _answer(self, session: _Session, question: convert.FilesQuestion) -> None:
        mount_path = self._pools.mount_path(question.pool_id)
        try:
            if mount_path is None:
                raise files.ListingError(
                    files.Code.NOT_FOUND, f"pool {question.pool_id} is not attached on this host"
                )
            listing = await self._files.list(
                pool_id=question.pool_id,
                mount_path=mount_path,
                path=question.path,
                after=question.after,
                limit=question.limit or files.DEFAULT_LIMIT,
            )
        except files.ListingError as exc:
            await self._answer_with(session, question, error=exc)
            return
        except Exception as exc:  # a bug must still answer, not leave the controller waiting
            self._logger.exception("listing pool %s failed", question.pool_id)
            failed = files.ListingError(
                files.Code.UNAVAILABLE, f"listing failed on this host: {type(exc).__name__}"
            )
            await self._answer_with(session, question, error=failed)
            return
        await self._answer_with(session, question, listing=listing)

    async def _answer_with(
        self,
        session: _Session,
        question: convert.FilesQuestion,
        *,
        listing: files.Listing | None = None,
        error: files.ListingError | None = None,
    ) -> None:
        assert self._node_id is not None
        message = convert.files_answer(
            node_id=self._node_id, request_id=question.request_id, listing=listing, error=error
        )
        try:
            await session.stream.send_request(message)
        except client_mod.ControllerError as exc:  # the reader sees the stream end too
            self._logger.info("cannot answer listing %d: %s", question.request_id, exc)

    async def close(self) -> None:
        """Close the open session, if any (bounded; never raises for controller trouble)."""
        session, self._session = self._session, None
        if session is None:
            return
        for task in list(session.answers):
            task.cancel()
        session.fail(
            client_mod.ControllerUnavailable(
                "heartbeat stream closed", endpoint=session.stream.endpoint
            )
        )
        try:
            if session.reader is not None:
                # Re-raises CancelledError when we are being cancelled ourselves
                # (shutdown); the stream must be closed all the same.
                await tasks.cancel_and_wait(session.reader)
        finally:
            try:
                async with asyncio.timeout(self._settings.rpc_timeout):
                    await session.stack.aclose()
            except Exception:  # best effort: the connection is usually gone already
                self._logger.debug("closing the heartbeat stream failed", exc_info=True)
