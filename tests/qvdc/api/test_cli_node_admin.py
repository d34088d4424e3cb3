"""qvdcctl nodes drain / decommission / label / taint against a real controller and etcd."""

from __future__ import annotations

import click
import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from protos.limiquantix.compute import v1 as compute
from protos.limiquantix.storage import v1 as storage
from qvdc import cli
from qvdc.app import Controller
from tests.qvdc.api.helpers import TIMEOUT, create_request, register_request
from tests.qvdc.api.test_cli import run_cli


async def test_label_taint_drain_decommission(
    controller: Controller,
    nodes: compute.NodeServiceStub,
    pools: storage.StoragePoolServiceStub,
) -> None:
    node = await nodes.register_node(register_request("cli-adm"), timeout=TIMEOUT)
    r = await run_cli(controller, "nodes", "label", "cli-adm", "zone=a", "rack-")
    assert (r.exit_code, r.output) == (0, "node cli-adm labels: zone=a\n"), r.output
    got = await nodes.get_node(compute.GetNodeRequest(id=node.id), timeout=TIMEOUT)
    assert got.labels == {"zone": "a"}

    r = await run_cli(controller, "nodes", "taint", "cli-adm", "gpu=a100:NoSchedule", "x:NoExecute")
    assert (r.exit_code, r.output) == (0, "node cli-adm taints: gpu=a100:NoSchedule,x:NoExecute\n")
    r = await run_cli(controller, "nodes", "taint", node.id, "gpu-")
    assert (r.exit_code, r.output) == (0, "node cli-adm taints: x:NoExecute\n")
    r = await run_cli(controller, "nodes", "taint", "cli-adm", "gpu-")
    assert r.exit_code == 1 and "NOT_FOUND" in r.output and "gpu" in r.output
    r = await run_cli(controller, "nodes", "taint", "cli-adm", "bad:Sometimes")
    assert r.exit_code == 2 and "EFFECT" in r.output

    pool = await pools.create_pool(create_request("cli-adm-pool", nodes=[node.id]), timeout=TIMEOUT)
    r = await run_cli(controller, "nodes", "drain", "cli-adm")
    assert (r.exit_code, r.output) == (0, "node cli-adm draining (DRAINING)\n")
    r = await run_cli(controller, "nodes", "decommission", "cli-adm")
    assert r.exit_code == 1 and "FAILED_PRECONDITION" in r.output and "cli-adm-pool" in r.output
    r = await run_cli(controller, "nodes", "decommission", "cli-adm", "--force")
    assert (r.exit_code, r.output) == (0, "node cli-adm decommissioned\n")
    with pytest.raises(GRPCError) as gone:
        await nodes.get_node(compute.GetNodeRequest(id=node.id), timeout=TIMEOUT)
    assert gone.value.status is Status.NOT_FOUND
    got_pool = await pools.get_pool(storage.GetPoolRequest(id=pool.id), timeout=TIMEOUT)
    assert got_pool.spec.assigned_node_ids == []


@pytest.mark.parametrize(
    ("args", "add", "remove"),
    [
        (["a=1", "b="], {"a": "1", "b": ""}, []),
        (["a-", "b=2"], {"b": "2"}, ["a"]),
    ],
)
def test_label_changes(args: list[str], add: dict[str, str], remove: list[str]) -> None:
    assert cli.label_changes(args) == (add, remove)


@pytest.mark.parametrize("arg", ["-", "=v", "plain"])
def test_label_changes_refused(arg: str) -> None:
    with pytest.raises(click.BadParameter):
        cli.label_changes([arg])


def test_taint_change() -> None:
    assert cli.taint_change("k=v:PreferNoSchedule") == compute.Taint(
        key="k", value="v", effect=compute.TaintEffect.PREFER_NO_SCHEDULE
    )
    assert cli.taint_change("k:NoSchedule") == compute.Taint(key="k")
    assert cli.taint_change("k-") == "k"
    for bad in ("k", "k=v", ":NoSchedule", "k:nosched", "-"):
        with pytest.raises(click.BadParameter):
            cli.taint_change(bad)


async def test_nodes_list_wide_shows_roles_taints_and_labels(
    controller: Controller, nodes: compute.NodeServiceStub
) -> None:
    node = await nodes.register_node(register_request("cli-wide"), timeout=TIMEOUT)
    await nodes.update_node(
        compute.UpdateNodeRequest(
            id=node.id,
            role=compute.NodeRole(compute=True, storage=True),
            scheduling=compute.SchedulingConfig(
                schedulable=False,
                taints=[
                    compute.Taint(key="gpu", value="a100", effect=compute.TaintEffect.NO_EXECUTE)
                ],
            ),
        ),
        timeout=TIMEOUT,
    )
    r = await run_cli(controller, "nodes", "list", "-o", "wide")
    assert r.exit_code == 0, r.output
    [line] = [row for row in r.output.splitlines() if row.startswith("cli-wide")]
    assert "compute,storage,unschedulable" in line
    assert "gpu=a100:NoExecute" in line and "rack=r1" in line
