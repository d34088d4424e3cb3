"""The node's connection to the controller: grpclib over several endpoints.

One error boundary (httpcore's ``map_exceptions``): every grpclib, h2 and OS
failure of a call is translated here, at the I/O call, into a small tree the
rest of the daemon reasons about:

* :class:`ControllerUnavailable` - transport failure, timeout, UNAVAILABLE,
  DEADLINE_EXCEEDED, INTERNAL ...: try again later, possibly elsewhere;
* :class:`NodeUnknown` - NOT_FOUND: the controller no longer knows this node
  id, so register again;
* :class:`Rejected` - INVALID_ARGUMENT, FAILED_PRECONDITION, UNIMPLEMENTED ...:
  the controller understood and refused; retrying the same thing will not help
  soon, but the daemon still retries with backoff (an operator may fix it).

Endpoint handling: the client talks to one endpoint at a time through one
grpclib ``Channel``. A call that fails with :class:`ControllerUnavailable`
moves the client to the next endpoint (a fresh ``Channel``; the old one is
closed), so the next attempt - after the caller's backoff - goes elsewhere.
With a single endpoint there is nowhere to go, so the channel is thrown away
and rebuilt after ``recreate_after`` consecutive failures instead (grpclib
reconnects a lost connection by itself, but a half-dead connection it still
believes in is only cured by a new channel). Any success resets the count.

Bootstrap (docs/security.md, "Bootstrap"): with a :class:`Bootstrap`, while this node's
certificate files do not exist the channel presents no certificate and ``RegisterNode``
carries ``authorization: Bearer <token>``; heartbeat calls are not made at all
(:class:`CertificatePending`), since the controller refuses them without a node
certificate. The first call after both files appear rebuilds the channel with them.

Time limits: every unary call passes ``timeout=`` (the RPC timeout). The
heartbeat stream is long-lived, so it is opened with ``timeout=None`` on
purpose; instead each ``send`` is bounded here, and the heartbeat loop bounds
the wait for each acknowledgement, which detects a dead controller.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpclib.client
import grpclib.const
import grpclib.exceptions

from node import convert, hostfacts
from protos.limiquantix.compute import v1 as compute
from qvdc.transport import streams, tls

_STREAM_HEARTBEAT = "/limiquantix.compute.v1.NodeService/StreamHeartbeat"

#: Statuses that say "not now" rather than "no".
_RETRYABLE = frozenset(
    {
        grpclib.const.Status.UNAVAILABLE,
        grpclib.const.Status.DEADLINE_EXCEEDED,
        grpclib.const.Status.CANCELLED,
        grpclib.const.Status.ABORTED,
        grpclib.const.Status.RESOURCE_EXHAUSTED,
        grpclib.const.Status.UNKNOWN,
        grpclib.const.Status.INTERNAL,
        grpclib.const.Status.DATA_LOSS,
    }
)


class ControllerError(Exception):
    """Base of everything the client raises. ``endpoint`` is where it happened."""

    def __init__(self, message: str, *, endpoint: str) -> None:
        super().__init__(message)
        self.endpoint = endpoint


class ControllerUnavailable(ControllerError):
    """The controller could not be reached or did not answer in time."""


class NodeUnknown(ControllerError):
    """The controller answered NOT_FOUND: it does not know this node id."""


class Rejected(ControllerError):
    """The controller refused the request (``status`` says why)."""

    def __init__(self, message: str, *, endpoint: str, status: grpclib.const.Status) -> None:
        super().__init__(message, endpoint=endpoint)
        self.status = status

    @property
    def unimplemented(self) -> bool:
        """The controller does not have this RPC (an older or upstream controller)."""
        return self.status is grpclib.const.Status.UNIMPLEMENTED


ChannelFactory = Callable[[str, int], grpclib.client.Channel]


def _default_channel(host: str, port: int) -> grpclib.client.Channel:
    return grpclib.client.Channel(host, port)


def tls_channel_factory(
    *, ca: Path, cert: Path | None, key: Path | None, cert_optional: bool = False
) -> ChannelFactory:
    """Channels over TLS: the controller's certificate checked against ``ca`` and the host
    dialled, this node's ``cert`` presented. The files are read for every new channel
    (the first one now, so that a bad file fails the start-up), so a rotated
    certificate is used from the next reconnection on. ``cert_optional`` (a node with a
    bootstrap token): while ``cert`` or ``key`` does not exist yet, channels present no
    certificate; from the first channel built after both exist, they do."""

    def context() -> ssl.SSLContext:
        if cert_optional and not (cert is not None and key is not None and files_exist(cert, key)):
            return tls.client_context(ca=ca)
        return tls.client_context(ca=ca, cert=cert, key=key)

    context()

    def channel(host: str, port: int) -> grpclib.client.Channel:
        return grpclib.client.Channel(host, port, ssl=context())

    return channel


def files_exist(*paths: Path) -> bool:
    return all(path.is_file() for path in paths)


class CertificatePending(ControllerError):
    """This node registered with a bootstrap token and has no certificate yet: it cannot
    heartbeat until its certificate is put at ``tls_cert``/``tls_key`` (no call was made)."""


@dataclass(frozen=True, slots=True)
class Bootstrap:
    """A node's bootstrap token (docs/security.md, "Bootstrap"): sent on RegisterNode
    while this node's certificate is not at ``cert``/``key``; never sent once it is."""

    token_file: Path
    cert: Path
    key: Path

    def certificate_present(self) -> bool:
        """Both certificate files are there (the node has been issued its certificate)."""
        return files_exist(self.cert, self.key)

    def token(self) -> str:
        """The token in ``token_file`` (surrounding whitespace dropped); ValueError naming
        the file if it cannot be read or holds none."""
        try:
            text = self.token_file.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"bootstrap_token_file {self.token_file}: {exc}") from exc
        token = text.strip()
        if not token or any(c.isspace() for c in token) or not token.isprintable():
            raise ValueError(
                f"bootstrap_token_file {self.token_file}: holds no token (one line, no spaces)"
            )
        return token


class ControllerClient:
    """The NodeService client the daemon uses. Not safe for parallel unary calls
    from many tasks (it is used by one heartbeat loop), but the heartbeat stream
    may send and receive concurrently."""

    def __init__(
        self,
        *,
        endpoints: Sequence[tuple[str, int]],
        rpc_timeout: float,
        recreate_after: int,
        logger: logging.Logger,
        channel_factory: ChannelFactory = _default_channel,
        bootstrap: Bootstrap | None = None,
    ) -> None:
        if not endpoints:
            raise ValueError("at least one controller endpoint is required")
        if rpc_timeout <= 0 or recreate_after < 1:
            raise ValueError("need rpc_timeout > 0 and recreate_after >= 1")
        self._endpoints = tuple(endpoints)
        self._rpc_timeout = rpc_timeout
        self._recreate_after = recreate_after
        self._logger = logger
        self._channel_factory = channel_factory
        self._index = 0
        self._channel: grpclib.client.Channel | None = None
        self._consecutive_failures = 0
        self._channels_created = 0
        self._bootstrap = bootstrap
        #: Whether the current channel was built while this node had no certificate.
        self._without_certificate = False

    # -- endpoint and channel management ------------------------------------------------

    @property
    def endpoint(self) -> str:
        """``host:port`` the next call goes to."""
        host, port = self._endpoints[self._index]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    @property
    def consecutive_failures(self) -> int:
        """Failed calls since the last success."""
        return self._consecutive_failures

    @property
    def channels_created(self) -> int:
        """How many grpclib channels this client has built (for tests and status)."""
        return self._channels_created

    def _stub(self) -> compute.NodeServiceStub:
        bootstrap = self._bootstrap
        if (
            self._channel is not None
            and self._without_certificate
            and bootstrap is not None
            and bootstrap.certificate_present()
        ):
            self._logger.info(
                "this node's certificate is now at %s: reconnecting to present it", bootstrap.cert
            )
            self._close_channel()
        if self._channel is None:
            host, port = self._endpoints[self._index]
            self._without_certificate = self.awaiting_certificate
            self._channel = self._channel_factory(host, port)
            self._channels_created += 1
        return compute.NodeServiceStub(self._channel)

    @property
    def awaiting_certificate(self) -> bool:
        """This node has a bootstrap token and no certificate yet."""
        return self._bootstrap is not None and not self._bootstrap.certificate_present()

    def _require_certificate(self, what: str) -> None:
        """Heartbeats need this node's certificate: without one (bootstrap token only) the
        controller would refuse them, so no call is made."""
        bootstrap = self._bootstrap
        if bootstrap is not None and not bootstrap.certificate_present():
            raise CertificatePending(
                f"{what}: registered with the bootstrap token; heartbeats need this node's "
                f"certificate at {bootstrap.cert} and {bootstrap.key} (make it with "
                "'qvdcctl certs issue-node <hostname>' where the CA is, and copy it here)",
                endpoint=self.endpoint,
            )

    def _close_channel(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def record_success(self) -> None:
        """A call on the current endpoint worked."""
        self._consecutive_failures = 0

    def record_failure(self) -> None:
        """A call on the current endpoint failed for transport reasons.

        Cases:
        * several endpoints: fail over to the next one on a fresh channel;
        * one endpoint, fewer than ``recreate_after`` failures in a row: keep
          the channel (grpclib reconnects a dropped connection itself);
        * one endpoint, every ``recreate_after``-th failure: rebuild the channel.
        """
        self._consecutive_failures += 1
        if len(self._endpoints) > 1:
            old = self.endpoint
            self._close_channel()
            self._index = (self._index + 1) % len(self._endpoints)
            self._logger.info("controller %s failed; failing over to %s", old, self.endpoint)
        elif self._consecutive_failures % self._recreate_after == 0:
            self._logger.info(
                "controller %s failed %d times in a row; recreating the channel",
                self.endpoint,
                self._consecutive_failures,
            )
            self._close_channel()

    def close(self) -> None:
        """Close the channel (idempotent). Open streams fail."""
        self._close_channel()

    @contextlib.contextmanager
    def _map_errors(
        self, what: str, *, on_failure: Callable[[], None] | None = None
    ) -> Iterator[None]:
        """Translate a call's failures into :class:`ControllerError` (chained).

        Transport failures call ``on_failure`` (default :meth:`record_failure`,
        i.e. fail over); a stream passes its own once-only hook so that its
        sender and reader seeing the same broken connection fail over once.
        """
        endpoint = self.endpoint
        failed = on_failure or self.record_failure
        try:
            yield
        except ControllerError as exc:
            if isinstance(exc, ControllerUnavailable):
                failed()
            raise
        except grpclib.exceptions.GRPCError as exc:
            detail = f"{what} at {endpoint}: {exc.status.name}: {exc.message or ''}".rstrip(": ")
            if exc.status is grpclib.const.Status.NOT_FOUND:
                raise NodeUnknown(detail, endpoint=endpoint) from exc
            if exc.status in _RETRYABLE:
                failed()
                raise ControllerUnavailable(detail, endpoint=endpoint) from exc
            raise Rejected(detail, endpoint=endpoint, status=exc.status) from exc
        except TimeoutError as exc:
            failed()
            raise ControllerUnavailable(
                f"{what} at {endpoint}: no answer within {self._rpc_timeout:g}s", endpoint=endpoint
            ) from exc
        except (
            OSError,
            grpclib.exceptions.StreamTerminatedError,
            grpclib.exceptions.ProtocolError,
        ) as exc:
            failed()
            raise ControllerUnavailable(
                f"{what} at {endpoint}: {type(exc).__name__}: {exc}", endpoint=endpoint
            ) from exc

    # -- calls ---------------------------------------------------------------------------

    async def register(
        self,
        *,
        hostname: str,
        management_ip: str,
        labels: Mapping[str, str],
        facts: hostfacts.HostFacts,
        heartbeat_interval: float = 0.0,
    ) -> str:
        """Register this host; returns the node id the controller assigned."""
        request = convert.register_request(
            hostname=hostname,
            management_ip=management_ip,
            labels=labels,
            facts=facts,
            heartbeat_interval=heartbeat_interval,
        )
        metadata: dict[str, str] | None = None
        bootstrap = self._bootstrap
        with self._map_errors("RegisterNode"):
            stub = self._stub()
            if bootstrap is not None and self._without_certificate:
                try:
                    metadata = {"authorization": f"Bearer {bootstrap.token()}"}
                except ValueError as exc:
                    raise Rejected(
                        f"RegisterNode: {exc}",
                        endpoint=self.endpoint,
                        status=grpclib.const.Status.FAILED_PRECONDITION,
                    ) from None
            node = await stub.register_node(request, timeout=self._rpc_timeout, metadata=metadata)
        if not node.id:
            raise Rejected(
                f"RegisterNode at {self.endpoint}: the controller returned no node id",
                endpoint=self.endpoint,
                status=grpclib.const.Status.INTERNAL,
            )
        self.record_success()
        return str(node.id)

    async def update_heartbeat(self, heartbeat: convert.Heartbeat) -> convert.HeartbeatReply:
        """The upstream unary heartbeat (always full reports)."""
        self._require_certificate("UpdateHeartbeat")
        request = convert.heartbeat_to_request(heartbeat)
        request.delta = False
        with self._map_errors("UpdateHeartbeat"):
            response = await self._stub().update_heartbeat(request, timeout=self._rpc_timeout)
        self.record_success()
        return convert.reply_from_response(response)

    @contextlib.asynccontextmanager
    async def heartbeat_stream(self) -> AsyncIterator[HeartbeatStream]:
        """Open a StreamHeartbeat call on the current endpoint.

        The stream is reset (RST_STREAM) when the block exits, whatever the
        reason; the block should treat any :class:`ControllerError` from the
        stream as the end of it.
        """
        self._require_certificate("StreamHeartbeat")
        with self._map_errors("StreamHeartbeat"):
            stub = self._stub()  # a half-copied certificate fails here: retried later
        # Long-lived call: no overall deadline (timeout=None) by design; every
        # send below and every acknowledgement in the heartbeat loop is bounded.
        # open_stream never waits for trailers on exit (the stream never ends normally).
        async with streams.open_stream(
            stub.channel,
            _STREAM_HEARTBEAT,
            cardinality=grpclib.const.Cardinality.STREAM_STREAM,
            request_type=compute.UpdateHeartbeatRequest,
            reply_type=compute.UpdateHeartbeatResponse,
            timeout=None,
        ) as call:
            stream = HeartbeatStream(client=self, call=call, timeout=self._rpc_timeout)
            try:
                with self._map_errors("StreamHeartbeat"):
                    async with asyncio.timeout(self._rpc_timeout):
                        await call.send_request()
                stream.opened = True
                yield stream
            finally:
                await stream.abort()


class HeartbeatStream:
    """One open StreamHeartbeat call. ``send`` and ``recv`` may run in different tasks."""

    def __init__(
        self,
        *,
        client: ControllerClient,
        call: grpclib.client.Stream[
            compute.UpdateHeartbeatRequest, compute.UpdateHeartbeatResponse
        ],
        timeout: float,
    ) -> None:
        self._client = client
        self._call = call
        self._timeout = timeout
        self.endpoint = client.endpoint
        self.opened = False
        self._finished = False
        self._succeeded = False
        self._failure_recorded = False
        # The heartbeat loop and an answer to the controller (node.files) may send at once:
        # a message's frames must not interleave with another's.
        self._send_lock = asyncio.Lock()

    def mark_failed(self) -> None:
        """Count this stream's failure against its endpoint (once per stream)."""
        if not self._failure_recorded:
            self._failure_recorded = True
            self._client.record_failure()

    async def send(self, heartbeat: convert.Heartbeat) -> None:
        """Send one heartbeat (bounded by the RPC timeout)."""
        await self.send_request(convert.heartbeat_to_request(heartbeat))

    async def send_request(self, request: compute.UpdateHeartbeatRequest) -> None:
        """Send one stream message (a heartbeat, or an answer to the controller)."""
        with self._client._map_errors("StreamHeartbeat send", on_failure=self.mark_failed):
            try:
                async with asyncio.timeout(self._timeout):
                    async with self._send_lock:
                        await self._call.send_message(request)
            except grpclib.exceptions.StreamTerminatedError:
                self._raise_status()
                raise

    async def recv(self) -> convert.HeartbeatReply:
        """Wait for the next response (an answer or an unsolicited push).

        Unbounded on purpose: pushes come whenever the controller has one.
        A heartbeat stream never ends normally, so the end of the stream
        raises: the controller's status when it sent one (NOT_FOUND ->
        :class:`NodeUnknown`), else :class:`ControllerUnavailable`.
        """
        with self._client._map_errors("StreamHeartbeat", on_failure=self.mark_failed):
            try:
                response = await self._call.recv_message()
            except grpclib.exceptions.StreamTerminatedError:
                self._raise_status()
                raise
            if response is None:
                self._finished = True
                async with asyncio.timeout(self._timeout):
                    await self._call.end()
                    await self._call.recv_trailing_metadata()  # raises GRPCError on a non-OK status
                raise ControllerUnavailable(
                    f"controller {self.endpoint} closed the heartbeat stream",
                    endpoint=self.endpoint,
                )
        if not self._succeeded:
            self._succeeded = True
            self._client.record_success()
        return convert.reply_from_response(response)

    def _raise_status(self) -> None:
        """Raise the server's GRPCError if it sent a status before resetting the stream.

        A server that refuses a call (NOT_FOUND, UNIMPLEMENTED) sends its status
        and resets the stream; grpclib then reports only the reset to whoever
        is waiting (see :func:`qvdc.transport.streams.raise_status`).
        """
        streams.raise_status(self._call)

    async def abort(self) -> None:
        """Reset the call if it is still open (best effort, bounded, never raises)."""
        if not self.opened or self._finished:
            return
        self._finished = True
        try:
            async with asyncio.timeout(self._timeout):
                await self._call.cancel()
        except Exception:  # the connection is already gone, or the call already ended
            self._client._logger.debug("resetting the heartbeat stream failed", exc_info=True)
