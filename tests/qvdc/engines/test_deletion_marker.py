"""The DELETING marker of a pool document: written by DeletePool, read by the finisher
after any restart, so a malformed one must read as "nothing to wait for", never crash."""

from __future__ import annotations

from typing import Any

import pytest

from qvdc.domain.model import BackendType, PoolId, PoolRecord
from qvdc.engines import deletion
from qvdc.store import codec


def _record(document: dict[str, Any]) -> PoolRecord:
    return PoolRecord(
        id=PoolId("p1"),
        name="p",
        backend=BackendType.LOCAL_DIR,
        assigned_node_ids=(),
        deleting=codec.DELETING_KEY in document,
        document=document,
    )


def test_marked_unassigns_and_names_the_hosts() -> None:
    doc: dict[str, Any] = {
        "id": "p1",
        "name": "p",
        "spec": {"assignedNodeIds": ["n2", "n1"], "backend": {}},
    }
    marked = deletion.marked(doc, hosts=["n2", "n1"], since=12.5)
    assert marked["spec"] == {"assignedNodeIds": [], "backend": {}}
    assert marked[codec.DELETING_KEY] == {"since": 12.5, "hosts": ["n1", "n2"]}
    assert doc["spec"]["assignedNodeIds"] == ["n2", "n1"]  # the input is not changed
    record = codec.decode_pool(codec.encode_pool_document(marked))
    assert record.deleting and record.assigned_node_ids == ()
    assert deletion.marker(record) == (12.5, ("n1", "n2"))


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"since": 3, "hosts": ["a"]}, (3.0, ("a",))),
        ({"since": "soon", "hosts": "a"}, (0.0, ())),
        ({}, (0.0, ())),
        ("garbage", (0.0, ())),
        (None, (0.0, ())),
    ],
)
def test_a_malformed_marker_waits_for_nobody(
    raw: object, expected: tuple[float, tuple[str, ...]]
) -> None:
    assert deletion.marker(_record({codec.DELETING_KEY: raw})) == expected


def test_a_pool_without_the_marker_is_not_deleting() -> None:
    record = codec.decode_pool(codec.encode_pool_document({"id": "p1", "name": "p"}))
    assert record.deleting is False
