"""The ceiling: a bare grpclib server that only decodes heartbeats and acknowledges them.

It serves ``StreamHeartbeat`` and ``UpdateHeartbeat`` with exactly the
acknowledgement the controller sends: ``acknowledged``, the server time, the
interval, the host's sorted ``assigned_pool_ids`` and the echoed ``sequence``;
the full pool definitions on the first answer of a stream and on every unary
answer. It does nothing else: no liveness, no comparison, no etcd. Driven by
the same load generator, it is what this machine's Python, grpclib and codec
can do at all; the controller's throughput divided by it is
``ratio_to_ceiling``.

``--codec betterproto2`` decodes and encodes with betterproto2 (grpclib's
default codec, as the controller did before this work); ``--codec controller``
uses whatever codec ``qvdc`` installs on its server, so the ratio compares
like with like. Either way the server pings its connections as the controller's
does (``qvdc.app.server_configuration``: ``qvdc.transport.keepalive``, default ``GrpcSettings``).

Run by the harness as ``python -m benchmarks.heartbeat.ceiling --listen
HOST:PORT --fixture FILE``; the fixture is a pickle of ``{"assignments":
{node_id: [pool_id, ...]}, "pools": {pool_id: StoragePool JSON document}}``.
"""

from __future__ import annotations

import argparse
import asyncio
import pickle
import signal
import time
from pathlib import Path
from typing import Any

import grpclib.const
import grpclib.server
import uvloop
from grpclib.config import Configuration
from grpclib.encoding.base import CodecBase

from protos.limiquantix.compute import v1 as compute
from protos.limiquantix.storage import v1 as storage

PREFIX = "/limiquantix.compute.v1.NodeService/"


class CeilingService:
    def __init__(
        self,
        *,
        assignments: dict[str, list[str]],
        pools: dict[str, dict[str, Any]],
        interval: int,
    ) -> None:
        self._assigned = {node: sorted(ids) for node, ids in assignments.items()}
        self._pools = {
            pid: storage.StoragePool.from_dict(doc, ignore_unknown_fields=True)
            for pid, doc in pools.items()
        }
        self._interval = interval

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        return {
            PREFIX + "StreamHeartbeat": grpclib.const.Handler(
                self.stream_heartbeat,
                grpclib.const.Cardinality.STREAM_STREAM,
                compute.UpdateHeartbeatRequest,
                compute.UpdateHeartbeatResponse,
            ),
            PREFIX + "UpdateHeartbeat": grpclib.const.Handler(
                self.update_heartbeat,
                grpclib.const.Cardinality.UNARY_UNARY,
                compute.UpdateHeartbeatRequest,
                compute.UpdateHeartbeatResponse,
            ),
        }

    def _ack(
        self, request: compute.UpdateHeartbeatRequest, *, with_pools: bool
    ) -> compute.UpdateHeartbeatResponse:
        ids = self._assigned.get(request.node_id, [])
        return compute.UpdateHeartbeatResponse(
            acknowledged=True,
            server_time_unix=int(time.time()),
            heartbeat_interval_secs=self._interval,
            assigned_pool_ids=list(ids),
            assigned_pools=[self._pools[p] for p in ids if p in self._pools] if with_pools else [],
            sequence=request.sequence,
        )

    async def stream_heartbeat(self, stream: grpclib.server.Stream[Any, Any]) -> None:
        first = True
        async for request in stream:
            await stream.send_message(self._ack(request, with_pools=first))
            first = False

    async def update_heartbeat(self, stream: grpclib.server.Stream[Any, Any]) -> None:
        request = await stream.recv_message()
        assert request is not None
        await stream.send_message(self._ack(request, with_pools=True))


def controller_configuration() -> Configuration:
    """The controller's server configuration (its keepalive), with default settings."""
    from qvdc import app
    from qvdc.settings import GrpcSettings

    return app.server_configuration(GrpcSettings())


def controller_codec() -> CodecBase:
    """The codec the controller's server uses."""
    from qvdc.transport import heartbeat_codec

    return heartbeat_codec.server_codec()


async def serve(host: str, port: int, fixture: Path, codec_name: str, interval: int) -> None:
    with fixture.open("rb") as f:
        data = pickle.load(f)
    service = CeilingService(
        assignments=data["assignments"], pools=data["pools"], interval=interval
    )
    codec = controller_codec() if codec_name == "controller" else None
    server = grpclib.server.Server([service], codec=codec, config=controller_configuration())
    await server.start(host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("ceiling serving", flush=True)
    await stop.wait()
    server.close()
    await server.wait_closed()


def tune_like_the_controller() -> None:
    """The controller process tunes CPython's collector and grpclib's per-stream
    primitives (``qvdc.runtime.tune_process``); so does the ceiling, so that the two
    compare like with like."""
    from qvdc import runtime

    runtime.tune_process()


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.heartbeat.ceiling",
        description="Bare grpclib heartbeat server: decode and acknowledge, nothing else.",
    )
    parser.add_argument("--listen", required=True, metavar="HOST:PORT")
    parser.add_argument("--fixture", required=True, type=Path)
    parser.add_argument("--codec", choices=["betterproto2", "controller"], default="controller")
    parser.add_argument("--interval", type=int, default=30)
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    tune_like_the_controller()
    uvloop.run(serve(host, int(port), args.fixture, args.codec, args.interval))


if __name__ == "__main__":
    main()
