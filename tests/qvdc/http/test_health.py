"""Health and reflection: grpc.health.v1 and server reflection on the gRPC port,
``/healthz`` and ``/readyz`` on the HTTP port, all from one readiness verdict."""

from __future__ import annotations

import asyncio
from typing import Any

import grpclib.client
import pytest
from google.protobuf.descriptor_pb2 import FileDescriptorProto
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse
from grpclib.reflection.v1.reflection_grpc import ServerReflectionStub
from grpclib.reflection.v1.reflection_pb2 import ServerReflectionRequest

from qvdc.http.health import NOT_LISTED, Readiness
from tests.fixtures.etcd import FaultyStore
from tests.qvdc.api.helpers import eventually
from tests.qvdc.http.conftest import Http

SERVICES = ("limiquantix.compute.v1.NodeService", "limiquantix.storage.v1.StoragePoolService")


async def test_reflection_lists_the_services(channel: grpclib.client.Channel) -> None:
    stub = ServerReflectionStub(channel)
    async with stub.ServerReflectionInfo.open() as stream:
        await stream.send_message(ServerReflectionRequest(list_services=""), end=True)
        response = await stream.recv_message()
        assert response is not None
    names = {s.name for s in response.list_services_response.service}
    assert names == {*SERVICES, "grpc.health.v1.Health"}


async def test_reflection_describes_every_rpc_and_its_files(
    channel: grpclib.client.Channel,
) -> None:
    """What grpcurl's describe and call need: the file of a symbol, then its imports."""
    stub = ServerReflectionStub(channel)
    async with stub.ServerReflectionInfo.open() as stream:

        async def ask(**request: Any) -> list[FileDescriptorProto]:
            await stream.send_message(ServerReflectionRequest(**request))
            response = await stream.recv_message()
            assert response is not None
            assert not response.HasField("error_response"), response.error_response
            raw = response.file_descriptor_response.file_descriptor_proto
            return [FileDescriptorProto.FromString(b) for b in raw]

        methods: dict[str, set[str]] = {}
        pending: list[str] = []
        for service in (*SERVICES, "grpc.health.v1.Health"):
            (file,) = await ask(file_containing_symbol=service)
            name = service.rpartition(".")[2]
            methods[service] = {
                m.name for svc in file.service if svc.name == name for m in svc.method
            }
            pending.extend(file.dependency)
        seen: set[str] = set()
        while pending:
            name = pending.pop()
            if name not in seen:
                seen.add(name)
                (file,) = await ask(file_by_filename=name)
                pending.extend(file.dependency)
        await stream.send_message(ServerReflectionRequest(file_containing_symbol="no.Such"))
        missing = await stream.recv_message()
        await stream.end()
    assert missing is not None and missing.error_response.error_code == Status.NOT_FOUND.value
    assert {"RegisterNode", "UpdateHeartbeat", "StreamHeartbeat"} <= methods[SERVICES[0]]
    assert {"CreatePool", "GetPool", "AssignPoolToNode"} <= methods[SERVICES[1]]
    assert methods["grpc.health.v1.Health"] == {"Check", "Watch"}
    assert "google/protobuf/timestamp.proto" in seen


async def check(stub: HealthStub, service: str) -> int:
    reply = await stub.Check(HealthCheckRequest(service=service))
    return reply.status


async def test_health_serving_then_not_serving_while_etcd_is_unreachable(
    channel: grpclib.client.Channel, client: Http, faulty: FaultyStore
) -> None:
    stub = HealthStub(channel)
    for service in ("", *SERVICES):
        assert await check(stub, service) == HealthCheckResponse.SERVING
    with pytest.raises(GRPCError) as unknown:
        await stub.Check(HealthCheckRequest(service="no.such.Service"))
    assert unknown.value.status is Status.NOT_FOUND
    ready = await client.request("GET", "/readyz")
    assert (ready.status, ready.body) == (200, b"ready\n")

    faulty.fail("revision", times=10**6)
    await eventually(
        lambda: check(stub, SERVICES[0]),
        lambda status: status == HealthCheckResponse.NOT_SERVING,
        what="NOT_SERVING while etcd fails",
    )
    answer = await eventually(
        lambda: client.request("GET", "/readyz"), lambda a: a.status == 503, what="/readyz 503"
    )
    assert b"etcd is unreachable" in answer.body
    alive = await client.request("GET", "/healthz")
    assert (alive.status, alive.body) == (200, b"ok\n")  # liveness does not depend on etcd

    faulty.heal()
    await eventually(
        lambda: check(stub, ""),
        lambda status: status == HealthCheckResponse.SERVING,
        what="SERVING again once etcd answers",
    )
    await eventually(
        lambda: client.request("GET", "/readyz"), lambda a: a.status == 200, what="/readyz 200"
    )


async def test_health_paths_take_get_only(client: Http) -> None:
    answer = await client.request("POST", "/healthz", b"")
    assert answer.status == 405
    missing = await client.request("GET", "/metricz")
    assert missing.status == 404


async def test_readiness_before_the_listing_then_probe_failures_and_caching() -> None:
    listed = False
    probes = 0
    failure: Exception | None = None
    hang = asyncio.Event()
    now = 0.0

    async def probe() -> None:
        nonlocal probes
        probes += 1
        if failure is not None:
            raise failure
        if not hang.is_set():
            return
        await asyncio.sleep(3600)

    readiness = Readiness(
        listed=lambda: listed, probe=probe, timeout=0.05, ttl=2.0, clock=lambda: now
    )
    assert await readiness.check() == (False, NOT_LISTED)
    assert probes == 0  # nothing asked of etcd before the listing

    listed = True
    assert await readiness.check() == (True, "ready")
    assert await readiness.ready() is True
    assert probes == 1  # cached within the ttl

    now = 5.0
    failure = ConnectionError("refused")
    assert await readiness.check() == (False, "etcd is unreachable (ConnectionError)")

    now = 10.0
    failure = None
    hang.set()
    assert await readiness.check() == (False, "etcd did not answer within 0.05 s")

    now = 15.0
    hang.clear()
    results = await asyncio.gather(*(readiness.check() for _ in range(5)))
    assert results == [(True, "ready")] * 5
    assert probes == 4  # five concurrent checks shared one probe
