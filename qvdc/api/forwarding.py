"""Requests for a host whose heartbeat stream is on another replica, relayed through etcd.

Only the replica holding a host's stream can ask the host (:mod:`qvdc.api.host_requests`),
and replicas do not know each other's addresses, so a replica asks the owner through
etcd, beside the keyspace the views list and watch (``<prefix without its last "/">-calls/``,
``/quantix-calls/`` by default, like the event history):

* the asking replica grants a short lease, puts ``ask/<owner replica>/<call id>`` on it
  (JSON: the kind, the node, the host's name, the question as protobuf bytes in base64,
  the timeout) and watches ``answer/<call id>`` from that put's revision on;
* every replica watches ``ask/<its id>/``; for each ask it asks the host over its stream
  and puts ``answer/<call id>`` on the asker's lease (JSON: the result in base64, or the
  error's code and message);
* the asker takes the answer and revokes the lease; a replica that dies mid-call leaves
  keys that expire with the lease, never a growing keyspace.

The asker waits at most the call's timeout plus :data:`RELAY_MARGIN` seconds; a silent
owner is DEADLINE_EXCEEDED naming it, an etcd failure UNAVAILABLE. What the owner answers
keeps its code and message, so a client sees the same answer whichever replica it asked.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import math
import uuid
from typing import Any

from protos.limiquantix.compute import v1 as compute
from qvdc.api.host_requests import HostRequests
from qvdc.domain import errors
from qvdc.store.etcd import Compacted, EtcdStore, StoreError, StoreUnavailable

log = logging.getLogger(__name__)

#: Seconds the asker waits beyond the call's own timeout (two etcd round trips).
RELAY_MARGIN = 2.0
#: Asks answered at once by one replica; more wait for a free slot.
MAX_SERVING = 32
_BACKOFF = (0.2, 5.0)
_ERRORS: dict[str, type[errors.DomainError]] = {
    cls.code: cls
    for cls in (
        errors.InvalidArgument,
        errors.NotFound,
        errors.FailedPrecondition,
        errors.Unavailable,
        errors.DeadlineExceeded,
    )
}


def calls_prefix(prefix: str) -> str:
    """The relay's prefix for a keyspace prefix: ``/quantix/`` -> ``/quantix-calls/``."""
    return prefix.rstrip("/") + "-calls/"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class Forwarder:
    def __init__(
        self, *, store: EtcdStore, requests: HostRequests, replica_id: str, timeout: float
    ) -> None:
        #: The store over the relay's prefix (a sibling of the replica's: same connections).
        self.store = store.sibling(calls_prefix(store.settings.prefix))
        self._requests = requests
        self._replica = replica_id
        self._timeout = timeout
        self._slots = asyncio.Semaphore(MAX_SERVING)
        self._serving: set[asyncio.Task[None]] = set()
        #: Asks this replica answered (a test hook).
        self.served = 0

    # --- the asking replica -----------------------------------------------------------

    async def list_files(
        self,
        owner: str,
        node_id: str,
        question: compute.ListFilesRequest,
        *,
        timeout: float,
        host: str,
    ) -> compute.ListFilesResult:
        """``HostRequests.list_files`` on replica ``owner``."""
        answer = await self._call(
            owner,
            {
                "kind": "list_files",
                "node": node_id,
                "host": host,
                "question": _b64(bytes(question)),
            },
            timeout=timeout,
            host=host,
        )
        try:
            return compute.ListFilesResult.parse(base64.b64decode(answer["result"]))
        except (KeyError, TypeError, ValueError, binascii.Error) as exc:
            raise errors.Unavailable(f"replica {owner} answered garbage ({exc})") from None

    async def reattach(
        self, owner: str, node_id: str, pool_ids: list[str], *, timeout: float, host: str
    ) -> bool:
        """``HostRequests.reattach`` on replica ``owner``; False when it could not."""
        try:
            answer = await self._call(
                owner,
                {"kind": "reattach", "node": node_id, "host": host, "pools": pool_ids},
                timeout=timeout,
                host=host,
            )
        except errors.DomainError:
            return False
        return answer.get("sent") is True

    async def _call(
        self, owner: str, body: dict[str, Any], *, timeout: float, host: str
    ) -> dict[str, Any]:
        call_id = uuid.uuid4().hex
        wait = timeout + RELAY_MARGIN
        try:
            lease = await self.store.grant_lease(math.ceil(wait) + 5, timeout=self._timeout)
        except StoreError as exc:
            raise errors.Unavailable(f"etcd unavailable: {exc}") from exc
        try:
            body = {**body, "lease": lease.id, "timeout": timeout}
            async with asyncio.timeout(wait):
                revision = await self.store.put(
                    f"ask/{owner}/{call_id}",
                    json.dumps(body).encode(),
                    lease=lease.id,
                    timeout=self._timeout,
                )
                async with contextlib.aclosing(
                    self.store.watch_prefix(f"answer/{call_id}", start_revision=revision)
                ) as changes:
                    async for change in changes:
                        if change.kind == "put":
                            answer = json.loads(change.value)
                            break
                    else:  # pragma: no cover - a watch never ends without an error
                        raise errors.Unavailable(f"the relay to replica {owner} ended")
        except TimeoutError:
            raise errors.DeadlineExceeded(
                f"replica {owner}, which holds host {host}'s heartbeat stream, did not answer "
                f"within {wait:g}s"
            ) from None
        except StoreError as exc:
            raise errors.Unavailable(f"etcd unavailable: {exc}") from exc
        except ValueError as exc:  # undecodable JSON
            raise errors.Unavailable(f"replica {owner} answered garbage ({exc})") from None
        finally:
            with contextlib.suppress(StoreError, TimeoutError):
                await asyncio.shield(self.store.revoke_lease(lease, timeout=self._timeout))
        if not isinstance(answer, dict):
            raise errors.Unavailable(f"replica {owner} answered garbage")
        error = answer.get("error")
        if error is not None:
            kind = _ERRORS.get(str(error), errors.Unavailable)
            raise kind(str(answer.get("message", "")))
        return answer

    # --- the replica holding the stream ---------------------------------------------------

    async def serve(self) -> None:
        """Answer the asks addressed to this replica, for ever."""
        backoff = _BACKOFF[0]
        start = 0
        try:
            while True:
                try:
                    if start == 0:
                        start = await self.store.revision(timeout=self._timeout) + 1
                    async with contextlib.aclosing(
                        self.store.watch_prefix(f"ask/{self._replica}/", start_revision=start)
                    ) as changes:
                        async for change in changes:
                            start = change.mod_revision + 1
                            backoff = _BACKOFF[0]
                            if change.kind == "put":
                                self._spawn(change.key, change.value)
                except Compacted as exc:
                    log.warning("call relay watch: %s; following from now on", exc)
                    start = exc.compact_revision
                except (StoreUnavailable, StoreError) as exc:
                    log.info("call relay watch broke (%s); resuming in %.1fs", exc, backoff)
                    await asyncio.sleep(backoff)
                    backoff = min(_BACKOFF[1], backoff * 2)
        finally:
            for task in list(self._serving):
                task.cancel()

    def _spawn(self, key: str, value: bytes) -> None:
        task = asyncio.create_task(self._answer(key, value), name=f"relay-{key}")
        self._serving.add(task)
        task.add_done_callback(self._serving.discard)

    async def _answer(self, key: str, value: bytes) -> None:
        call_id = key.rpartition("/")[2]
        try:
            body = json.loads(value)
            lease = int(body["lease"])
            timeout = min(max(float(body["timeout"]), 0.1), 60.0)
            node_id, host, kind = str(body["node"]), str(body["host"]), body["kind"]
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("call relay: ignoring the malformed ask %s (%s)", key, exc)
            return
        async with self._slots:
            answer: dict[str, Any]
            try:
                if kind == "list_files":
                    question = compute.ListFilesRequest.parse(base64.b64decode(body["question"]))
                    result = await self._requests.list_files(
                        node_id, question, timeout=timeout, host=host
                    )
                    answer = {"result": _b64(bytes(result))}
                elif kind == "reattach":
                    pools = [str(p) for p in body["pools"]]
                    sent = await self._requests.reattach(node_id, pools, timeout=timeout)
                    answer = {"sent": sent}
                else:
                    answer = {"error": "UNAVAILABLE", "message": f"unknown call kind {kind!r}"}
            except errors.DomainError as exc:
                answer = {"error": exc.code, "message": exc.message}
            except Exception as exc:  # noqa: BLE001 - a malformed question: answer, never hang
                answer = {"error": "UNAVAILABLE", "message": f"relay failed: {exc!r}"}
            try:
                await self.store.put(
                    f"answer/{call_id}",
                    json.dumps(answer).encode(),
                    lease=lease,
                    timeout=self._timeout,
                )
            except StoreError as exc:  # the asker gave up (its lease is gone) or etcd is down
                log.info("call relay: cannot answer %s (%s)", key, exc)
                return
        self.served += 1
