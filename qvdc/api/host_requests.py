"""Requests the controller sends a host over its open heartbeat stream, and their answers.

The host's StreamHeartbeat is the only connection between the two (a host may sit
behind NAT; QvDC never dials it), so ListPoolFiles and ReconnectPool ride on it: the
controller sends an ``UpdateHeartbeatResponse`` that carries only the request
(``list_files`` or ``reattach_pool_ids``; ``acknowledged=false``, ``sequence`` 0,
``unsolicited=false``, no assignment, so it is never taken for an answer to a heartbeat,
and an older host does nothing with it), and the host answers a listing with an
``UpdateHeartbeatRequest`` carrying only ``list_files_result`` with the request's id.

:class:`HostRequests` knows the streams open on this replica (the node service attaches
and detaches them) and the questions waiting for an answer. An answer is taken only from
the stream of the node that was asked; a stream that ends fails its node's questions at
once (UNAVAILABLE) instead of leaving them to time out.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable, Sequence

from protos.limiquantix.compute import v1 as compute
from qvdc.domain import errors

Send = Callable[[compute.UpdateHeartbeatResponse], Awaitable[None]]
"""A stream's bounded send (the session's own, with its lock and watchdog)."""


def request_message(
    *,
    list_files: compute.ListFilesRequest | None = None,
    reattach_pool_ids: Sequence[str] = (),
) -> compute.UpdateHeartbeatResponse:
    """A stream message carrying only a request to the host."""
    return compute.UpdateHeartbeatResponse(
        acknowledged=False, list_files=list_files, reattach_pool_ids=list(reattach_pool_ids)
    )


class HostRequests:
    def __init__(self) -> None:
        self._senders: dict[str, Send] = {}
        self._waiting: dict[int, tuple[str, asyncio.Future[compute.ListFilesResult]]] = {}
        self._ids = itertools.count(1)

    # --- the node service's side --------------------------------------------------------

    def attach(self, node_id: str, send: Send) -> None:
        """``node_id``'s stream on this replica is now the one ``send`` writes to."""
        self._senders[node_id] = send

    def detach(self, node_id: str, send: Send) -> None:
        """That stream ended: its node's questions fail now."""
        if self._senders.get(node_id) == send:  # ==: bound methods are new objects each time
            del self._senders[node_id]
        for node, future in list(self._waiting.values()):
            if node == node_id and not future.done():
                future.set_exception(
                    errors.Unavailable(f"the heartbeat stream of host {node_id} ended")
                )

    def answer(self, node_id: str, result: compute.ListFilesResult) -> None:
        """An answer arrived on ``node_id``'s stream (ignored unless that node was asked)."""
        waiting = self._waiting.get(result.request_id)
        if waiting is not None and waiting[0] == node_id and not waiting[1].done():
            waiting[1].set_result(result)

    # --- the RPCs' side -----------------------------------------------------------------

    def connected(self, node_id: str) -> bool:
        """``node_id`` has its heartbeat stream open on this replica."""
        return node_id in self._senders

    @property
    def waiting(self) -> int:
        """Questions waiting for an answer (a test hook)."""
        return len(self._waiting)

    async def list_files(
        self,
        node_id: str,
        question: compute.ListFilesRequest,
        *,
        timeout: float,
        host: str,
    ) -> compute.ListFilesResult:
        """Ask ``node_id`` for a listing and wait at most ``timeout`` seconds for the
        answer; raises ``Unavailable`` (no stream, or it ended) or ``DeadlineExceeded``,
        naming ``host``."""
        send = self._senders.get(node_id)
        if send is None:
            raise errors.Unavailable(f"host {host} has no heartbeat stream open on this replica")
        request_id = next(self._ids)
        question.request_id = request_id
        future: asyncio.Future[compute.ListFilesResult] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = (node_id, future)
        try:
            async with asyncio.timeout(timeout):
                await send(request_message(list_files=question))
                return await future
        except TimeoutError:
            raise errors.DeadlineExceeded(
                f"host {host} did not answer the listing within {timeout:g}s"
            ) from None
        except errors.DomainError:
            raise
        except Exception as exc:  # noqa: BLE001 - the send failed: the stream is ending
            raise errors.Unavailable(
                f"cannot ask host {host} over its heartbeat stream: {exc}"
            ) from None
        finally:
            del self._waiting[request_id]

    async def reattach(self, node_id: str, pool_ids: Sequence[str], *, timeout: float) -> bool:
        """Tell ``node_id`` to re-attach ``pool_ids`` now; False when it has no stream here
        or the send did not go through within ``timeout``."""
        send = self._senders.get(node_id)
        if send is None:
            return False
        try:
            async with asyncio.timeout(timeout):
                await send(request_message(reattach_pool_ids=pool_ids))
        except Exception:  # noqa: BLE001 - the stream is ending; the caller reports the host
            return False
        return True
