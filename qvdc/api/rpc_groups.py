"""RPC groups: a service's RPCs kept in their own module, added to its handler table.

:class:`qvdc.api.node_service.NodeService` and
:class:`qvdc.api.pool_service.StoragePoolService` serve their core RPCs themselves and
take further ones from groups (``groups=``): each group names its RPCs with
:class:`Rpc`, and the service adds them to its ``__mapping__``, the one table the gRPC
server and the Connect face (:mod:`qvdc.http.connect`) both read. A unary RPC gets the
same request limits and bounded send as the core ones (:func:`qvdc.api.errors.unary`);
a streaming RPC's handler takes grpclib's stream and is its own guard.

:class:`OutOfScope` answers the upstream RPCs this slice does not own (the VM ones)
with UNIMPLEMENTED and a message saying so, instead of grpclib's bare "Method not
found".
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import grpclib.const
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError

from qvdc.api.errors import unary
from qvdc.domain.limits import Limits


@dataclass(frozen=True, slots=True)
class Rpc:
    """One RPC of a group: ``handler(request) -> response`` when unary, else
    ``handler(stream)`` with grpclib's stream."""

    name: str
    handler: Callable[[Any], Awaitable[Any]]
    request: type
    response: type
    cardinality: Cardinality = Cardinality.UNARY_UNARY


class RpcGroup(Protocol):
    def rpcs(self) -> Sequence[Rpc]: ...


def handlers(
    prefix: str,
    groups: Iterable[RpcGroup],
    *,
    send_timeout: float,
    limits: Limits,
) -> dict[str, grpclib.const.Handler]:
    """The grpclib handler table entries of ``groups`` under ``prefix``
    (``/package.Service/``)."""
    table: dict[str, grpclib.const.Handler] = {}
    for group in groups:
        for rpc in group.rpcs():
            fn: Callable[[Any], Awaitable[Any]] = rpc.handler
            if rpc.cardinality is Cardinality.UNARY_UNARY:
                fn = unary(rpc.name, rpc.handler, send_timeout=send_timeout, limits=limits)
            table[prefix + rpc.name] = grpclib.const.Handler(
                fn, rpc.cardinality, rpc.request, rpc.response
            )
    return table


class OutOfScope:
    """Upstream RPCs outside this slice, answered UNIMPLEMENTED with a reason."""

    def __init__(self, entries: Sequence[tuple[str, type, type, Cardinality, str]]) -> None:
        self.entries = entries

    def rpcs(self) -> Sequence[Rpc]:
        return [
            Rpc(name, self._refuse(name, why, cardinality), request, response, cardinality)
            for name, request, response, cardinality, why in self.entries
        ]

    @staticmethod
    def _refuse(name: str, why: str, cardinality: Cardinality) -> Callable[[Any], Awaitable[Any]]:
        message = f"{name} is out of scope for QvDC: {why} (README, Compatibility)"

        async def refuse(_request: Any) -> Any:
            raise GRPCError(Status.UNIMPLEMENTED, message)

        async def refuse_stream(stream: Any) -> None:
            # Read the request first, so a malformed one is INVALID_ARGUMENT as on
            # every other RPC.
            await stream.recv_message()
            raise GRPCError(Status.UNIMPLEMENTED, message)

        return refuse if cardinality is Cardinality.UNARY_UNARY else refuse_stream
