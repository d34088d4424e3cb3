"""The node keeps what it writes within the controller's limits.

The node daemon may not import the controller, so ``node.convert`` carries its own copy of
the default bounds on text it writes; these tests pin that the copies agree with
:class:`qvdc.domain.limits.Limits` and that a node with a 1 MiB mount error (or path, CPU
model, label value) builds requests the controller's edge check accepts.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node import convert as node_convert
from node import hostfacts
from qvdc.api import limits as request_limits
from qvdc.domain import errors
from qvdc.domain.limits import Limits
from storage_backends import base

_MIB = 1024 * 1024


def test_node_bounds_equal_the_controller_defaults() -> None:
    limits = Limits()
    assert limits.max_report_message_length == node_convert.MAX_REPORT_MESSAGE_LENGTH
    assert limits.max_path_length == node_convert.MAX_PATH_LENGTH
    assert limits.max_text_length == node_convert.MAX_TEXT_LENGTH


def _info(*, error_message: str = "", mount_path: str = "/mnt/p") -> base.PoolInfo:
    return base.PoolInfo(
        pool_id="p1",
        kind="local_dir",
        health=base.PoolHealth.ERROR,
        mount_path=mount_path,
        error_message=error_message,
    )


def test_a_huge_mount_error_is_cut_and_the_heartbeat_accepted() -> None:
    heartbeat = node_convert.Heartbeat(
        node_id="n1",
        sequence=1,
        delta=False,
        pools=(_info(error_message="e" * _MIB, mount_path="/" + "d" * _MIB),),
    )
    request = node_convert.heartbeat_to_request(heartbeat)
    report = request.storage_pools[0]
    assert len(report.error_message) == Limits().max_report_message_length
    assert report.error_message.startswith("eeee")
    assert report.error_message.endswith("(cut)")
    assert len(report.mount_path) == Limits().max_path_length
    request_limits.check(request, Limits())  # does not raise


def test_uncut_the_same_report_is_refused_naming_the_field() -> None:
    # The controller's check is what the cut protects against: without it, refused.
    request = node_convert.heartbeat_to_request(
        node_convert.Heartbeat(node_id="n1", sequence=1, delta=False, pools=(_info(),))
    )
    request.storage_pools[0].error_message = "e" * _MIB
    with pytest.raises(errors.InvalidArgument) as caught:
        request_limits.check(request, Limits())
    assert "storage_pools[0].error_message" in str(caught.value)
    assert len(str(caught.value)) < 300


def test_registration_text_is_cut() -> None:
    request = node_convert.register_request(
        hostname="host-1",
        management_ip="10.0.0.1:9443",
        labels={"zone": "z" * _MIB},
        facts=hostfacts.HostFacts(hostname="host-1", cpu_model="c" * _MIB),
    )
    assert len(request.labels["zone"]) == Limits().max_text_length
    assert request.cpu_info is not None
    assert len(request.cpu_info.model) == Limits().max_text_length
    request_limits.check(request, Limits())  # does not raise


@given(text=st.text(max_size=3000), limit=st.integers(min_value=len("… (cut)"), max_value=2000))
def test_bounded_is_identity_under_the_limit_and_never_over_it(text: str, limit: int) -> None:
    cut = node_convert.bounded(text, limit)
    assert len(cut) <= limit
    if len(text) <= limit:
        assert cut == text
    else:
        assert cut.endswith("(cut)")
        assert text.startswith(cut[: -len("… (cut)")])
